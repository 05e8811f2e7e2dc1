"""A colony session: one session id, one part per agent it was started on.

Pure functions of protobuf messages (no sockets, no database). Each part
keeps the agent's own DebugSession as last reported; the session's own
fields are merged from the parts: counts add, histograms add bucket by
bucket (so percentiles come from the merged histogram), the maximum is the
largest maximum."""

from __future__ import annotations

from collections import Counter

from coral.proto import coral_pb2 as pb

ACTIVE, FAILED = "active", "failed"


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
    or one that ended and whose last events are not pulled yet."""
    if not session.parts:
        return session.status == ACTIVE
    return any(not p.complete for p in session.parts)


def draining(session: pb.DebugSession) -> bool:
    """A part has ended but its last events are not in colony.duckdb yet."""
    return any(not p.complete and p.session.status != ACTIVE for p in session.parts)


def failures(session: pb.DebugSession) -> list[str]:
    """'agent-b: target exited' for each part that failed."""
    return [f"{p.agent_id}: {p.session.status_reason or 'failed'}" for p in session.parts if p.session.status == FAILED]


def merge(session: pb.DebugSession) -> None:
    """Recompute a colony session's own fields from its parts, in place."""
    parts = [p.session for p in session.parts]
    if not parts:
        return
    running = [s for s in parts if s.status == ACTIVE]
    ended_ok = [s for s in parts if s.status not in (ACTIVE, FAILED)]
    if running:
        session.status = ACTIVE
    elif ended_ok:
        session.status = ended_ok[0].status
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
    session.event_count = sum(s.event_count for s in parts)
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


def part_of(session: pb.DebugSession, agent_id: str) -> pb.SessionPart | None:
    return next((p for p in session.parts if p.agent_id == agent_id), None)
