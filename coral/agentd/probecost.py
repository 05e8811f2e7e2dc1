"""The probes' own share of a call's duration, measured by the agent.

A native call's duration runs from the entry probe's timestamp to the
return probe's. It includes what the kernel does after the entry's
timestamp (returning from the trap, and running the instruction the probe
replaced: emulated for some, single-stepped out of line for the rest) and
before the return's (the trap into the kernel, at the uretprobe's
trampoline or at the probed RET). That share depends on the function's
first instruction and on how returns are seen, not on the function.

So the agent measures it, once for each pair, the first time a session
needs it: it maps a few empty functions of its own from a memfd (a copy
per kind of first instruction and mechanism), probes the pair's copy as a
session would, and takes the median duration the kernel reports. A session's DebugSession carries the
figure for its function's pair (probe_cost_ns), and coralctl shows it
with the summary (docs/native-targets.md, "How long a call took")."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
from collections.abc import Iterator
from typing import Any

from coral import histogram
from coral.agentd.engine import SITE_ENTRY, SITE_RET, ProbeEngine, ProbeError, Site, SlotConfig

log = logging.getLogger(__name__)

# An empty function for each kind of first instruction; each ends in RET.
CODE = {
    "push": bytes([0x55, 0x5D, 0xC3]),  # push %rbp; pop %rbp; ret (the kernel emulates the push)
    "nop": bytes([0x90, 0xC3]),  # nop; ret
    "nop5": bytes([0x0F, 0x1F, 0x44, 0x00, 0x00, 0xC3]),  # nopl 0x0(%rax,%rax,1); ret
    "endbr64": bytes([0xF3, 0x0F, 0x1E, 0xFA, 0xC3]),  # endbr64; ret (-fcf-protection builds)
    "other": bytes([0x48, 0x8D, 0x07, 0xC3]),  # lea (%rdi),%rax; ret (single-stepped, as most are)
}
MECHANISMS = ("uretprobe", "ret")
CALLS = 1000
SLOT = 16  # bytes between the functions


def first_bytes(site: Site) -> bytes:
    """The first bytes of the probed instruction, from the file the kernel probes."""
    try:
        with open(site.path, "rb") as f:
            f.seek(site.file_offset)
            return f.read(16)
    except OSError:
        return b""


def entry_kind(code: bytes) -> str:
    """The kind of the instruction `code` starts with, as CODE names them."""
    register = code[1:2] if code[:1] == b"\x41" else code[:1]  # r8-r15 have a REX.B prefix
    if register and 0x50 <= register[0] <= 0x57:
        return "push"  # push of a 64-bit register
    if code[:1] == b"\x90":
        return "nop"
    if code[:5] == CODE["nop5"][:5]:
        return "nop5"
    if code[:4] == CODE["endbr64"][:4]:
        return "endbr64"
    return "other"


class ProbeCosts:
    """Median ns of an empty function's duration, by (first instruction
    kind, return mechanism), each measured the first time a session needs
    it: two probes on an empty function of the agent's own, CALLS calls, the
    median from the kernel's histogram (within 1/16): 1,000 calls of 1 to
    17 µs here, and two probes attached;
    removing the two probes takes the kernel about 175 ms each here, which a
    thread of its own waits for (only the agent calls these functions)."""

    def __init__(self, engine: ProbeEngine | None) -> None:
        self.engine = engine  # None: nothing is measured
        self.ns: dict[tuple[str, str], int] = {}
        self._code: tuple[str, int, dict[tuple[str, str], int]] | None = None
        self._mapping: Any = None  # the empty functions' mapping, kept for the agent's lifetime

    def of(self, code: bytes, mechanism: str) -> tuple[str, int]:
        """The kind of `code`'s first instruction, and the probes' share of
        a duration for it with `mechanism` (0 if it cannot be measured)."""
        kind = entry_kind(code)
        if (kind, mechanism) not in self.ns and self.engine is not None and mechanism in MECHANISMS:
            try:
                self.ns[(kind, mechanism)] = self._measure(kind, mechanism)
            except (OSError, ProbeError) as exc:  # not kept: a later session tries again
                log.warning("could not measure the probes' share of a duration (%s, %s): %s", kind, mechanism, exc)
            else:
                log.info("the probes' own share of a call's duration here, entry on %s, return by %s: %d ns",
                         kind, mechanism, self.ns[(kind, mechanism)])
        return kind, self.ns.get((kind, mechanism), 0)

    def counters(self) -> dict[str, int]:
        return {f"probe_cost_ns.{kind}.{mechanism}": ns for (kind, mechanism), ns in self.ns.items()}

    def _measure(self, kind: str, mechanism: str) -> int:
        assert self.engine is not None
        if self._code is None:
            self._mapping = _mapped_code()
            self._code = self._mapping.__enter__()
        path, base, offsets = self._code
        offset, pid = offsets[(kind, mechanism)], os.getpid()
        ip = base + offset
        if mechanism == "uretprobe":
            sites = [Site(pid, path, offset, ip, SITE_ENTRY, uretprobe=True)]
        else:
            ret = offset + len(CODE[kind]) - 1
            sites = [Site(pid, path, offset, ip, SITE_ENTRY), Site(pid, path, ret, base + ret, SITE_RET, func_ip=ip)]
        call = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long)(ip)
        # Counted and put in the slot's histogram in the kernel, then filtered
        # out: no record reaches the ring buffer that sessions share.
        slot = self.engine.open_slot(SlotConfig(min_duration_ns=1 << 62), sites)
        try:
            for i in range(CALLS):
                call(i)
        finally:
            stats = self.engine.close_slots([slot], in_background=True)[0]
        return histogram.percentile_ns(stats.histogram, 50, stats.max_ns) if stats.calls else 0


@contextlib.contextmanager
def _mapped_code() -> Iterator[tuple[str, int, dict[tuple[str, str], int]]]:
    """The empty functions in an executable memfd mapping of this process,
    one copy for each (kind, mechanism): the path the kernel opens, the
    mapping's address, and each copy's file offset."""
    fd = os.memfd_create("coral-probe-cost", os.MFD_CLOEXEC)
    pairs = [(kind, mechanism) for kind in CODE for mechanism in MECHANISMS]
    offsets = {pair: i * SLOT for i, pair in enumerate(pairs)}
    image = bytearray(mmap.PAGESIZE)
    for (kind, _), offset in offsets.items():
        image[offset:offset + len(CODE[kind])] = CODE[kind]
    os.write(fd, bytes(image))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    address = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC, mmap.MAP_PRIVATE, fd, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        os.close(fd)
        raise OSError(ctypes.get_errno(), "mmap of the probe-cost functions failed")
    try:
        yield f"/proc/{os.getpid()}/fd/{fd}", address, offsets
    finally:
        libc.munmap(address, mmap.PAGESIZE)
        os.close(fd)
