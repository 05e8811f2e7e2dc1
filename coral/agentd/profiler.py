"""On-CPU sampling of a set of processes (`coralctl profile`): the BPF
program bpf/coral_profile.c, compiled for one profile, attached to a
CPU-clock perf event on every CPU at the asked frequency, and unloaded when
the profile ends. Runs in a thread of its own: compiling takes BCC about a
second, and the agent's loop must not wait for it (docs/architecture.md)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coral.agentd.symbolize import Symbolizer

log = logging.getLogger(__name__)

BPF_SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "coral_profile.c"
STACK_SLOTS = 16384  # distinct stacks kept; samples past it are counted in `dropped`
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0


@dataclass(frozen=True)
class Sampled:
    """What one profile counted, by process: (tgid, user stack addresses) -> samples."""

    stacks: dict[tuple[int, tuple[int, ...]], int]
    samples: int  # samples of a profiled process
    dropped: int  # of those, samples whose stack could not be kept
    uncounted: int  # samples not counted at all (the count table was full)
    compile_ms: int  # what loading the program cost
    started_ns: int  # when sampling began (the program attached), Unix ns
    ended_ns: int  # when it stopped


def sample(pids: list[int], frequency: int, seconds: float, stop: threading.Event) -> Sampled:
    """Sample `pids` for `seconds` (or until `stop` is set). The program is
    detached and unloaded before this returns, whatever happens."""
    import bcc  # only where BPF runs: the CLI and tests import this module without it

    t0 = time.monotonic()
    bpf = bcc.BPF(src_file=str(BPF_SOURCE).encode(), cflags=[f"-DCORAL_PROFILE_STACKS={STACK_SLOTS}"])
    compile_ms = int((time.monotonic() - t0) * 1000)
    try:
        targets = bpf["targets"]
        for pid in pids:
            targets[targets.Key(pid)] = targets.Leaf(1)
        bpf.attach_perf_event(ev_type=PERF_TYPE_SOFTWARE, ev_config=PERF_COUNT_SW_CPU_CLOCK,
                              fn_name=b"coral_profile_sample", sample_freq=frequency, cpu=-1)
        started_ns = time.time_ns()
        stop.wait(seconds)
        bpf.detach_perf_event(ev_type=PERF_TYPE_SOFTWARE, ev_config=PERF_COUNT_SW_CPU_CLOCK)
        ended_ns = time.time_ns()
        stack_table = bpf["stacks"]
        counted: dict[tuple[int, tuple[int, ...]], int] = {}
        for key, value in bpf["counts"].items():
            addresses: tuple[int, ...] = ()
            if key.user_stack >= 0:
                addresses = tuple(stack_table.walk(key.user_stack))
            k = (int(key.tgid), addresses)
            counted[k] = counted.get(k, 0) + int(value.value)
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
