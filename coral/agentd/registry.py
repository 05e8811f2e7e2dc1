"""Processes that opted in (SDK or coral-run), as this agent knows them."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass

from coral.daemon.errors import InvalidArgument, NotFound, PermissionDenied
from coral.daemon.server import Peer
from coral.proto import coral_pb2 as pb


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


def check_registration(req: pb.RegisterProcessRequest, peer: Peer) -> tuple[int, str, int]:
    """The caller must be the process it registers, or its parent (coral-run),
    and must be root or run as the same user. Returns (pid, start time, the
    caller's pid)."""
    if not req.service or len(req.service) > MAX_NAME or not req.service.isprintable() or "/" in req.service:
        raise InvalidArgument("service name must be 1 to 200 printable characters without '/'")
    if not req.address.startswith("ipc://") or len(req.address) > 300:
        raise InvalidArgument("address must be an ipc:// endpoint")
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
    return req.pid, start_time, peer.pid


class ProcessRegistry:
    def __init__(self) -> None:
        self._by_id: dict[str, Registration] = {}

    def register(self, req: pb.RegisterProcessRequest, peer: Peer) -> Registration:
        pid, start_time, registrant = check_registration(req, peer)
        registrant_stat = proc_stat(registrant) if registrant != pid else None
        # One registration per live process: a re-registration replaces it.
        for rid, reg in list(self._by_id.items()):
            if reg.pid == pid:
                del self._by_id[rid]
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
        )
        self._by_id[reg.registration_id] = reg
        return reg

    def unregister(self, registration_id: str) -> Registration | None:
        return self._by_id.pop(registration_id, None)

    def known(self, registration_id: str) -> bool:
        return registration_id in self._by_id

    def prune_exited(self) -> list[Registration]:
        """Forget processes that have exited (or whose pid was reused), and
        those whose registrant (coral-run) has: nothing answers for them."""
        gone = []
        for rid, reg in list(self._by_id.items()):
            if self.loss(reg):
                gone.append(self._by_id.pop(rid))
        return gone

    def instances(self, service: str | None = None) -> list[Registration]:
        return [r for r in self._by_id.values() if service is None or r.service == service]

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
