"""On-CPU sampling of a set of processes (`coralctl profile`): the BPF
program bpf/coral_profile.c, compiled for one profile, attached to a
CPU-clock perf event on every CPU at the asked frequency, and unloaded when
the profile ends. Runs in a thread of its own: compiling takes BCC about a
second, and the agent's loop must not wait for it (docs/architecture.md)."""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coral.agentd import pyframes
from coral.agentd.symbolize import Symbolizer
from coral.layouts import read_layouts
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)

BPF_SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "coral_profile.c"
STACK_SLOTS = 16384  # distinct stacks kept; samples past it are counted in `dropped`
STACK_COPY = 8192  # bytes of stack copied per sample for .eh_frame unwinding: deeper frames are cut
COPY_PAGES = 512  # the copies' ring buffer: 2 MiB, about 220 samples, read every POLL_EVERY
# Python frames read per sample (shim frames among them; deeper ones are cut): CORAL_PY_FRAMES.
PY_FRAMES = read_layouts(BPF_SOURCE.parent / "coral_pystack.h")["py_stack"].member("code").count
POLL_EVERY = 0.05
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0


# How a stack was found: walked by the kernel through frame pointers, or
# unwound by the agent with .eh_frame (complete, or cut where the copy ended).
FRAME_POINTERS, CALL_FRAMES, CALL_FRAMES_CUT = "fp", "cfi", "cfi-cut"
# A sample's Python frames, innermost first: (code object, instruction pointer) each.
PyFrames = tuple[tuple[int, int], ...]
NO_PYTHON: PyFrames = ()
# (tgid, return addresses innermost first, how, Python frames, Python frames cut)
StackKey = tuple[int, tuple[int, ...], str, PyFrames, bool]


@dataclass(frozen=True)
class Sampled:
    """What one profile counted, by process and stack."""

    stacks: dict[StackKey, int]
    samples: int  # samples of a profiled process
    dropped: int  # of those, samples whose stack could not be kept
    uncounted: int  # samples not counted at all (the count table was full)
    compile_ms: int  # what loading the program cost
    started_ns: int  # when sampling began (the program attached), Unix ns
    ended_ns: int  # when it stopped


# struct stack_copy (bpf/coral_profile.h), as this program is compiled.
COPY = read_layouts(BPF_SOURCE.parent / "coral_profile.h", {"CORAL_STACK_COPY": STACK_COPY})["stack_copy"]
_SCALARS = [COPY.values(name).start for name in ("tgid", "user_stack", "ip", "sp", "bp", "size", "user_mode")]
_PY, _STACK = COPY.values("py"), COPY.values("stack")
_AT_CODE = COPY.member("py").offset + 8  # py.code, after py.depth and py.cut


Unwind = Callable[[int, int, int, int, bytes], "tuple[tuple[int, ...], bool] | None"]


def sample(pids: list[int], frequency: int, seconds: float, stop: threading.Event,
           unwind: Unwind | None = None, python: dict[int, pb.PythonLayout] | None = None) -> Sampled:
    """Sample `pids` for `seconds` (or until `stop` is set). Copied stacks
    are unwound as they come with `unwind(tgid, ip, sp, bp, stack)`; where it
    finds nothing, the kernel's frame-pointer walk of the same sample is
    used. The processes in `python` also have their Python frames read, by
    their interpreters' layouts. The program is detached and unloaded before
    this returns, whatever happens."""
    import bcc  # only where BPF runs: the CLI and tests import this module without it

    t0 = time.monotonic()
    bpf = bcc.BPF(src_file=str(BPF_SOURCE).encode(), cflags=[
        f"-DCORAL_PROFILE_STACKS={STACK_SLOTS}", f"-DCORAL_STACK_COPY={STACK_COPY}", f"-DCORAL_COPY_PAGES={COPY_PAGES}",
        f"-I{BPF_SOURCE.parent}"])
    compile_ms = int((time.monotonic() - t0) * 1000)
    counted: dict[StackKey, int] = {}
    # (tgid, stack id, Python frames, cut) -> samples: the stack ids are resolved at the end
    by_stack_id: dict[tuple[int, int, PyFrames, bool], int] = {}
    try:
        copies = bpf["copies"]

        def on_copy(ctx: object, data: int, size: int) -> int:
            if size < COPY.size:
                return 0
            raw = ctypes.string_at(data, COPY.size)
            f = COPY.struct.unpack(raw)
            tgid, user_stack, ip, sp, bp, copied, user_mode = (f[i] for i in _SCALARS)
            depth, cut = f[_PY][:2]
            py = pyframes.python_pairs(raw, _AT_CODE, depth, PY_FRAMES) if depth else NO_PYTHON
            stack = f[_STACK][0][:min(copied, STACK_COPY)]
            found = unwind(tgid, ip, sp, bp, stack) if unwind and user_mode else None
            if found is None:
                k = (tgid, user_stack, py, bool(cut))
                by_stack_id[k] = by_stack_id.get(k, 0) + 1
            else:
                key = (tgid, found[0], CALL_FRAMES_CUT if found[1] else CALL_FRAMES, py, bool(cut))
                counted[key] = counted.get(key, 0) + 1
            return 0

        copies.open_ring_buffer(on_copy)
        targets = bpf["targets"]
        for pid in pids:
            targets[targets.Key(pid)] = targets.Leaf(1)
        pyframes.set_python_layouts(bpf["python"], python or {})
        bpf.attach_perf_event(ev_type=PERF_TYPE_SOFTWARE, ev_config=PERF_COUNT_SW_CPU_CLOCK,
                              fn_name=b"coral_profile_sample", sample_freq=frequency, cpu=-1)
        started_ns = time.time_ns()
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            # The program never wakes us (a wake-up would be paid in the target): read on a timer.
            # consume, not poll: poll reads only after a wake-up.
            bpf.ring_buffer_consume()
            stop.wait(min(POLL_EVERY, max(0.0, deadline - time.monotonic())))
        bpf.detach_perf_event(ev_type=PERF_TYPE_SOFTWARE, ev_config=PERF_COUNT_SW_CPU_CLOCK)
        ended_ns = time.time_ns()
        bpf.ring_buffer_consume()
        for key, value in bpf["counts"].items():
            k = (int(key.tgid), int(key.user_stack), NO_PYTHON, False)
            by_stack_id[k] = by_stack_id.get(k, 0) + int(value.value)
        stack_table = bpf["stacks"]
        for (tgid, stack_id, py, cut), n in by_stack_id.items():
            addresses = tuple(stack_table.walk(stack_id)) if stack_id >= 0 else ()
            key = (tgid, addresses, FRAME_POINTERS, py, cut)
            counted[key] = counted.get(key, 0) + n
        totals = bpf["totals"]
        return Sampled(counted, int(totals[0].value), int(totals[1].value), int(totals[2].value), compile_ms,
                       started_ns, ended_ns)
    finally:
        bpf.cleanup()  # detaches what is still attached, closes the maps and the program


@dataclass
class Profiles:
    """The profiles running on this agent, each in its own thread; the
    loop collects the finished ones with `finished()` and answers them."""

    max_running: int = 2
    running: dict[str, threading.Thread] = field(default_factory=dict)
    _done: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    symbolizer: Symbolizer = field(default_factory=Symbolizer)

    def start(self, profile_id: str, work: Callable[[threading.Event, Symbolizer], Callable[[], None]]) -> None:
        """Run `work` in a thread; what it returns is called on the loop's thread by finished()."""

        def run() -> None:
            answer = work(self._stop, self.symbolizer)
            with self._lock:
                self._done.append((profile_id, answer))

        thread = threading.Thread(target=run, name=f"profile-{profile_id}", daemon=True)
        self.running[profile_id] = thread
        thread.start()

    def finished(self) -> list[Callable[[], None]]:
        with self._lock:
            done, self._done = self._done, []
        for profile_id, _ in done:
            self.running.pop(profile_id, None)
        return [answer for _, answer in done]

    def shutdown(self, timeout: float = 5.0) -> list[Callable[[], None]]:
        """Stop every profile now (each answers with what it counted) and wait for the threads."""
        self._stop.set()
        for thread in list(self.running.values()):
            thread.join(timeout)
        return self.finished()
