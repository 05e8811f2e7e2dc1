"""`coralctl debug stacks SESSION` and `coralctl debug flamegraph SESSION`:
the call paths of a session started with --stack, aggregated from its calls'
stacks: as a table (by calls, with their total time), as folded stacks
(`--output folded`: by calls for stacks, by time in ns for flamegraph, as
flamegraph.pl and speedscope read them), and as an interactive flamegraph
of the probed function's callers weighted by time (one HTML file that
fetches nothing: coral/ctl/flame.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from coral.ctl import flame, render
from coral.proto import coral_pb2 as pb

CUT = "[more frames]"  # the outermost frame of a stack that was truncated
NO_STACK = "[no stack]"  # a call that came without one


class Lines(Protocol):
    json: bool

    def line(self, text: str) -> None: ...

    def record(self, obj: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class CallPath:
    frames: tuple[str, ...]  # outermost first, the probed function last
    calls: int
    total_ns: int


def call_paths(calls: Iterable[pb.Call]) -> list[CallPath]:
    """The distinct paths by function names, most calls first (then most time, then by name)."""
    counts: dict[tuple[str, ...], list[int]] = {}
    for call in calls:
        names = tuple(flame.frame_name(f) for f in reversed(call.stack)) or (NO_STACK,)
        if call.stack_truncated:
            names = (CUT, *names)
        totals = counts.setdefault(names, [0, 0])
        totals[0] += 1
        totals[1] += call.duration_ns
    return sorted((CallPath(k, c, ns) for k, (c, ns) in counts.items()), key=lambda p: (-p.calls, -p.total_ns, p.frames))


def folded(paths: list[CallPath], by_time: bool) -> list[tuple[tuple[str, ...], int]]:
    return [(p.frames, p.total_ns if by_time else p.calls) for p in paths]


def show_stacks(session: pb.DebugSession, calls: list[pb.Call], output: str, out: Lines) -> int:
    paths = call_paths(calls)
    if output == "folded":
        for line in flame.folded_lines(folded(paths, by_time=False)):
            out.line(line)
        return 0
    if out.json:
        for p in paths:
            out.record({"kind": "path", "frames": list(p.frames), "calls": p.calls, "total_ns": p.total_ns})
        return 0
    with_stack = sum(1 for c in calls if c.stack)
    out.line(f"Call paths of {session.function} in session {session.session_id}: {len(calls)} calls")
    if not with_stack:
        out.line("No stacks: the session was not started with --stack (coralctl debug attach ... --stack).")
        return 0
    if with_stack < len(calls):
        out.line(f"  {len(calls) - with_stack} calls came without a stack ({NO_STACK} below)")
    out.line(f"  {'CALLS':>7}  {'TOTAL':>9}  PATH (outermost first)")
    for p in paths:
        out.line(f"  {p.calls:>7}  {render.format_ns(p.total_ns):>9}  {' > '.join(p.frames)}")
    return 0


def write_flamegraph(session: pb.DebugSession, calls: list[pb.Call], output: str, path: str | None,
                     out: Lines) -> int:
    paths = call_paths(calls)
    stacks = folded(paths, by_time=True)
    if output == "folded":
        for line in flame.folded_lines(stacks):
            out.line(line)
    if path is None:
        if output != "folded":
            print("coralctl debug flamegraph: error: -o FILE is required (or --output folded)", file=sys.stderr)
            return 2
        return 0
    total = sum(p.total_ns for p in paths)
    subtitle = (f"{len(calls)} calls, {render.format_ns(total)} in all, weighted by time; session "
                f"{session.session_id}, started {render.clock(session.started_unix_ns)}")
    try:
        Path(path).write_text(flame.flamegraph_html(stacks, f"Callers of {session.function} in {session.service}",
                                                    subtitle, unit="ns"))
    except OSError as exc:
        print(f"coralctl: cannot write the flamegraph to {path}: {exc.strerror}", file=sys.stderr)
        return 1
    if output != "folded" and not out.json:
        out.line(f"Flamegraph: {path} (open it in a browser; it fetches nothing)")
    return 0
