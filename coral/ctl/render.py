"""Pure helpers for coralctl: durations in, lines and JSON out, summaries."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from coral import expr
from coral.histogram import bucket_bounds, percentile_ns
from coral.proto import coral_pb2 as pb

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class Output:
    """Where coralctl's lines go: text, or one JSON object a line."""

    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode

    def line(self, text: str) -> None:
        print(text, flush=True)

    def record(self, obj: dict[str, Any]) -> None:
        print(json.dumps(obj, separators=(",", ":")), flush=True)


def parse_duration(text: str) -> float:
    """'90s', '5m', '1m30s', '500ms', or a bare number of seconds -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(t) or not t:
        raise ValueError(f"invalid duration {text!r}: use forms like 90s, 5m, 1m30s or 500ms")
    return total


def format_ns(ns: float) -> str:
    """A duration for humans: 850ns, 12.5µs, 22.0ms, 1.25s."""
    if ns < 1_000:
        return f"{ns:.0f}ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.1f}ms"
    return f"{ns / 1_000_000_000:.2f}s"


def clock(unix_ns: int) -> str:
    t = unix_ns / 1e9
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(unix_ns // 1_000_000 % 1000):03d}"


class Style:
    """ANSI colour for people at a terminal; none when piped or with NO_COLOR."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: TextIO) -> Style:
        return cls(stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb")

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)

    def green(self, text: str) -> str:
        return self._wrap("32", text)


PLAIN = Style(False)


def format_call(call: pb.Call, slow_ns: int = 0, style: Style = PLAIN, show_agent: bool = False,
                show_function: bool = False) -> list[str]:
    """A call as text: when it began, where, how long; then its arguments and
    result. `show_agent` (a session on several agents) adds agent=ID;
    `show_function` (several functions at once), the function's name."""
    where = f"agent={call.agent_id} " if show_agent else ""
    which = f"{call.function} " if show_function else ""
    head = (f"{style.dim(f'[{clock(call.start_unix_ns)}]')} {which}{where}pid={call.pid} tid={call.tid} "
            f"duration={format_ns(call.duration_ns)}")
    if slow_ns and call.duration_ns >= slow_ns:
        head += " " + style.yellow("⚠ SLOW")
    lines = [head]
    if call.args:
        lines.append("  args: " + ", ".join(f"{a.name}={a.value}" for a in call.args))
    if call.HasField("return_value") and (call.return_value.value or call.return_value.is_error):
        rv = call.return_value
        lines.append(style.red(f"  └─ error: {rv.error_message or rv.value}") if rv.is_error
                     else f"  └─ return: {rv.value}")
    return lines


PRINT_SPECIAL = ("ret", "err", "duration")


def print_template(text: str) -> expr.Template:
    """A --print template: holes name arguments, `ret`, `err` or `duration`
    (fields are shown by naming their argument)."""
    template = expr.parse_template(text)
    for path in template.paths:
        if len(path.names) > 1:
            raise expr.ExprError(f"{path}: name the argument ({path.root}) to print its fields", path.column, text)
    return template


def print_captures(template: expr.Template) -> tuple[bool, bool, list[str]]:
    """What a template needs captured: (arguments, return value, only these)."""
    names = list(dict.fromkeys(p.root for p in template.paths))
    args = [n for n in names if n not in PRINT_SPECIAL]
    ret = "ret" in names or "err" in names
    return bool(args), ret, args + (["ret"] if ret else [])


def format_printed(call: pb.Call, template: expr.Template) -> str:
    """One line for a call, from a --print template."""
    args = {a.name: a.value for a in call.args}
    rv = call.return_value if call.HasField("return_value") else None
    values = []
    for path in template.paths:
        name = path.root
        if name == "duration":
            values.append(format_ns(call.duration_ns))
        elif name == "err":
            values.append((rv.error_message or rv.value) if rv is not None and rv.is_error else "nil")
        elif name == "ret":
            values.append("" if rv is None or rv.is_error else rv.value)
        else:
            values.append(args.get(name, "?"))
    return template.render(values)


def inlined(callers: list[str]) -> str:
    """`3 call sites are inlined into main (2), settle; those calls are not seen`."""
    counts: dict[str, int] = {}
    for c in callers:
        counts[c] = counts.get(c, 0) + 1
    where = ", ".join(f"{c} ({n})" if n > 1 else c for c, n in counts.items())
    sites = "1 call site is" if len(callers) == 1 else f"{len(callers)} call sites are"
    return f"{sites} inlined into {where}; those calls are not seen"


@dataclass(frozen=True)
class Summary:
    calls: int
    avg_ns: float
    p50_ns: int
    p95_ns: int
    p99_ns: int
    max_ns: int
    probe_cost_ns: int = 0  # of each duration, the probes' own (DebugSession.probe_cost_ns)
    probe_cost_subtracted: bool = False  # taken out of the figures above (--subtract-probe-cost)


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize_session(session: pb.DebugSession, durations_ns: Sequence[int], subtract: bool = False) -> Summary:
    """Prefer the kernel's counts, which cover every call (sampled, filtered
    and lost ones too); fall back to the calls seen (already without the
    probe cost if `subtract`). With `subtract`, the probes' own share of
    each duration is taken out of the kernel's figures."""
    cost = session.probe_cost_ns
    if not session.total_calls:
        return replace(summarize(durations_ns), probe_cost_ns=cost, probe_cost_subtracted=subtract)
    hist, top = dict(session.histogram), session.max_duration_ns
    cut = cost if subtract else 0
    figures = [percentile_ns(hist, p, top) for p in (50, 95, 99)] + [top]
    p50, p95, p99, high = (max(0, v - cut) for v in figures)
    return Summary(session.total_calls, max(0.0, session.sum_duration_ns / session.total_calls - cut), p50, p95, p99,
                   high, cost, subtract)


def without_probe_cost(duration_ns: int, session: pb.DebugSession) -> int:
    return max(0, duration_ns - session.probe_cost_ns)


def summarize(durations_ns: Sequence[int]) -> Summary:
    values = sorted(durations_ns)
    if not values:
        return Summary(0, 0.0, 0, 0, 0, 0)
    return Summary(
        len(values), sum(values) / len(values), percentile(values, 50), percentile(values, 95), percentile(values, 99), values[-1]
    )


TOP_CALLERS = 5  # callers the summary names, by calls and by total time


@dataclass
class Tally:
    """What the client saw of the calls it was shown: errors and slow calls."""

    shown: int = 0
    errors: int = 0
    slow: int = 0
    # --stack: by caller (the frame below the probed function's), calls and their total time
    callers: dict[str, list[int]] = field(default_factory=dict)

    def add(self, call: pb.Call, slow_ns: int) -> None:
        self.shown += 1
        self.errors += call.return_value.is_error
        self.slow += bool(slow_ns) and call.duration_ns >= slow_ns
        if call.stack:
            caller = call.stack[1].function if len(call.stack) > 1 else "(none)"
            counts = self.callers.setdefault(caller, [0, 0])
            counts[0] += 1
            counts[1] += call.duration_ns

    def top_callers(self, by_time: bool = False, n: int = TOP_CALLERS) -> list[tuple[str, int, int]]:
        """(caller, calls, total ns), most calls (or most time) first."""
        rows = [(name, c, ns) for name, (c, ns) in self.callers.items()]
        return sorted(rows, key=lambda r: (-(r[2] if by_time else r[1]), r[0]))[:n]


def format_top_callers(tally: Tally) -> list[str]:
    if not tally.callers:
        return []
    lines = []
    for title, by_time in (("Top callers by calls:", False), ("Top callers by time: ", True)):
        top = tally.top_callers(by_time)
        lines.append(f"  {title} " + "; ".join(
            f"{name} {_pct(calls, tally.shown)}, {format_ns(ns)}" for name, calls, ns in top))
    return lines


def _pct(n: int, total: int) -> str:
    return f"{n} ({100 * n / total:.1f}%)" if total else str(n)


def format_summary(s: Summary, session: pb.DebugSession, tally: Tally | None = None, slow_ns: int = 0,
                   style: Style = PLAIN) -> list[str]:
    tally = tally or Tally()
    if not s.calls:
        lines = [style.bold("Summary:"), "  Total calls:  0 (the function was not called while the session ran)"]
        lines.extend(f"  Not probed:   {u}" for u in session.unanswered)
        lines.extend(format_agents(session, style))
        return lines
    lines = [
        style.bold("Summary:"),
        f"  Total calls:  {s.calls}",
        f"  Avg duration: {format_ns(s.avg_ns)}",
        f"  P50 duration: {format_ns(s.p50_ns)}",
        f"  P95 duration: {format_ns(s.p95_ns)}",
        f"  P99 duration: {format_ns(s.p99_ns)}",
        f"  Max duration: {format_ns(s.max_ns)}",
        f"  Errors:       {_pct(tally.errors, tally.shown)}" + (" of the calls shown" if tally.shown < s.calls else ""),
    ]
    if session.config.count_by:  # no call is shown: the rows count the failed ones
        lines[-1] = f"  Errors:       {_pct(sum(r.errors for r in session.counts), s.calls)} (by key below)"
    if slow_ns:
        lines.append(f"  Slow calls (>{format_ns(slow_ns)}): {_pct(tally.slow, tally.shown)}")
    if s.probe_cost_ns:
        lines.append(f"  Probe cost:   {format_ns(s.probe_cost_ns)} of each duration is the probes' own "
                     f"({probe_kind(session)}, measured by the agent); "
                     + ("taken out above, not in the histogram" if s.probe_cost_subtracted
                        else "--subtract-probe-cost takes it out"))
    lost = {k: v for k, v in session.lost.items() if v and k != "stack_missing"}
    if session.lost.get("stack_missing"):  # shown, without their stack
        lines.append(f"  Without a stack: {session.lost['stack_missing']} calls (the ring buffer was full, or the "
                     "agent fell behind)")
    if lost:
        lines.append("  Calls not shown: " + ", ".join(f"{n} {LOST_CAUSES.get(c, c)}" for c, n in sorted(lost.items())))
    lines.extend(format_top_callers(tally))
    lines.extend(f"  Not probed:   {u}" for u in session.unanswered)
    lines.extend(format_agents(session, style))
    lines.extend(format_histogram(dict(session.histogram), style))
    lines.extend(format_counts(session, style))
    return lines


ENTRY_KINDS = {"push": "an emulated push", "nop": "a 1-byte NOP", "nop5": "a 5-byte NOP", "endbr64": "endbr64",
               "other": "a single-stepped instruction"}


def probe_kind(session: pb.DebugSession) -> str:
    """`entry on a single-stepped instruction, return by uretprobe`."""
    entries = [ENTRY_KINDS.get(k, k) for k in session.entry_instruction.split(",") if k]
    return f"entry on {' or '.join(entries) or 'its first instruction'}, return by {session.return_probe or 'a probe'}"


def agents_of(session: pb.DebugSession) -> list[dict[str, Any]]:
    """Each agent's part of a colony session: its status, pids and calls."""
    return [
        {
            "agent_id": p.agent_id,
            "status": p.session.status,
            "status_reason": p.session.status_reason,
            "pids": list(p.session.pids),
            "calls": p.session.total_calls or p.session.calls,
            "complete": p.complete,
        }
        for p in session.parts
    ]


def format_agents(session: pb.DebugSession, style: Style = PLAIN) -> list[str]:
    """One line per agent, when the session spans several or one failed or is lost."""
    parts = agents_of(session)
    if len(parts) < 2 and not any(p["status"] in ("failed", "lost") for p in parts):
        return []
    lines = ["  Agents:"]
    for p in parts:
        status = p["status"] + (f" ({p['status_reason']})" if p["status_reason"] else "")
        pids = ",".join(map(str, p["pids"])) or "-"
        lines.append(
            f"    {p['agent_id']:<16} {p['calls']:>7} calls  pids {pids:<12} "
            + (style.red(status) if p["status"] in ("failed", "lost") else status)
        )
    return lines


def count_key_shown(row: pb.CountRow) -> str:
    if row.overflow:
        return "(other keys)"
    if row.unread:
        return "(unread)"
    return row.key + ("..." if row.cut else "")


def format_counts(session: pb.DebugSession, style: Style = PLAIN) -> list[str]:
    """--count-by: one line per key (most calls first; keys past the
    session's maximum, and keys that could not be read, last)."""
    rows = list(session.counts)
    if not rows or not any(r.calls for r in rows):
        return [f"  Counts by {session.config.count_by}: no calls yet"] if session.config.count_by else []
    width = max(len(session.config.count_by), *(len(count_key_shown(r)) for r in rows), 3)
    lines = [f"  Counts by {session.config.count_by}:",
             style.bold(f"  {session.config.count_by:<{width}}  {'CALLS':>9}  {'ERRORS':>7}  {'AVG':>9}  "
                        f"{'P50':>9}  {'P99':>9}  {'MAX':>9}")]
    for r in rows:
        if not r.calls:
            continue
        hist = dict(r.histogram)
        lines.append(f"  {count_key_shown(r):<{width}}  {r.calls:>9}  {r.errors:>7}  "
                     f"{format_ns(r.sum_duration_ns / r.calls):>9}  "
                     f"{format_ns(percentile_ns(hist, 50, r.max_duration_ns)):>9}  "
                     f"{format_ns(percentile_ns(hist, 99, r.max_duration_ns)):>9}  {format_ns(r.max_duration_ns):>9}")
    return lines


def counts_dict(session: pb.DebugSession) -> dict[str, Any]:
    """The live --count-by table, one JSON line (docs/json.md)."""
    return {"kind": "counts", "session_id": session.session_id, "count_by": session.config.count_by,
            "total_calls": session.total_calls, "rows": [to_dict(r) for r in session.counts]}


def format_histogram(histogram: dict[int, int], style: Style = PLAIN, width: int = 40) -> list[str]:
    """The session's latency histogram (every call, counted in the kernel),
    one row per power of two."""
    if not histogram:
        return []
    rows: dict[int, int] = {}
    for bucket, n in histogram.items():
        low, _ = bucket_bounds(bucket)
        rows[max(0, low.bit_length() - 1)] = rows.get(max(0, low.bit_length() - 1), 0) + n
    top = max(rows.values())
    lines = ["  Latency (every call):"]
    for power in range(min(rows), max(rows) + 1):
        n = rows.get(power, 0)
        bar = "█" * max(1 if n else 0, round(width * n / top))
        label = f"{format_ns(1 << power):>8} – {format_ns(1 << (power + 1)):<8}"
        lines.append(f"    {label} │{style.green(bar):<{width}} {n}")
    return lines


LOST_CAUSES = {
    "sampled": "skipped by sampling",
    "filtered": "below --min-duration or not matching --where",
    "ringbuf_full": "lost: ring buffer full",
    "max_events": "over --max-calls",
    "unreadable": "lost: the process's record could not be read",
    "unwound": "left by an exception, a panic or longjmp (no return, no duration)",
    "too_deep": "entered deeper than the calls tracked per thread ([sessions] max_call_depth)",
    "tail_call": "left by a tail jump to another function (no return of its own, no duration)",
    "where_error": "--where could not be evaluated",
    "rate": "over --rate (reported calls a second)",
}


def summary_dict(s: Summary, session: pb.DebugSession, tally: Tally | None = None) -> dict[str, Any]:
    tally = tally or Tally()
    return {
        "kind": "summary",
        "session_id": session.session_id,
        "status": session.status,
        "status_reason": session.status_reason,
        **asdict(s),
        "lost": dict(session.lost),
        "unanswered": list(session.unanswered),
        "errors": tally.errors,
        "slow": tally.slow,
        **({"top_callers": [{"caller": n, "calls": c, "total_ns": ns} for n, c, ns in tally.top_callers()],
            "top_callers_by_time": [{"caller": n, "calls": c, "total_ns": ns}
                                    for n, c, ns in tally.top_callers(by_time=True)]} if tally.callers else {}),
        "histogram": {str(k): v for k, v in session.histogram.items()},
        "counts": [to_dict(r) for r in session.counts],
        "agents": agents_of(session),
    }


def call_from_dict(data: dict[str, Any]) -> pb.Call:
    """The reverse of to_dict (protobuf's parser takes its 64-bit numbers;
    `kind`, `line` and fields of a newer coralctl are ignored)."""
    return json_format.ParseDict(data, pb.Call(), ignore_unknown_fields=True)


def session_from_dict(data: dict[str, Any]) -> pb.DebugSession:
    return json_format.ParseDict(data, pb.DebugSession(), ignore_unknown_fields=True)


def to_dict(msg: Message) -> dict[str, Any]:
    """Every field under its proto name, 64-bit integers as JSON numbers
    (unlike protobuf's JSON mapping, which makes them strings)."""
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            out[fd.name] = dict(value)
        elif fd.is_repeated:
            out[fd.name] = [to_dict(v) if fd.message_type else v for v in value]
        elif fd.message_type is not None:
            out[fd.name] = to_dict(value) if msg.HasField(fd.name) else None
        else:
            out[fd.name] = value
    return out
