"""The probes' own share of a call's duration, measured by the agent.

A native call's duration runs from the entry probe's timestamp to the
return probe's. It includes what the kernel does after the entry's
timestamp (returning from the trap, and running the instruction the probe
replaced: emulated for some, single-stepped out of line for the rest) and
before the return's (the trap into the kernel, at the uretprobe's
trampoline or at the probed RET). That share depends on the function's
first instruction and on how returns are seen, not on the function.

So the agent measures it at start-up, once for each pair: it maps a few
empty functions of its own from a memfd (one per kind of first
instruction), probes each as a session would, and takes the median
duration the kernel reports for them. A session's DebugSession carries the
figure for its function's pair (probe_cost_ns), and coralctl shows it
with the summary (docs/native-targets.md, "How long a call took")."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass

from coral.agentd.engine import SITE_ENTRY, SITE_RET, NativeRecord, ProbeEngine, Site, SlotConfig

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
CALLS = 500
ROUNDS = 3  # each pair measured once per round, rounds interleaved: the median of the rounds' medians
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


@dataclass(frozen=True)
class ProbeCosts:
    """Median ns of an empty function's duration, by (first instruction kind, return mechanism)."""

    ns: dict[tuple[str, str], int]

    def of(self, code: bytes, mechanism: str) -> tuple[str, int]:
        kind = entry_kind(code)
        return kind, self.ns.get((kind, mechanism), 0)

    def counters(self) -> dict[str, int]:
        return {f"probe_cost_ns.{kind}.{mechanism}": ns for (kind, mechanism), ns in self.ns.items()}


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


def measure(engine: ProbeEngine) -> ProbeCosts:
    """Probe each empty function each way (a copy of it for each way, all
    probed at once), CALLS calls each in ROUNDS interleaved rounds, and keep
    the median of the rounds' median durations the kernel reports. About
    0.4 s; removing the 20 probes takes the kernel about 2 s more here
    (about 175 ms each, little of it in parallel), which a thread of its
    own waits for."""
    pid = os.getpid()
    with _mapped_code() as (path, base, offsets):
        slots: dict[tuple[str, str], int] = {}
        calls = {}
        try:
            for (kind, mechanism), offset in offsets.items():
                ip = base + offset
                if mechanism == "uretprobe":
                    sites = [Site(pid, path, offset, ip, SITE_ENTRY, uretprobe=True)]
                else:
                    ret = offset + len(CODE[kind]) - 1
                    sites = [Site(pid, path, offset, ip, SITE_ENTRY), Site(pid, path, ret, base + ret, SITE_RET, func_ip=ip)]
                slots[(kind, mechanism)] = engine.open_slot(SlotConfig(), sites)
                calls[(kind, mechanism)] = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long)(ip)
            rounds: dict[tuple[str, str], list[float]] = {}
            for _ in range(ROUNDS):
                for pair, slot in slots.items():
                    for i in range(CALLS):
                        calls[pair](i)
                    records, _ = engine.drain()
                    durations = [r.duration_ns for r in records.get(slot, []) if isinstance(r, NativeRecord)]
                    if durations:
                        rounds.setdefault(pair, []).append(statistics.median(durations))
        finally:
            # Only this process calls these functions, and it calls them no
            # more: their probes may go after the agent is ready (each holds
            # the memfd's inode, so the mapping and the fd may go first).
            engine.close_slots(list(slots.values()), in_background=True)
            engine.drain()  # their records: nobody's
    return ProbeCosts({pair: int(statistics.median(values)) for pair, values in rounds.items()})
