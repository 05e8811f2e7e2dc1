"""Profiles through the colony (ProfileCpu, docs/protocol.md "Profiles"):
a session of kind "profile" with a part per agent, saved when it starts
(listed as active) and when every agent has answered. Nothing is pulled:
each part is complete from the start, the stacks come with the answer."""

from __future__ import annotations

from coral.colonyd.sessions import ACTIVE, FAILED, AgentReply, Refusal, merge, reply_error, reply_ok
from coral.proto import coral_pb2 as pb


def begun(request: pb.ProfileCpuRequest, agent_ids: list[str], duration_ms: int, owner: str,
          now_ns: int) -> pb.DebugSession:
    """The session as it is listed while the agents sample."""
    session = pb.DebugSession(session_id=request.session_id, service=request.service, cpu_profile=True, owner=owner)
    for agent_id in agent_ids:
        session.parts.add(agent_id=agent_id, complete=True, session=pb.DebugSession(
            session_id=request.session_id, service=request.service, cpu_profile=True, agent_id=agent_id, status=ACTIVE,
            started_unix_ns=now_ns, expires_unix_ns=now_ns + duration_ms * 1_000_000, owner=owner))
    merge(session)
    return session


def ended(session: pb.DebugSession, replies: list[AgentReply],
          now_ns: int) -> tuple[pb.ProfileCpuResponse, list[Refusal]]:
    """Each agent's answer into its part; the processes of all, and the refusals."""
    response = pb.ProfileCpuResponse()
    refusals: list[Refusal] = []
    by_agent = {p.agent_id: p for p in session.parts}
    for agent_id, status, body in replies:
        part = by_agent.get(agent_id)
        if part is None:
            continue
        ok = reply_ok(status, body, pb.ProfileCpuResponse)
        if ok is not None:
            part.session.CopyFrom(ok.session)
            part.session.cpu_profile = True
            response.processes.extend(ok.processes)
            continue
        refusals.append((agent_id, status, reply_error(status, body)))
        part.session.status, part.session.status_reason = FAILED, refusals[-1][2]
        part.session.ended_unix_ns = now_ns
    merge(session)
    response.session.CopyFrom(session)
    return response, refusals
