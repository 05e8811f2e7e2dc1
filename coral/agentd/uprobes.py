"""Uprobes made by the agent itself: a perf event on the kernel's `uprobe`
PMU (perf_event_open) and a BPF link that runs a program on it with a
cookie (BPF_LINK_CREATE, attach type BPF_PERF_EVENT). The program reads
the cookie with bpf_get_attach_cookie: the index of the probe's site
(bpf/coral_probes.c, `sites`), so a hit finds its site without a hash
lookup. Layouts from the kernel's uapi headers, linux/perf_event.h and
linux/bpf.h (x86_64)."""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path

SYS_PERF_EVENT_OPEN = 298  # x86_64
SYS_BPF = 321
BPF_LINK_CREATE = 28  # enum bpf_cmd
BPF_PERF_EVENT = 41  # enum bpf_attach_type
PERF_FLAG_FD_CLOEXEC = 1 << 3
UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe")


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1, 72 bytes):
    the kernel takes a shorter struct as one whose later members are 0."""

    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
                ("config1", ctypes.c_uint64),  # uprobe_path: a pointer to the file's path
                ("config2", ctypes.c_uint64)]  # probe_offset: the instruction's offset in the file


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
    """An attached probe: both descriptors, closed together (close_uprobe)."""

    perf_fd: int
    link_fd: int
    cookie: int


def _config_field(name: str) -> tuple[int, int]:
    """(shift, width) of a PMU format field such as `config:32-63` or `config:0`."""
    spec = (UPROBE_PMU / "format" / name).read_text().strip()
    where, _, bits = spec.partition(":")
    if where != "config":
        raise AttachError(f"the uprobe PMU's {name} is in {where}, not config", 0)
    low, _, high = bits.partition("-")
    return int(low), int(high or low) - int(low) + 1


class UprobeAttacher:
    """Makes uprobes and uretprobes with a BPF program and a cookie on them."""

    def __init__(self) -> None:
        try:
            self.pmu = int((UPROBE_PMU / "type").read_text())
            self._retprobe_shift, _ = _config_field("retprobe")
            self._ref_ctr_shift, self._ref_ctr_bits = _config_field("ref_ctr_offset")
        except OSError as exc:
            raise AttachError(f"the kernel has no uprobe PMU ({UPROBE_PMU})", exc.errno or 0) from exc
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long

    def attach(self, program_fd: int, retprobe: bool, path: str, file_offset: int, pid: int,
               ref_ctr_offset: int, cookie: int) -> Uprobe:
        """A probe at `path`+`file_offset` in process `pid` (any of its threads)
        that runs `program_fd` with `cookie`; raises AttachError."""
        if ref_ctr_offset >> self._ref_ctr_bits:
            raise AttachError(f"ref_ctr_offset {ref_ctr_offset:#x} does not fit the uprobe PMU's config", errno.EINVAL)
        name = ctypes.create_string_buffer(path.encode())
        attr = PerfEventAttr()
        attr.type, attr.size = self.pmu, ctypes.sizeof(PerfEventAttr)
        attr.config = int(retprobe) << self._retprobe_shift | ref_ctr_offset << self._ref_ctr_shift
        attr.config1, attr.config2 = ctypes.addressof(name), file_offset
        perf_fd = int(self._libc.syscall(SYS_PERF_EVENT_OPEN, ctypes.byref(attr), pid, -1, -1, PERF_FLAG_FD_CLOEXEC))
        if perf_fd < 0:
            raise AttachError("perf_event_open (uprobe PMU)", ctypes.get_errno())
        link = LinkCreateAttr(prog_fd=program_fd, target_fd=perf_fd, attach_type=BPF_PERF_EVENT, bpf_cookie=cookie)
        link_fd = int(self._libc.syscall(SYS_BPF, BPF_LINK_CREATE, ctypes.byref(link), ctypes.sizeof(link)))
        if link_fd < 0:
            err = ctypes.get_errno()
            os.close(perf_fd)
            raise AttachError("BPF_LINK_CREATE (a BPF program on the uprobe, with a cookie)", err)
        return Uprobe(perf_fd, link_fd, cookie)


def close_uprobe(probe: Uprobe) -> None:
    """The link first, then the perf event: closing the event's last reference
    unregisters the uprobe and waits until no hit of it is still running
    (about 175 ms here), so once this returns no hit carries its cookie."""
    os.close(probe.link_fd)
    os.close(probe.perf_fd)
