"""What coral-mcp asks the colony, as plain blocking functions: each takes
checked arguments and returns JSON-ready dicts. No MCP here (the tools in
coral/mcp/server.py call these from worker threads), so this reads like
coralctl's commands and is testable without a client.

Every request goes out as the user coral-mcp runs as (on tcp: its own CURVE
key), so the colony grants exactly that identity's rights; the label it
carries is only shown in the audit log (docs/protocol.md, "Client label")."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import zmq
from google.protobuf.message import Message

from coral import expr
from coral.ctl import flame, render
from coral.daemon import curve, profiling
from coral.daemon.client import Client
from coral.daemon.config import Config
from coral.proto import coral_pb2 as pb

MAX_LABEL = 64
MAX_NAME = 200  # a service or function name, as the daemons bound them
MAX_EVENTS = 200  # calls in one get_events result: an assistant's context is not a log file
MAX_FUNCTIONS = 500
MAX_LISTED = 500  # services or sessions in one answer; the rest are counted
MAX_WAIT = 5.0  # seconds get_events may wait for a new call (the daemons hold a question at most 5 s)
FOLLOW_WAIT_MS = 2000  # while attach waits for its session to end
SUMMARY_PAGE = 1000
MAX_SUMMARY_CALLS = 200_000  # get_summary reads at most this many calls to count errors
PROFILE_FUNCTIONS = 25  # rows of a profile's table of functions
PROFILE_STACKS = 50  # the heaviest folded stacks in a profile's answer; the rest are counted


class InvalidInput(ValueError):
    """A tool's argument is out of bounds; the message says which and why."""


def client_label(client_name: str | None) -> str:
    """`via MCP: NAME`, NAME being what the MCP client called itself: cut to
    64 printable ASCII bytes, as the colony would cut it anyway."""
    label = f"via MCP: {client_name}" if client_name else "via MCP"
    return "".join(c if " " <= c <= "~" else "?" for c in label)[:MAX_LABEL]


def check_name(what: str, value: str) -> str:
    if not value or len(value) > MAX_NAME or not value.isprintable():
        raise InvalidInput(f"{what} must be 1 to {MAX_NAME} printable characters, got {value[:40]!r}")
    return value


def check_session_id(value: str) -> str:
    if not value or len(value) > 64 or not value.isprintable():
        raise InvalidInput(f"session_id must be 1 to 64 printable characters (as list_sessions shows them), got {value[:40]!r}")
    return value


def check_condition(where: str) -> str:
    """A `where` filter, parsed here so that a mistake is named with its column."""
    try:
        expr.parse_condition(where)
    except expr.ExprError as exc:
        raise InvalidInput(f"where: {expr.described(where, exc)}") from None
    return where


def duration_cap(config: Config) -> float:
    return min(config.mcp.max_duration, float(config.sessions.max_duration))


def check_duration(seconds: float, config: Config) -> float:
    cap = duration_cap(config)
    if not seconds > 0:
        raise InvalidInput(f"duration_seconds must be more than 0, got {seconds:g}")
    if seconds > cap:
        raise InvalidInput(f"duration_seconds {seconds:g} exceeds coral-mcp's maximum of {cap:g}s "
                           f"([mcp] max_duration in {config.source}); ask for {cap:g}s or less")
    return seconds


def check_bounded(what: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidInput(f"{what} must be between {low} and {high}, got {value}")
    return value


@dataclass(frozen=True)
class Colony:
    """The colony as seen by one coral-mcp process. A Client per request:
    a ZeroMQ socket belongs to one thread, and tools run in worker threads."""

    endpoint: str
    keys: curve.ClientKeys | None
    timeout: float
    max_message_bytes: int
    label: str = ""

    @classmethod
    def from_config(cls, config: Config, endpoint: str = "", key_file: str = "", colony_key_file: str = "",
                    timeout: float = 15.0) -> Colony:
        endpoint = endpoint or config.colony_frontend
        keys = curve.client_keys(config, endpoint, key_file, colony_key_file)  # ConfigError: tcp without keys
        return cls(endpoint, keys, timeout, config.limits.max_message_bytes)

    def labelled(self, label: str) -> Colony:
        return Colony(self.endpoint, self.keys, self.timeout, self.max_message_bytes, label)

    def call(self, method: str, request: Message, timeout: float | None = None) -> Any:
        if self.label:
            request.client_label = self.label  # type: ignore[attr-defined]
        with Client(self.endpoint, self.timeout, zmq.Context.instance(), self.max_message_bytes, self.keys) as client:
            return client.call(method, request, timeout)

    # ------------------------------------------------------------ the tools

    def list_services(self) -> dict[str, Any]:
        found: list[dict[str, Any]] = []
        after = ""
        while True:
            r = cast(pb.ListServicesResponse, self.call("ListServices", pb.ListServicesRequest(after=after)))
            found += [render.to_dict(s) for s in r.services]
            if not r.next or r.next == after or len(found) > MAX_LISTED:
                return {"services": found[:MAX_LISTED], "truncated": len(found) > MAX_LISTED}
            after = r.next

    def list_functions(self, service: str, pattern: str, max_results: int) -> dict[str, Any]:
        r = cast(pb.ListFunctionsResponse, self.call("ListFunctions", pb.ListFunctionsRequest(
            service=service, pattern=pattern, max_results=max_results)))
        locations = list(r.locations) + [""] * (len(r.functions) - len(r.locations))
        functions = [{"function": f, "location": loc} for f, loc in zip(r.functions, locations, strict=False)]
        return {"functions": functions[:max_results], "truncated": r.truncated or len(functions) > max_results}

    def start(self, service: str, function: str, duration: float, capture_args: bool, capture_return: bool,
              where: str) -> pb.DebugSession:
        config = pb.UprobeConfig(capture_args=capture_args, capture_return=capture_return, predicate=where)
        r = cast(pb.AttachUprobeResponse, self.call("AttachUprobe", pb.AttachUprobeRequest(
            service=service, function=function, duration_ms=round(duration * 1000), config=config)))
        return r.session

    def follow(self, session_id: str, seen: Callable[[pb.Call], None], until: float) -> pb.DebugSession:
        """Every call of a session until it has ended and all are read (or
        `until`, a monotonic deadline, passes: the session is then still running)."""
        cursor = 0
        while True:
            wait_ms = max(0, min(FOLLOW_WAIT_MS, int(1000 * (until - time.monotonic()))))
            q = cast(pb.QueryUprobeEventsResponse, self.call("QueryUprobeEvents", pb.QueryUprobeEventsRequest(
                session_id=session_id, cursor=cursor, max_events=SUMMARY_PAGE, wait_ms=wait_ms)))
            for c in q.calls:
                seen(c)
            cursor = q.next_cursor
            if not q.has_more and (q.session.status != "active" or time.monotonic() >= until):
                return q.session

    def summary(self, session_id: str, until: float) -> dict[str, Any]:
        """The session's figures (the kernel's counts cover every call) and
        the errors among the calls stored."""
        tally = render.Tally()
        read = 0

        def seen(c: pb.Call) -> None:
            nonlocal read
            read += 1
            if read <= MAX_SUMMARY_CALLS:
                tally.add(c, 0)

        final = self.follow(session_id, seen, until)
        out = render.summary_dict(render.summarize_session(final, []), final, tally)
        out.pop("kind")
        out.pop("agents")
        out["calls_stored"] = final.calls
        return out

    def events(self, session_id: str, cursor: int, max_events: int, wait: float) -> dict[str, Any]:
        q = cast(pb.QueryUprobeEventsResponse, self.call("QueryUprobeEvents", pb.QueryUprobeEventsRequest(
            session_id=session_id, cursor=cursor, max_events=max_events, wait_ms=round(wait * 1000))))
        calls = [_call_dict(c) for c in q.calls[:max_events]]
        return {"session_id": session_id, "status": q.session.status, "calls": calls,
                "next_cursor": q.next_cursor, "has_more": q.has_more,
                "lost": dict(q.session.lost)}

    def sessions(self, service: str, active_only: bool) -> dict[str, Any]:
        """The newest MAX_LISTED sessions, newest last, and how many there are."""
        r = cast(pb.ListDebugSessionsResponse, self.call("ListDebugSessions", pb.ListDebugSessionsRequest(
            service=service, active_only=active_only)))
        newest = sorted(r.sessions, key=lambda s: s.started_unix_ns)[-MAX_LISTED:]
        return {"sessions": [session_dict(s) for s in newest], "total": len(r.sessions)}

    def profile(self, service: str, duration: float, frequency: int) -> dict[str, Any]:
        """An on-CPU profile of the service's processes (ProfileCpu, as
        `coralctl profile`): the functions that used the CPU, and the
        heaviest whole stacks, folded."""
        request = pb.ProfileCpuRequest(service=service, duration_ms=round(duration * 1000), frequency_hz=frequency)
        # The colony answers once the profile has ended and the agents have loaded their program.
        r = cast(pb.ProfileCpuResponse, self.call("ProfileCpu", request,
                                                  duration + profiling.LOAD_ALLOWANCE_S + self.timeout))
        return profile_dict(r)

    def detach(self, session_id: str) -> dict[str, Any]:
        r = cast(pb.DetachUprobeResponse, self.call("DetachUprobe", pb.DetachUprobeRequest(session_id=session_id)))
        return session_dict(r.session)


def session_dict(s: pb.DebugSession) -> dict[str, Any]:
    """What an assistant needs of a session (the whole message is mostly
    per-agent bookkeeping)."""
    return {
        "session_id": s.session_id, "service": s.service, "function": s.function, "status": s.status,
        "status_reason": s.status_reason, "started": render.clock(s.started_unix_ns),
        "ends": render.clock(s.ended_unix_ns or s.expires_unix_ns), "calls": s.total_calls or s.calls,
        "capture_args": s.config.capture_args, "capture_return": s.config.capture_return,
        "where": s.config.predicate, "pids": list(s.pids),
    }


def profile_dict(r: pb.ProfileCpuResponse) -> dict[str, Any]:
    """A profile as an assistant can read it: shares of the samples per
    function (self: running in it; total: it or its callees), and the
    heaviest stacks outermost first, each line `a;b;c COUNT`."""
    stacks = flame.folded(r.processes)
    samples = sum(p.samples for p in r.processes)
    functions = [{"function": f.function, "self_percent": round(100 * f.self_samples / samples, 1),
                  "total_percent": round(100 * f.total_samples / samples, 1)}
                 for f in flame.top_functions(stacks)[:PROFILE_FUNCTIONS]] if samples else []
    heaviest = sorted(stacks, key=lambda s: s[1], reverse=True)
    notes = []
    for p in r.processes:
        if p.frames_may_be_missing:
            notes.append(f"pid {p.pid}: frames may be missing (built without frame pointers)")
        if p.samples_without_stack:
            notes.append(f"pid {p.pid}: {p.samples_without_stack} samples without a stack (the stack table was full)")
    s = r.session
    return {
        "profile_id": s.session_id, "service": s.service, "status": s.status, "samples": samples,
        "processes": [{"pid": p.pid, "agent": p.agent_id, "executable": p.executable, "samples": p.samples}
                      for p in r.processes],
        "functions": functions,
        "stacks": flame.folded_lines(heaviest[:PROFILE_STACKS]), "stacks_left_out": max(0, len(heaviest) - PROFILE_STACKS),
        "notes": notes or None,
    }


def _call_dict(c: pb.Call) -> dict[str, Any]:
    d = render.to_dict(c)
    return {k: v for k, v in d.items() if v not in ("", None, [], {})}
