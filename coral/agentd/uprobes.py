"""Uprobes made by the agent itself, with a cookie: a uprobe event in
tracefs (`uprobe_events`), opened as a tracepoint perf event bound to the
target process (perf_event_open), and a BPF link that runs a program on it
with a cookie (BPF_LINK_CREATE, attach type BPF_PERF_EVENT). The program
reads the cookie with bpf_get_attach_cookie: the index of the probe's site
(bpf/coral_probes.c, `sites`), so a hit finds its site without a hash
lookup.

Why tracefs and not the kernel's `uprobe` PMU: a kernel with the 2025 fix
lets only CAP_SYS_ADMIN open a perf event on that PMU, and the agent's unit
has CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE. A tracefs event opened as a
tracepoint needs no more than those, on every kernel, so it is the one way
the agent makes a probe, as root or confined (libbcc also ends up there
when the PMU refuses).

Where tracefs is not mounted (a network namespace entered with `ip netns
exec` remounts /sys without it), the agent makes the probe on the `uprobe`
PMU instead: the same link and cookie, no event to name or remove; this
kernel allows it only with CAP_SYS_ADMIN (root), and a refusal names both
ways.

Every event of an agent is in the group `coral_<its pid>`, named
`p<n>` or `r<n>` (uprobe or uretprobe, n counting up), and removed when its
probe is released. An agent that was killed leaves its events behind (the
kernel removes the probes from the process with the perf events, not the
events): remove_stale_events, at the agent's start, removes those of every
`coral_<pid>` group whose pid is no longer running, and libbcc's events of
earlier agents (`uprobes/coral_..._bcc_<pid>`) the same way.

Layouts from the kernel's uapi headers, linux/perf_event.h and linux/bpf.h
(x86_64)."""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SYS_PERF_EVENT_OPEN = 298  # x86_64
SYS_BPF = 321
BPF_LINK_CREATE = 28  # enum bpf_cmd
BPF_PERF_EVENT = 41  # enum bpf_attach_type
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
# Where tracefs is, in libbcc's order (src/cc/libbpf.c, get_tracefs_path).
TRACEFS_DIRS = (Path("/sys/kernel/debug/tracing"), Path("/sys/kernel/tracing"))
UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe")
GROUP_PREFIX = "coral_"
# An event line in uprobe_events: `p:GROUP/NAME PATH:0xOFFSET...`.
_EVENT_LINE = re.compile(r"^[pr]:(?P<group>[^/\s]+)/(?P<name>\S+)\s")
_LIBBCC_EVENT = re.compile(r"^coral_\w*_bcc_(?P<pid>\d+)$")  # what the agent named through libbcc


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1, 72 bytes):
    the kernel takes a shorter struct as one whose later members are 0."""

    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
                ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64)]


class LinkCreateAttr(ctypes.Structure):
    """union bpf_attr's link_create member, as far as perf_event.bpf_cookie;
    passed in a zeroed buffer of this size (the kernel checks the rest is 0)."""

    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("bpf_cookie", ctypes.c_uint64)]


class AttachError(Exception):
    """The kernel refused a step; `errno` is its reason."""

    def __init__(self, step: str, err: int) -> None:
        super().__init__(f"{step}: errno {err} ({os.strerror(err)})" if err else step)
        self.errno = err


@dataclass(frozen=True)
class Uprobe:
    """An attached probe: its tracefs event and both descriptors, let go of
    together (UprobeAttacher.close)."""

    event: str  # GROUP/NAME; "" for a probe on the uprobe PMU (no tracefs event)
    perf_fd: int
    link_fd: int
    cookie: int


def tracefs_dir() -> Path:
    """The tracefs directory that has uprobe_events, the way libbcc looks."""
    for directory in TRACEFS_DIRS:
        if (directory / "uprobe_events").exists():
            return directory
    raise AttachError(f"no tracefs with uprobe_events ({' or '.join(map(str, TRACEFS_DIRS))}); "
                      "mount it: mount -t tracefs tracefs /sys/kernel/tracing", errno.ENOENT)


def _pid_running(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def stale_events(lines: list[str], running: Callable[[int], bool] = _pid_running) -> list[str]:
    """GROUP/NAME of the events in `lines` (uprobe_events) that agents no
    longer running left: their group `coral_<pid>`, or libbcc's group with a
    name `coral_..._bcc_<pid>`, for a pid `running` says is gone."""
    stale = []
    for line in lines:
        match = _EVENT_LINE.match(line)
        if match is None:
            continue
        group, name = match["group"], match["name"]
        owner = group[len(GROUP_PREFIX):] if group.startswith(GROUP_PREFIX) else None
        if owner is None:
            bcc = _LIBBCC_EVENT.match(name)
            owner = bcc["pid"] if bcc else None
        if owner is not None and owner.isdigit() and not running(int(owner)):
            stale.append(f"{group}/{name}")
    return stale


def remove_stale_events() -> list[str]:
    """Remove the events of agents that are no longer running (see the module
    docstring); the ones removed. One that cannot be removed is logged;
    without tracefs there are none to remove."""
    try:
        events = tracefs_dir() / "uprobe_events"
    except AttachError:
        return []
    try:
        lines = events.read_text().splitlines()
    except OSError as exc:
        log.warning("could not read %s to remove stale uprobe events: %s", events, exc)
        return []
    removed = []
    for event in stale_events(lines):
        try:
            _write_event(events, f"-:{event}")
            removed.append(event)
        except OSError as exc:
            log.warning("could not remove the stale uprobe event %s: %s", event, exc)
    if removed:
        log.info("removed %d uprobe events of agents no longer running", len(removed))
    return removed


def _write_event(events: Path, command: str) -> None:
    """One command to uprobe_events, appended: opening it to write without
    O_APPEND would remove every uprobe event of the system."""
    fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        os.write(fd, command.encode() + b"\n")
    finally:
        os.close(fd)


class UprobeAttacher:
    """Makes uprobes and uretprobes with a BPF program and a cookie on them,
    through tracefs events in the group `coral_<this process's pid>`."""

    def __init__(self) -> None:
        try:
            self.tracefs: Path | None = tracefs_dir()
        except AttachError as missing:
            self.tracefs = None
            self._pmu = _UprobePmu(missing)
        self._events = self.tracefs / "uprobe_events" if self.tracefs else Path()
        self.group = f"{GROUP_PREFIX}{os.getpid()}"
        self._numbers = itertools.count(1)  # next() is atomic under the GIL
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long

    def attach(self, program_fd: int, retprobe: bool, path: str, file_offset: int, pid: int,
               ref_ctr_offset: int, cookie: int) -> Uprobe:
        """A probe at `path`+`file_offset` in process `pid` (any of its threads)
        that runs `program_fd` with `cookie`; raises AttachError, leaving
        nothing behind."""
        if self.tracefs is None:
            return self._link(self._pmu.open(self._libc, retprobe, path, file_offset, pid, ref_ctr_offset), "",
                              program_fd, cookie)
        if any(c.isspace() for c in path):
            raise AttachError(f"uprobe event: the path {path!r} has a space, which uprobe_events cannot take",
                              errno.EINVAL)
        event = f"{self.group}/{'r' if retprobe else 'p'}{next(self._numbers)}"
        ref_ctr = f"({ref_ctr_offset:#x})" if ref_ctr_offset else ""
        try:
            _write_event(self._events, f"{'r' if retprobe else 'p'}:{event} {path}:{file_offset:#x}{ref_ctr}")
        except OSError as exc:
            raise AttachError("uprobe event (tracefs uprobe_events)", exc.errno or 0) from exc
        try:
            return self._open(event, program_fd, pid, cookie)
        except BaseException:
            self._remove(event)
            raise

    def _open(self, event: str, program_fd: int, pid: int, cookie: int) -> Uprobe:
        try:
            event_id = int((self._events.parent / "events" / event / "id").read_text())
        except OSError as exc:
            raise AttachError(f"uprobe event's id (events/{event}/id)", exc.errno or 0) from exc
        attr = PerfEventAttr()
        attr.type, attr.size, attr.config = PERF_TYPE_TRACEPOINT, ctypes.sizeof(PerfEventAttr), event_id
        attr.sample_period = 1
        perf_fd = int(self._libc.syscall(SYS_PERF_EVENT_OPEN, ctypes.byref(attr), pid, -1, -1, PERF_FLAG_FD_CLOEXEC))
        if perf_fd < 0:
            raise AttachError("perf_event_open (the uprobe event)", ctypes.get_errno())
        return self._link(perf_fd, event, program_fd, cookie)

    def _link(self, perf_fd: int, event: str, program_fd: int, cookie: int) -> Uprobe:
        """The program on the perf event, with the cookie (the perf event is
        closed if the kernel refuses)."""
        link = LinkCreateAttr(prog_fd=program_fd, target_fd=perf_fd, attach_type=BPF_PERF_EVENT, bpf_cookie=cookie)
        link_fd = int(self._libc.syscall(SYS_BPF, BPF_LINK_CREATE, ctypes.byref(link), ctypes.sizeof(link)))
        if link_fd < 0:
            err = ctypes.get_errno()
            os.close(perf_fd)
            raise AttachError("BPF_LINK_CREATE (a BPF program on the uprobe, with a cookie)", err)
        return Uprobe(event, perf_fd, link_fd, cookie)

    def close(self, probe: Uprobe) -> None:
        """The link first, then the perf event: closing the event's last
        reference unregisters the uprobe and waits until no hit of it is
        still running (about 175 ms here), so once this returns no hit
        carries its cookie. Then the tracefs event goes."""
        try:
            os.close(probe.link_fd)
            os.close(probe.perf_fd)
        finally:
            if probe.event:
                self._remove(probe.event)

    def _remove(self, event: str) -> None:
        try:
            _write_event(self._events, f"-:{event}")
        except OSError as exc:  # the probe is gone from the process; only its name stays until the next start
            log.warning("could not remove the uprobe event %s: %s", event, exc)


def _config_field(name: str) -> tuple[int, int]:
    """(shift, width) of a uprobe PMU format field such as `config:32-63`."""
    spec = (UPROBE_PMU / "format" / name).read_text().strip()
    where, _, bits = spec.partition(":")
    if where != "config":
        raise AttachError(f"the uprobe PMU's {name} is in {where}, not config", errno.EINVAL)
    low, _, high = bits.partition("-")
    return int(low), int(high or low) - int(low) + 1


class _UprobePmu:
    """Probes on the kernel's `uprobe` PMU: the way where tracefs is not
    mounted. `missing` is why tracefs could not be used, named in a refusal."""

    def __init__(self, missing: AttachError) -> None:
        self._missing = missing
        try:
            self.type = int((UPROBE_PMU / "type").read_text())
            self._retprobe_shift, _ = _config_field("retprobe")
            self._ref_ctr_shift, self._ref_ctr_bits = _config_field("ref_ctr_offset")
        except OSError as exc:
            raise AttachError(f"{missing}; and the kernel has no uprobe PMU ({UPROBE_PMU})", exc.errno or 0) from exc

    def open(self, libc: ctypes.CDLL, retprobe: bool, path: str, file_offset: int, pid: int,
             ref_ctr_offset: int) -> int:
        """The perf event of a probe at `path`+`file_offset` in process `pid`."""
        if ref_ctr_offset >> self._ref_ctr_bits:
            raise AttachError(f"ref_ctr_offset {ref_ctr_offset:#x} does not fit the uprobe PMU's config", errno.EINVAL)
        name = ctypes.create_string_buffer(path.encode())
        attr = PerfEventAttr()
        attr.type, attr.size = self.type, ctypes.sizeof(PerfEventAttr)
        attr.config = int(retprobe) << self._retprobe_shift | ref_ctr_offset << self._ref_ctr_shift
        attr.config1, attr.config2 = ctypes.addressof(name), file_offset
        perf_fd = int(libc.syscall(SYS_PERF_EVENT_OPEN, ctypes.byref(attr), pid, -1, -1, PERF_FLAG_FD_CLOEXEC))
        if perf_fd < 0:
            err = ctypes.get_errno()
            raise AttachError(f"perf_event_open (uprobe PMU, as tracefs is not there: {self._missing})", err)
        return perf_fd
