"""`coralctl profile SERVICE`: an on-CPU profile of the service's processes
(ProfileCpu), shown as the functions that use the CPU, as folded stacks
(`--output folded`), as JSON Lines, and as a flamegraph file (`-o FILE`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Protocol, cast

from google.protobuf.message import Message

from coral.ctl import flame, render
from coral.daemon import profiling
from coral.proto import coral_pb2 as pb

TOP_FUNCTIONS = 15
MISSING_FRAMES = "frames may be missing: built without frame pointers"


class Caller(Protocol):
    def __call__(self, method: str, request: Message, timeout: float) -> Any: ...


class Lines(Protocol):
    json: bool

    def line(self, text: str) -> None: ...

    def record(self, obj: dict[str, Any]) -> None: ...


def run(args: Any, call: Caller, out: Lines, max_duration_s: int) -> int:
    duration_ms = round(args.duration * 1000)
    waited = (duration_ms or min(profiling.DEFAULT_DURATION_MS, max_duration_s * 1000)) / 1000
    request = pb.ProfileCpuRequest(service=args.service, duration_ms=duration_ms, frequency_hz=args.frequency,
                                   agent_id=args.agent)
    if not out.json and args.output != "folded":
        out.line(f"Profiling {args.service} for {render.format_ns(waited * 1e9)} at {args.frequency or 99} Hz...")
    # The colony answers when the profile has ended: wait for that, and for the agents to load their program.
    r = cast(pb.ProfileCpuResponse, call("ProfileCpu", request, waited + profiling.LOAD_ALLOWANCE_S + args.timeout))
    stacks = flame.folded(r.processes)
    if args.flamegraph and not write_flamegraph(Path(args.flamegraph), stacks, r):
        return 1
    if args.output == "folded":
        for line in flame.folded_lines(stacks):
            out.line(line)
        return 0
    if out.json:
        out.record({"kind": "session", **render.to_dict(r.session)})
        for process in r.processes:
            out.record({"kind": "process", **render.to_dict(process)})
        return 0
    for line in summary(r, stacks):
        out.line(line)
    if args.flamegraph:
        out.line(f"Flamegraph: {args.flamegraph} (open it in a browser; it fetches nothing)")
    return 0


def summary(r: pb.ProfileCpuResponse, stacks: list[tuple[tuple[str, ...], int]]) -> list[str]:
    s = r.session
    samples = sum(p.samples for p in r.processes)
    pids = ", ".join(str(p.pid) for p in r.processes) or "-"
    agents = sorted({p.agent_id for p in r.processes})
    lines = [f"Profile {s.session_id} of {s.service}: {samples} samples of {len(r.processes)} process(es) "
             f"(pids {pids}) on {', '.join(agents) or 'no agent'}, {s.status}"]
    for part in s.parts:
        if part.session.status == "failed":
            lines.append(f"  agent {part.agent_id}: {part.session.status_reason}")
    if not samples:
        lines.append("No samples: the processes did not run on a CPU while they were profiled.")
        return lines
    lines.append(f"  {'SELF':>6}  {'TOTAL':>6}  FUNCTION")
    for f in flame.top_functions(stacks)[:TOP_FUNCTIONS]:
        lines.append(f"  {100 * f.self_samples / samples:5.1f}%  {100 * f.total_samples / samples:5.1f}%  {f.function}")
    for p in r.processes:
        if p.frames_may_be_missing:
            lines.append(f"Note: pid {p.pid} ({p.executable}): {MISSING_FRAMES} (rebuild with "
                         "-fno-omit-frame-pointer to see every caller)")
        if p.samples_without_stack:
            lines.append(f"Note: pid {p.pid}: {p.samples_without_stack} samples without a stack (the stack table was full)")
        if p.stacks_left_out:
            lines.append(f"Note: pid {p.pid}: {p.stacks_left_out} rarely sampled stacks left out of the reply (size bound)")
    return lines


def write_flamegraph(path: Path, stacks: list[tuple[tuple[str, ...], int]], r: pb.ProfileCpuResponse) -> bool:
    s = r.session
    samples = sum(p.samples for p in r.processes)
    seconds = max(0, s.ended_unix_ns - s.started_unix_ns) / 1e9
    subtitle = (f"{samples} samples of {len(r.processes)} process(es), {render.format_ns(seconds * 1e9)}, "
                f"profile {s.session_id}, started {render.clock(s.started_unix_ns)}")
    if any(p.frames_may_be_missing for p in r.processes):
        subtitle += f"; {MISSING_FRAMES}"
    try:
        path.write_text(flame.flamegraph_html(stacks, f"CPU profile of {s.service}", subtitle))
    except OSError as exc:
        print(f"coralctl: cannot write the flamegraph to {path}: {exc.strerror}", file=sys.stderr)
        return False
    return True
