"""`coralctl debug attach` with several functions (`--function` repeated, or
a pattern): one session per function, started together, followed together
and summarised as one, with a row per function and the nested calls among
them as trees (docs/user-guide.md, "Several functions at once").

Each session is an ordinary one (its own id, rights, audit row, exact
kernel counts); what is shared is only how coralctl shows them. The trees
are built here from the calls' threads and times: a call is nested in
another of the same thread that began before it and ended after it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from google.protobuf.message import Message

from coral.ctl import render
from coral.ctl.saved import SessionFile, sessions_dir
from coral.daemon.errors import CoralError, InvalidArgument
from coral.proto import coral_pb2 as pb

MAX_FUNCTIONS = 16  # in one attach; a pattern that matches more is refused, naming how many
MAX_KEPT_CALLS = 200_000  # calls kept for the trees; past it, trees are built from the first ones (said)
MAX_TREES = 200  # trees in --output json
SHOWN_TREES = 3  # trees printed: the slowest of those sampled
MAX_TREE_NODES = 40  # calls printed in one tree; the rest are counted
HOLD_MS = 200  # after a round with no news, how long the daemon may hold the next question
PAGE = 1000


class Cli(Protocol):
    """What of coralctl's command runner this uses."""

    args: Any
    out: Any
    style: Any
    slow_ns: int
    subtract: bool
    show_agent: bool
    show_function: bool

    def call(self, method: str, request: Message) -> Any: ...

    def _print_call(self, call: pb.Call) -> None: ...


def is_pattern(name: str) -> bool:
    """`*` or `?` may make a name a pattern; `[` never does: Go generics
    (main.Sum[int]) and C++ templates are written with brackets."""
    return "*" in name or "?" in name


def literal(name: str) -> str:
    """A glob that matches `name` alone (the listing's patterns are fnmatch's)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def resolve(call: Callable[[str, Message], Any], service: str, specs: list[str]) -> list[str]:
    """The functions named, patterns expanded by the colony's listing, in
    the order given, each once; at most MAX_FUNCTIONS. A name with `*` or
    `?` that the service has as written is that one function (C++
    `operator*`, Go `main.(*Server).Handle`)."""
    out: list[str] = []
    for spec in specs:
        if not is_pattern(spec) or spec in _listed(call, service, literal(spec), 1)[0]:
            found = [spec]
        else:
            found, truncated = _listed(call, service, spec, MAX_FUNCTIONS + 1)
            if not found:
                raise InvalidArgument(f"--function {spec!r} matches no function of {service!r} "
                                      f"(list them with: coralctl functions {service} --pattern '{spec}')")
            if truncated or len(found) > MAX_FUNCTIONS:
                raise InvalidArgument(f"--function {spec!r} matches more than {MAX_FUNCTIONS} functions of {service!r}; "
                                      "name fewer (coralctl functions lists them)")
        out += [f for f in found if f not in out]
    if len(out) > MAX_FUNCTIONS:
        raise InvalidArgument(f"{len(out)} functions asked for; at most {MAX_FUNCTIONS} in one attach")
    return out


def _listed(call: Callable[[str, Message], Any], service: str, pattern: str, limit: int) -> tuple[list[str], bool]:
    r = cast(pb.ListFunctionsResponse, call("ListFunctions", pb.ListFunctionsRequest(
        service=service, pattern=pattern, max_results=limit)))
    return list(r.functions), r.truncated


@dataclass
class Followed:
    """One function's session, as it is followed (and saved, if `sink`)."""

    session: pb.DebugSession
    sink: SessionFile | None = None
    cursor: int = 0
    done: bool = False
    durations: list[int] = field(default_factory=list)
    tally: render.Tally = field(default_factory=render.Tally)


@dataclass(frozen=True)
class Node:
    call: pb.Call
    children: list[Node]


def forest(calls: Iterable[pb.Call]) -> list[Node]:
    """Calls as trees, per thread: a call is under the innermost call of its
    thread that began no later and ended no earlier (and is not itself).
    Roots in order of their start."""
    by_thread: dict[tuple[str, int, int], list[pb.Call]] = {}
    for c in calls:
        by_thread.setdefault((c.agent_id, c.pid, c.tid), []).append(c)
    roots: list[Node] = []
    for thread_calls in by_thread.values():
        # Outer first when two begin together: the longer one holds the other.
        thread_calls.sort(key=lambda c: (c.start_unix_ns, -c.end_unix_ns))
        open_: list[Node] = []
        for c in thread_calls:
            while open_ and open_[-1].call.end_unix_ns < c.end_unix_ns:
                open_.pop()
            node = Node(c, [])
            (open_[-1].children if open_ else roots).append(node)
            open_.append(node)
    roots.sort(key=lambda n: n.call.start_unix_ns)
    return roots


def sampled_trees(roots: list[Node], every: int) -> list[Node]:
    """One in every `every` outermost calls, of those with a call nested in them."""
    return [n for i, n in enumerate(roots) if i % every == 0 and n.children]


def tree_lines(node: Node, limit: int = MAX_TREE_NODES) -> list[str]:
    c = node.call
    lines = [f"{c.function} {render.format_ns(c.duration_ns)} (pid {c.pid} tid {c.tid}, "
             f"{render.clock(c.start_unix_ns)})"]
    left = [0]

    def walk(children: list[Node], prefix: str) -> None:
        for i, child in enumerate(children):
            if len(lines) > limit:
                left[0] += 1 + count(child.children)
                continue
            last = i == len(children) - 1
            lines.append(f"{prefix}{'└─' if last else '├─'} {child.call.function} "
                         f"{render.format_ns(child.call.duration_ns)}")
            walk(child.children, prefix + ("   " if last else "│  "))

    walk(node.children, "")
    if left[0]:
        lines.append(f"… {left[0]} more nested calls")
    return lines


def count(nodes: list[Node]) -> int:
    return sum(1 + count(n.children) for n in nodes)


def tree_dict(node: Node) -> dict[str, Any]:
    c = node.call
    return {"function": c.function, "session_id": c.session_id, "pid": c.pid, "tid": c.tid,
            "start_unix_ns": c.start_unix_ns, "duration_ns": c.duration_ns,
            "calls": [tree_dict(n) for n in node.children]}


def run(cli: Cli, functions: list[str], config: pb.UprobeConfig) -> int:
    """Start a session per function, follow them all, then summarise. A
    refused start ends the ones already started."""
    a = cli.args
    followed: list[Followed] = []
    try:
        for function in functions:
            r = cast(pb.AttachUprobeResponse, cli.call("AttachUprobe", pb.AttachUprobeRequest(
                service=a.service, function=function, duration_ms=round(a.duration * 1000), config=config,
                agent_id=a.agent)))
            followed.append(Followed(r.session))
    except CoralError:
        for f in followed:
            cli.call("DetachUprobe", pb.DetachUprobeRequest(session_id=f.session.session_id))
        raise
    cli.show_agent = any(len(f.session.parts) > 1 for f in followed)
    cli.show_function = True
    _open_sinks(cli, followed)
    if cli.out.json:
        for f in followed:
            cli.out.record({"kind": "session", **render.to_dict(f.session)})
    else:
        first = followed[0].session
        cli.out.line(f"Debug sessions started on {a.service}, one per function "
                     f"(pids {', '.join(map(str, first.pids))}):")
        for f in followed:
            cli.out.line(f"  {f.session.session_id}  {f.session.function} ({f.session.probes} probes)")
        cli.out.line(f"Duration: {render.format_ns(first.expires_unix_ns - first.started_unix_ns)}. Ctrl-C detaches them all.")
    kept: list[pb.Call] = []
    try:
        _follow(cli, followed, kept)
    finally:
        _close_sinks(followed, cli.subtract)
    roots = forest(kept)
    trees = sampled_trees(roots, a.tree_every)
    if cli.out.json:
        for f in followed:
            summary = render.summarize_session(f.session, f.durations, cli.subtract)
            cli.out.record({**render.summary_dict(summary, f.session, f.tally), "function": f.session.function})
        for tree in trees[:MAX_TREES]:
            cli.out.record({"kind": "tree", **tree_dict(tree)})
        return 0
    for line in summary_table(followed, cli.subtract):
        cli.out.line(line)
    if len(kept) >= MAX_KEPT_CALLS:
        cli.out.line(f"Nested calls: from the first {MAX_KEPT_CALLS} calls only.")
    if trees:
        shown = sorted(trees, key=lambda n: -n.call.duration_ns)[:SHOWN_TREES]
        cli.out.line(f"Nested calls: {len(trees)} of {len(roots)} outermost calls sampled (one in every "
                     f"{a.tree_every}, with a call nested in it); the slowest {len(shown)}:")
        for tree in shown:
            for line in tree_lines(tree):
                cli.out.line(f"  {line}")
    elif kept:
        cli.out.line("Nested calls: none of these functions was called inside another on the same thread.")
    saved = sorted({str(f.sink.path) for f in followed if f.sink is not None})
    if len(saved) == 1:
        cli.out.line(f"Saved to {saved[0]}")
    elif saved:
        cli.out.line(f"Saved to {sessions_dir()}, a file per session (coralctl debug show SESSION)")
    return 0


def _open_sinks(cli: Cli, followed: list[Followed]) -> None:
    """As for one function: nothing with --no-save; --save PATH, every
    session in that one file; by default (text output) a file per session
    in the state directory, never the working directory."""
    a = cli.args
    if a.no_save or (a.save is None and cli.out.json):
        return
    shared = SessionFile(Path(a.save)) if a.save else None
    for f in followed:
        f.sink = shared or SessionFile(sessions_dir() / f"{f.session.session_id}.jsonl")
        f.sink.record({"kind": "session", **render.to_dict(f.session)})


def _close_sinks(followed: list[Followed], subtract: bool) -> None:
    for f in followed:
        if f.sink is None:
            continue
        f.sink.record({"kind": "session", **render.to_dict(f.session)})
        summary = render.summarize_session(f.session, f.durations, subtract)
        f.sink.record({**render.summary_dict(summary, f.session, f.tally), "function": f.session.function})
    for sink in {id(f.sink): f.sink for f in followed if f.sink is not None}.values():
        sink.close()


def _follow(cli: Cli, followed: list[Followed], kept: list[pb.Call]) -> None:
    """Every call of every session, printed as it comes, until all have
    ended and all their calls are read. When a round brings nothing, the
    next question (to the first session still open) is held by the daemon
    until it has a call or HOLD_MS pass, rather than asking every session
    again at once. Ctrl-C detaches them all, then drains."""
    detached = False
    news = True
    while not all(f.done for f in followed):
        try:
            open_ = [f for f in followed if not f.done]
            if not news:  # held: the daemon answers at its first call, or after HOLD_MS
                asked = time.monotonic()
                if not _ask(cli, open_[0], kept, HOLD_MS) and time.monotonic() - asked < HOLD_MS / 2000:
                    time.sleep(HOLD_MS / 1000)  # answered at once with nothing: not held (a full daemon)
                open_ = [f for f in open_ if not f.done]
            news = False
            for f in open_:
                news = _ask(cli, f, kept, 0) or news
        except KeyboardInterrupt:
            if detached:
                raise
            detached = True
            for f in followed:
                if not f.done:
                    cli.call("DetachUprobe", pb.DetachUprobeRequest(session_id=f.session.session_id))


def _ask(cli: Cli, f: Followed, kept: list[pb.Call], wait_ms: int) -> bool:
    """One page of one session's calls, shown, saved and kept; whether it had any."""
    q = cast(pb.QueryUprobeEventsResponse, cli.call("QueryUprobeEvents", pb.QueryUprobeEventsRequest(
        session_id=f.session.session_id, cursor=f.cursor, max_events=PAGE, wait_ms=wait_ms)))
    for c in q.calls:
        if cli.subtract:
            c.duration_ns = render.without_probe_cost(c.duration_ns, q.session)
        f.tally.add(c, cli.slow_ns)
        f.durations.append(c.duration_ns)
        if f.sink is not None:
            f.sink.call(c)
        if len(kept) < MAX_KEPT_CALLS:
            kept.append(c)
        cli._print_call(c)
    f.cursor = q.next_cursor
    f.session = q.session
    f.done = not q.has_more and q.session.status != "active"
    return bool(q.calls)


def summary_table(followed: list[Followed], subtract: bool) -> list[str]:
    """A row per function: calls (the kernel's count), errors among the calls
    stored, percentiles and the maximum, and its session's end."""
    rows = []
    for f in followed:
        s = render.summarize_session(f.session, f.durations, subtract)
        ended = f.session.status + (f" ({f.session.status_reason})" if f.session.status_reason else "")
        rows.append((f.session.function, str(s.calls), str(f.tally.errors), render.format_ns(s.p50_ns) if s.calls else "-",
                     render.format_ns(s.p95_ns) if s.calls else "-", render.format_ns(s.p99_ns) if s.calls else "-",
                     render.format_ns(s.max_ns) if s.calls else "-", ended))
    head = ("FUNCTION", "CALLS", "ERRORS", "P50", "P95", "P99", "MAX", "SESSION")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(v.ljust(w) if i in (0, 7) else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in [head, *rows]]
