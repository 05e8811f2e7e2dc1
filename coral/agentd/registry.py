"""Processes that opted in (SDK or coral-run), as this agent knows them."""

from __future__ import annotations

import logging
import os
import re
import secrets
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISSOCK

from coral.agentd.pyframes import check_layout
from coral.daemon.access import unix_identity
from coral.daemon.errors import InvalidArgument, LimitExceeded, NotFound, PermissionDenied
from coral.daemon.server import Peer
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)


@dataclass
class Registration:
    registration_id: str
    service: str
    pid: int
    executable: str
    address: str
    kind: str
    sdk_version: str
    runtime: str
    registered_ns: int
    start_time: str  # /proc/PID/stat starttime: tells a reused pid apart
    registrant_pid: int = 0  # who registered it: the process itself (SDK) or its parent (coral-run)
    registrant_start_time: str = ""
    exe_id: tuple[int, int] | None = None  # (device, inode) of what it ran when it registered
    uid: int = 0  # the registrant's uid: per-uid caps count it
    python_layout: pb.PythonLayout | None = None  # its interpreter's, for the profiler (docs/protocol.md)

    def to_proto(self, agent_id: str) -> pb.ServiceInstance:
        return pb.ServiceInstance(
            service=self.service,
            pid=self.pid,
            executable=self.executable,
            kind=self.kind,
            agent_id=agent_id,
            registered_unix_ns=self.registered_ns,
            sdk_version=self.sdk_version,
            runtime=self.runtime,
        )


def proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(")") + 2 :].split()
    return int(fields[1]), fields[19]


def exe_id(pid: int) -> tuple[int, int] | None:
    """(device, inode) of the program a process runs: changes when it execs another."""
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def proc_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


MAX_NAME = 200
MAX_LABEL = 64  # sdk_version, runtime
MAX_EXECUTABLE = 4096
KINDS = ("", "native", "go", "python")
SOCKET_NAME = re.compile(r"[0-9A-Za-z._-]{1,64}\.sock")


def check_fields(req: pb.RegisterProcessRequest, procs_dir: Path) -> None:
    """Every field has a bound (docs/protocol.md, "Process registration")."""
    if not req.service or len(req.service) > MAX_NAME or not req.service.isprintable() or "/" in req.service:
        raise InvalidArgument("service name must be 1 to 200 printable characters without '/'")
    path = Path(req.address.removeprefix("ipc://"))
    if not req.address.startswith("ipc://") or path.parent != procs_dir or not SOCKET_NAME.fullmatch(path.name):
        raise InvalidArgument(f"address must be ipc://{procs_dir}/NAME.sock (NAME: 1 to 64 of A-Z a-z 0-9 . _ -)")
    if req.kind not in KINDS:
        raise InvalidArgument(f"kind must be one of {', '.join(k for k in KINDS if k)}")
    for name, value in (("sdk_version", req.sdk_version), ("runtime", req.runtime)):
        if len(value) > MAX_LABEL or not value.isprintable():
            raise InvalidArgument(f"{name} must be at most {MAX_LABEL} printable characters")
    if len(req.executable) > MAX_EXECUTABLE:
        raise InvalidArgument(f"executable must be at most {MAX_EXECUTABLE} characters")
    if req.HasField("python_layout"):
        why = check_layout(req.python_layout) if req.kind == "python" else "python_layout is for kind python only"
        if why:
            raise InvalidArgument(why)


def check_registration(req: pb.RegisterProcessRequest, peer: Peer, procs_dir: Path) -> tuple[int, str, int]:
    """The caller must be the process it registers, or its parent (coral-run),
    and must be root or run as the same user. Returns (pid, start time, the
    caller's pid)."""
    check_fields(req, procs_dir)
    if peer.pid is None or peer.uid is None:
        raise PermissionDenied("registration needs a local ipc connection (peer credentials unavailable)")
    stat = proc_stat(req.pid)
    if req.pid <= 0 or stat is None:
        raise NotFound(f"process {req.pid} does not exist")
    parent, start_time = stat
    if peer.pid not in (req.pid, parent):
        raise PermissionDenied(f"process {peer.pid} may not register process {req.pid} (only itself or its child)")
    if peer.uid != 0 and proc_uid(req.pid) != peer.uid:
        raise PermissionDenied(f"uid {peer.uid} does not own process {req.pid}")
    # The agent connects there as root: it must be the registrant's own socket,
    # not another's, nor a link to one (the colony's, say).
    path = Path(req.address.removeprefix("ipc://"))
    try:
        st = path.lstat()
    except OSError:
        raise InvalidArgument(f"{path} does not exist: bind the socket before registering") from None
    if not S_ISSOCK(st.st_mode) or (peer.uid != 0 and st.st_uid != peer.uid):
        raise PermissionDenied(f"{path} is not a socket of uid {peer.uid}")
    return req.pid, start_time, peer.pid


def owner_refusal(service: str, uid: int, owners: dict[str, tuple[str, ...]], holder: int | None,
                  identify: Callable[[int], tuple[str, set[str]]] = unix_identity) -> str:
    """Why `uid` may not register `service` ("" if it may). A service named
    in [services] is registered only by the users, uids and @groups listed
    there; any other only by the uid that registered it first, while an
    instance of it is registered (`holder`). Root may always."""
    if uid == 0:
        return ""
    allowed = owners.get(service)
    if allowed is not None:
        user, groups = identify(uid)
        if user in allowed or str(uid) in allowed or any(f"@{g}" in allowed for g in groups):
            return ""
        return f"uid {uid} may not register service {service!r}: [services] {service} admits {', '.join(allowed)}"
    if holder is not None and holder != uid:
        return (f"service {service!r} is registered by uid {holder}; only that uid may add instances while it runs "
                f"(name who may register it in [services])")
    return ""


ProcessKey = tuple[int, str]  # pid and start time: one process, never a later one with the same pid
SWEEP = 200  # registrations looked at per prune for an exec (an exit is told by its pidfd)


class ExitWatch:
    """A pidfd for each watched process, in one epoll: which have exited is
    known in time proportional to the exits, not to the processes watched.
    A process that cannot be watched (no pidfd_open: Linux < 5.3) is
    reported by `watch` so the caller looks at it itself."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self._fd: dict[ProcessKey, int] = {}
        self._key: dict[int, ProcessKey] = {}
        self._refs: dict[ProcessKey, int] = {}

    def watch(self, key: ProcessKey) -> bool:
        if key in self._refs:
            self._refs[key] += 1
            return True
        try:
            fd = os.pidfd_open(key[0])
        except (OSError, AttributeError):
            return False  # gone already, or no pidfds here
        stat = proc_stat(key[0])
        if stat is None or stat[1] != key[1]:
            os.close(fd)  # the pid now names another process
            return False
        self.epoll.register(fd, select.EPOLLIN)
        self._fd[key], self._key[fd], self._refs[key] = fd, key, 1
        return True

    def unwatch(self, key: ProcessKey) -> None:
        left = self._refs.get(key, 0) - 1
        if left > 0:
            self._refs[key] = left
            return
        self._refs.pop(key, None)
        fd = self._fd.pop(key, None)
        if fd is not None:
            del self._key[fd]
            self.epoll.unregister(fd)
            os.close(fd)

    def exited(self) -> list[ProcessKey]:
        return [self._key[fd] for fd, _ in self.epoll.poll(0, maxevents=-1) if fd in self._key]

    def close(self) -> None:
        for fd in self._fd.values():
            os.close(fd)
        self._fd.clear()
        self._key.clear()
        self._refs.clear()
        self.epoll.close()


class ProcessRegistry:
    """Registrations by id, by pid (one per live process) and by service,
    and a count per registrant uid: registering costs the same however many
    there are."""

    def __init__(self, procs_dir: Path, max_per_uid: int = 1000, owners: dict[str, tuple[str, ...]] | None = None,
                 identify: Callable[[int], tuple[str, set[str]]] = unix_identity) -> None:
        self.procs_dir = procs_dir
        self.max_per_uid = max_per_uid  # root is not capped
        self.owners = owners or {}
        self.identify = identify
        self._by_id: dict[str, Registration] = {}
        self._by_pid: dict[int, str] = {}
        self._per_uid: dict[int, int] = {}
        self._by_service: dict[str, dict[str, Registration]] = {}  # in registration order: the first is the holder
        self._exits = ExitWatch()
        self._watchers: dict[ProcessKey, set[str]] = {}  # process -> registrations that end with it
        self._unwatched: set[str] = set()  # registrations looked at on every prune (no pidfd)
        self._sweep: list[str] = []  # registrations still to look at for an exec in this round

    def register(self, req: pb.RegisterProcessRequest, peer: Peer) -> Registration:
        pid, start_time, registrant = check_registration(req, peer, self.procs_dir)
        registrant_stat = proc_stat(registrant) if registrant != pid else None
        uid = peer.uid or 0
        # One registration per live process: a re-registration replaces it,
        # once the new one is known to be allowed (a refusal keeps the old).
        previous = self._by_id.get(self._by_pid.get(pid, ""))
        others = [r for r in self._by_service.get(req.service, {}).values() if r is not previous]
        holder = others[0].uid if others else None
        why = owner_refusal(req.service, uid, self.owners, holder, self.identify)
        if why:
            raise PermissionDenied(why)
        mine = self._per_uid.get(uid, 0) - (previous is not None and previous.uid == uid)
        if uid != 0 and mine >= self.max_per_uid:
            raise LimitExceeded(f"uid {uid} already has {self.max_per_uid} registered processes "
                                "(limit [agent] max_registrations_per_uid)")
        if holder is None and uid != 0 and req.service not in self.owners:
            log.warning("service %r is not in [services]: uid %d registered it first, and only that uid may register "
                        "it while it runs; name who may in [services]", req.service, uid)
        if previous is not None:
            self._remove(previous.registration_id)
        try:
            executable = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            executable = req.executable
        reg = Registration(
            registration_id=secrets.token_hex(8),
            service=req.service,
            pid=pid,
            executable=executable,
            address=req.address,
            kind=req.kind or "native",
            sdk_version=req.sdk_version,
            runtime=req.runtime,
            registered_ns=time.time_ns(),
            start_time=start_time,
            registrant_pid=registrant,
            registrant_start_time=registrant_stat[1] if registrant_stat else start_time,
            exe_id=exe_id(pid),
            uid=uid,
            python_layout=req.python_layout if req.HasField("python_layout") else None,
        )
        self._by_id[reg.registration_id] = reg
        self._by_pid[pid] = reg.registration_id
        for key in self._keys(reg):
            if self._exits.watch(key):
                self._watchers.setdefault(key, set()).add(reg.registration_id)
            else:
                self._unwatched.add(reg.registration_id)
        self._by_service.setdefault(reg.service, {})[reg.registration_id] = reg
        self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        return reg

    def _remove(self, registration_id: str) -> Registration | None:
        reg = self._by_id.pop(registration_id, None)
        if reg is not None:
            self._unwatched.discard(registration_id)
            for key in self._keys(reg):
                watchers = self._watchers.get(key)
                if watchers is not None and registration_id in watchers:
                    watchers.discard(registration_id)
                    if not watchers:
                        del self._watchers[key]
                    self._exits.unwatch(key)
            self._by_pid.pop(reg.pid, None)
            same = self._by_service.get(reg.service, {})
            same.pop(registration_id, None)
            if not same:
                self._by_service.pop(reg.service, None)
            left = self._per_uid.get(reg.uid, 1) - 1
            if left:
                self._per_uid[reg.uid] = left
            else:
                self._per_uid.pop(reg.uid, None)
        return reg

    def by_pid(self, pid: int) -> Registration | None:
        return self._by_id.get(self._by_pid.get(pid, ""))

    def unregister(self, registration_id: str) -> Registration | None:
        return self._remove(registration_id)

    def known(self, registration_id: str) -> bool:
        return registration_id in self._by_id

    @staticmethod
    def _keys(reg: Registration) -> list[ProcessKey]:
        """The processes a registration ends with: its own, and coral-run's."""
        keys = [(reg.pid, reg.start_time)]
        if reg.registrant_pid and reg.registrant_pid != reg.pid:
            keys.append((reg.registrant_pid, reg.registrant_start_time))
        return keys

    def prune_exited(self) -> list[Registration]:
        """Forget processes that have exited, and those whose registrant
        (coral-run) has: nothing answers for them. Exits come from pidfds, so
        this costs what exited; an exec (the same pid running another
        program) is looked for SWEEP registrations at a time."""
        looked = {rid for key in self._exits.exited() for rid in self._watchers.get(key, ())}
        looked |= self._unwatched
        if not self._sweep:
            self._sweep = list(self._by_id)
        looked.update(self._sweep[-SWEEP:])
        del self._sweep[-SWEEP:]
        gone = []
        for rid in looked:
            reg = self._by_id.get(rid)
            if reg is not None and self.loss(reg):
                self._remove(rid)
                gone.append(reg)
        return gone

    def close(self) -> None:
        self._exits.close()

    def instances(self, service: str | None = None) -> list[Registration]:
        """Every registration, or the live ones of one service: a process
        that exited since the last prune is not asked (it would not answer)."""
        if service is None:
            return list(self._by_id.values())
        return [r for r in self._by_service.get(service, {}).values() if not self.loss(r)]

    def live_instances(self) -> list[Registration]:
        """Every registration whose process is still the one registered (a
        question someone asked: the periodic prune may not have run yet).
        Exits are known from the pidfds; only the unwatched are looked at."""
        exited = {rid for key in self._exits.exited() for rid in self._watchers.get(key, ())}
        return [r for rid, r in self._by_id.items()
                if rid not in exited and not (rid in self._unwatched and self.loss(r))]

    def services(self) -> list[str]:
        return sorted({r.service for r in self._by_id.values()})

    def loss(self, reg: Registration) -> str:
        """Why a registration no longer holds ("" while it does): the process
        exited, or coral-run, which registered it and answers for it, did
        (killed with SIGKILL, say: the child runs on, no longer debuggable)."""
        stat = proc_stat(reg.pid)
        if stat is None or stat[1] != reg.start_time:
            return "target exited"
        if reg.registrant_pid and reg.registrant_pid != reg.pid:
            launcher = proc_stat(reg.registrant_pid)
            if launcher is None or launcher[1] != reg.registrant_start_time:
                return "coral-run exited"
        if reg.exe_id is not None and exe_id(reg.pid) not in (reg.exe_id, None):
            return "target ran exec"  # same pid, another program: the probed code is gone from it
        return ""
