"""A profile on this agent (ProfileCpu, docs/protocol.md "Profiles"):
checked here, sampled in a thread (profiler.py), answered with symbolized
stacks by process. Nothing here touches a socket."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from coral.agentd import pyframes
from coral.agentd.profiler import CALL_FRAMES_CUT, FRAME_POINTERS, Sampled, Unwind, sample
from coral.agentd.symbolize import Symbolizer, maps_of
from coral.daemon.errors import CoralError, ProbeFailed
from coral.procmaps import Mapping
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ProfilePlan:
    """A checked request: what to sample, how often, for how long."""

    session_id: str
    service: str
    agent_id: str
    pids: tuple[int, ...]
    executables: dict[int, str]
    frequency: int
    duration_ms: int
    owner: str
    python: dict[int, pb.PythonLayout] = field(default_factory=dict)  # pid -> its interpreter's layout


MISSING_FRAMES_PERCENT = 1  # of a process's samples, walked by frame pointers through code without them


def new_id() -> str:
    return f"prof-{secrets.token_hex(6)}"


def run(plan: ProfilePlan, stop: threading.Event, symbolizer: Symbolizer, max_reply_bytes: int,
        sampler: Callable[[list[int], int, float, threading.Event, Unwind | None, dict[int, pb.PythonLayout]],
                          Sampled] = sample,
        ) -> pb.ProfileCpuResponse | CoralError:
    """Sample, then symbolize (in the profile's thread). Maps are read before
    and after: a process that exited meanwhile is symbolized with the first."""
    before = {pid: maps_of(pid) for pid in plan.pids}
    for pid, maps in before.items():  # read before sampling: libc's takes seconds, while copies would pile up
        for m in maps:
            if m.path.startswith("/"):
                symbolizer.unwinder.frames_of(pid, m)

    def unwind(tgid: int, ip: int, sp: int, bp: int, stack: bytes) -> tuple[tuple[int, ...], bool] | None:
        return symbolizer.unwinder.unwind(tgid, before.get(tgid, []), ip, sp, bp, stack)

    try:
        sampled = sampler(list(plan.pids), plan.frequency, plan.duration_ms / 1000, stop, unwind, plan.python)
    except Exception as exc:  # BCC raises plain Exception for compile and attach failures
        log.warning("profile %s could not sample: %s", plan.session_id, exc)
        return ProbeFailed(f"could not start sampling on agent {plan.agent_id}: {exc}")
    after = {pid: maps_of(pid) or before[pid] for pid in plan.pids}
    log.info("profile %s: %d samples of %d process(es) at %d Hz (program loaded in %d ms)",
             plan.session_id, sampled.samples, len(plan.pids), plan.frequency, sampled.compile_ms)
    processes = _processes(plan, sampled, after, symbolizer, max_reply_bytes)
    session = pb.DebugSession(
        session_id=plan.session_id, service=plan.service, agent_id=plan.agent_id, pids=list(plan.pids),
        started_unix_ns=sampled.started_ns, expires_unix_ns=sampled.started_ns + plan.duration_ms * 1_000_000,
        ended_unix_ns=sampled.ended_ns,
        status="detached" if stop.is_set() else "expired", status_reason="agent stopping" if stop.is_set() else "",
        owner=plan.owner, cpu_profile=True, total_calls=sampled.samples,
        lost={k: v for k, v in (("stack_dropped", sampled.dropped), ("uncounted", sampled.uncounted)) if v},
    )
    return pb.ProfileCpuResponse(session=session, processes=processes)


def _processes(plan: ProfilePlan, sampled: Sampled, maps: dict[int, list[Mapping]], symbolizer: Symbolizer,
               max_reply_bytes: int) -> list[pb.ProcessProfile]:
    """Most sampled stacks first, within the reply's size bound; the rest counted."""
    out = {pid: pb.ProcessProfile(agent_id=plan.agent_id, pid=pid, executable=plan.executables.get(pid, ""))
           for pid in plan.pids}
    size = 0
    unframed: dict[int, int] = {}  # by pid: samples walked through a function without a frame pointer
    readers = {pid: pyframes.PythonFrames(pid, layout) for pid, layout in plan.python.items() if pid in out}
    merged: dict[tuple[int, tuple[tuple[str, str, int, str], ...]], int] = {}
    for (tgid, addresses, how, py, py_cut), count in sorted(sampled.stacks.items(), key=lambda kv: -kv[1]):
        process = out.get(tgid)
        if process is None:
            continue
        process.samples += count
        if not addresses and not py:
            process.samples_without_stack += count
        if how == CALL_FRAMES_CUT or py_cut:
            process.samples_cut += count
        frames, framed = symbolizer.frames(tgid, maps.get(tgid, []), addresses, unwound=how != FRAME_POINTERS)
        if not framed:
            unframed[tgid] = unframed.get(tgid, 0) + count
        outermost_first = frames[::-1]  # as folded stacks are written
        reader = readers.get(tgid)
        if reader is not None and py:
            outermost_first = pyframes.merge(outermost_first, reader.frames(py)[::-1])
        # Samples apart in the kernel (two instructions of one line) are one stack here.
        key = (tgid, tuple((f.function[:500], f.file[:300], f.line, f.module[:300]) for f in outermost_first))
        merged[key] = merged.get(key, 0) + count
    for (tgid, frames_key), count in sorted(merged.items(), key=lambda kv: -kv[1]):
        process = out[tgid]
        if size > max_reply_bytes:
            process.stacks_left_out += 1
            continue
        stack = pb.SampledStack(count=count, frames=[
            pb.StackFrame(function=function, file=file, line=line, module=module)
            for function, file, line, module in frames_key])
        size += stack.ByteSize() + 8
        process.stacks.append(stack)
    for pid, n in unframed.items():
        # Said when it matters: a few samples whose copy was not sent (the ring buffer
        # full) are walked by frame pointers even where the copies unwind every other one.
        out[pid].frames_may_be_missing = n * 100 > out[pid].samples * MISSING_FRAMES_PERCENT
    return list(out.values())
