"""A colony session: one session id, one part per agent it was started on.

Pure functions of protobuf messages (no sockets, no database). Each part
keeps the agent's own DebugSession as last reported; the session's own
fields are merged from the parts: counts add, histograms add bucket by
bucket (so percentiles come from the merged histogram), the maximum is the
largest maximum."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from coral.daemon import wire
from coral.daemon.errors import BadRequest, NotFound
from coral.proto import coral_pb2 as pb

ACTIVE, FAILED, LOST = "active", "failed", "lost"
LOST_GRACE_NS = 600 * 10**9  # a lost part waits this long past its expiry for its agent
M = TypeVar("M", bound=Message)
AgentReply = tuple[str, str, bytes]  # (agent id, status, body) as the agent answered
Refusal = tuple[str, str, str]  # (agent id, error code, message)


def reply_ok(status: str, body: bytes, kind: type[M]) -> M | None:
    """An agent's OK reply, parsed; None for an error or an unreadable body."""
    if status != wire.STATUS_OK:
        return None
    try:
        return wire.parse_body(kind, body)
    except BadRequest:
        return None


def reply_error(status: str, body: bytes) -> str:
    """The message of an agent's error reply."""
    try:
        return wire.parse_body(pb.Error, body).message or status
    except BadRequest:
        return f"{status} (unreadable error body)"


def started(request: pb.AttachUprobeRequest, replies: list[AgentReply], now_ns: int) -> tuple[pb.DebugSession, list[Refusal]]:
    """The colony session the agents' attach replies make: a part per agent,
    a failed one for each refusal; and the refusals."""
    session = pb.DebugSession(
        session_id=request.session_id, service=request.service, function=request.function, config=request.config
    )
    refusals: list[Refusal] = []
    for agent_id, status, body in replies:
        ok = reply_ok(status, body, pb.AttachUprobeResponse)
        if ok is not None:
            session.parts.add(agent_id=agent_id, session=ok.session)
            continue
        refusals.append((agent_id, status, reply_error(status, body)))
        session.parts.append(refused_part(request.session_id, request, agent_id, refusals[-1][2], now_ns))
    return session, refusals


def detached(session: pb.DebugSession, replies: list[AgentReply]) -> list[Refusal]:
    """Apply the agents' detach replies to the session's parts; returns the failures.
    A part whose agent no longer knows the session is done with."""
    failures: list[Refusal] = []
    for agent_id, status, body in replies:
        part = part_of(session, agent_id)
        ok = reply_ok(status, body, pb.DetachUprobeResponse)
        if part is not None and ok is not None:
            part.session.CopyFrom(ok.session)  # its last calls are pulled next
            continue
        failures.append((agent_id, status, reply_error(status, body)))
        if part is not None and status == NotFound.code:
            part.session.status, part.session.status_reason = FAILED, failures[-1][2]
            part.complete = True
    return failures


def refused_part(session_id: str, request: pb.AttachUprobeRequest, agent_id: str, why: str, now_ns: int) -> pb.SessionPart:
    """The part of an agent that refused the attach, or did not answer it."""
    return pb.SessionPart(
        agent_id=agent_id,
        complete=True,
        session=pb.DebugSession(
            session_id=session_id,
            service=request.service,
            function=request.function,
            agent_id=agent_id,
            started_unix_ns=now_ns,
            expires_unix_ns=now_ns,
            ended_unix_ns=now_ns,
            status=FAILED,
            status_reason=why,
            config=request.config,
        ),
    )


def is_open(session: pb.DebugSession) -> bool:
    """The colony still has something to receive for it: a part that runs,
    or one that ended and whose last calls are not pulled yet."""
    if not session.parts:
        return session.status == ACTIVE
    return any(not p.complete for p in session.parts)


def draining(session: pb.DebugSession) -> bool:
    """A part has ended but its last calls are not in colony.duckdb yet
    (a lost part is not: when its calls come is up to its agent)."""
    return any(not p.complete and p.session.status not in (ACTIVE, LOST) for p in session.parts)


def failures(session: pb.DebugSession) -> list[str]:
    """'agent-b: target exited' for each part that failed or is lost."""
    return [f"{p.agent_id}: {p.session.status_reason or p.session.status}" for p in session.parts
            if p.session.status in (FAILED, LOST)]


def merge(session: pb.DebugSession) -> None:
    """Recompute a colony session's own fields from its parts, in place."""
    if len(session.parts) == 1:
        merge_one(session)
    elif session.parts:
        merge_many(session)


def merge_one(session: pb.DebugSession) -> None:
    """merge() of a session with one part, the usual case: its fields are
    the part's, copied without the generic sums and Counters (7 us here,
    against 16 us through merge_many). The lists and maps, empty on both
    sides in most sessions, are copied only when either is not: a copy of
    an empty one cost 0.9 to 1.4 us, the test 0.2 us."""
    part = session.parts[0]
    s = part.session
    session.status = s.status
    session.agent_id = part.agent_id
    session.status_reason = s.status_reason
    session.started_unix_ns = s.started_unix_ns
    session.expires_unix_ns = s.expires_unix_ns
    session.ended_unix_ns = 0 if s.status == ACTIVE else s.ended_unix_ns
    session.pids[:] = s.pids
    if s.unanswered or session.unanswered:
        session.unanswered[:] = s.unanswered
    session.return_probe = s.return_probe
    session.stack_unwind = s.stack_unwind
    session.entry_instruction = s.entry_instruction
    session.probe_cost_ns = s.probe_cost_ns
    if s.inlined_into or session.inlined_into:
        session.inlined_into[:] = s.inlined_into
    session.calls = s.calls
    session.probes = s.probes
    session.total_calls = s.total_calls
    session.sum_duration_ns = s.sum_duration_ns
    session.max_duration_ns = s.max_duration_ns
    if s.lost or session.lost:
        session.lost.clear()
        session.lost.update(s.lost)
    if s.histogram or session.histogram:
        session.histogram.clear()
        session.histogram.update(s.histogram)
    if s.counts or session.counts:
        del session.counts[:]
        session.counts.extend(s.counts)


def merge_counts(parts: list[pb.DebugSession]) -> list[pb.CountRow]:
    """--count-by rows of every part: those with the same key (and flags) add up."""
    rows: dict[tuple[str, bool, bool, bool], pb.CountRow] = {}
    for s in parts:
        for r in s.counts:
            into = rows.setdefault((r.key, r.overflow, r.unread, r.cut),
                                   pb.CountRow(key=r.key, overflow=r.overflow, unread=r.unread, cut=r.cut))
            into.calls += r.calls
            into.errors += r.errors
            into.sum_duration_ns += r.sum_duration_ns
            into.max_duration_ns = max(into.max_duration_ns, r.max_duration_ns)
            for bucket, n in r.histogram.items():
                into.histogram[bucket] += n
    return sorted(rows.values(), key=lambda r: (r.overflow or r.unread, -r.calls, r.key, r.unread))


def merge_many(session: pb.DebugSession) -> None:
    """merge() in general: any number of parts."""
    parts = [p.session for p in session.parts]
    if not parts:
        return
    running = [s for s in parts if s.status == ACTIVE]
    ended_ok = [s for s in parts if s.status not in (ACTIVE, FAILED, LOST)]
    if running:
        session.status = ACTIVE
    elif ended_ok:
        session.status = ended_ok[0].status
    elif any(s.status == LOST for s in parts):
        session.status = LOST
    else:
        session.status = FAILED
    if len(parts) == 1:
        session.agent_id = session.parts[0].agent_id
        session.status_reason = parts[0].status_reason
    else:
        session.agent_id = ""
        session.status_reason = "; ".join(failures(session))
    session.started_unix_ns = min(s.started_unix_ns for s in parts)
    session.expires_unix_ns = max(s.expires_unix_ns for s in parts)
    session.ended_unix_ns = 0 if running else max(s.ended_unix_ns for s in parts)
    del session.pids[:]
    session.pids.extend(pid for s in parts for pid in s.pids)
    del session.unanswered[:]
    session.unanswered.extend(u for s in parts for u in s.unanswered)
    session.return_probe = ",".join(sorted({s.return_probe for s in parts if s.return_probe}))
    session.entry_instruction = ",".join(sorted({s.entry_instruction for s in parts if s.entry_instruction}))
    session.stack_unwind = ",".join(sorted({s.stack_unwind for s in parts if s.stack_unwind}))
    session.probe_cost_ns = max(s.probe_cost_ns for s in parts)
    del session.inlined_into[:]
    session.inlined_into.extend(max((list(s.inlined_into) for s in parts), key=len, default=[]))  # one binary, seen by each
    session.calls = sum(s.calls for s in parts)
    session.probes = sum(s.probes for s in parts)
    session.total_calls = sum(s.total_calls for s in parts)
    session.sum_duration_ns = sum(s.sum_duration_ns for s in parts)
    session.max_duration_ns = max(s.max_duration_ns for s in parts)
    lost: Counter[str] = Counter()
    histogram: Counter[int] = Counter()
    for s in parts:
        lost.update(s.lost)
        histogram.update(s.histogram)
    session.lost.clear()
    session.lost.update(lost)
    session.histogram.clear()
    session.histogram.update(histogram)
    del session.counts[:]
    session.counts.extend(merge_counts(parts))


def complete_parts_away(session: pb.DebugSession, reachable: Callable[[str], bool], now_ns: int, grace_ns: int) -> bool:
    """Parts whose agent is not connected and whose end is more than
    `grace_ns` past: ended on the agent's clock (`expired` if still shown
    active), nothing more to pull; a lost part waits LOST_GRACE_NS for its
    agent, then is `failed`. True if any part changed."""
    changed = False
    for part in session.parts:
        ends = max(part.session.expires_unix_ns, part.session.ended_unix_ns)
        lost = part.session.status == LOST
        if part.complete or reachable(part.agent_id) or now_ns < ends + (LOST_GRACE_NS if lost else grace_ns):
            continue
        if part.session.status == ACTIVE:
            part.session.status, part.session.ended_unix_ns = "expired", part.session.expires_unix_ns
        elif lost:
            part.session.status, part.session.ended_unix_ns = FAILED, now_ns
        part.complete = changed = True
    return changed


def part_of(session: pb.DebugSession, agent_id: str) -> pb.SessionPart | None:
    return next((p for p in session.parts if p.agent_id == agent_id), None)
