"""Routing and fan-out: which agents a client's request goes to, the
requests the colony has out to agents, and whose answer is whose. No
sockets, no database: the broker hands in decoded requests and frames and
gets back agents to send to, Outgoing messages and the requests answered."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from google.protobuf.message import Message

from coral.colonyd.agents import AgentDirectory, AgentState
from coral.colonyd.pulls import Pull
from coral.colonyd.sessions import ACTIVE
from coral.daemon import wire
from coral.daemon.errors import CoralError, NotFound, Unavailable
from coral.daemon.server import Peer
from coral.proto import coral_pb2 as pb


@dataclass(frozen=True)
class Outgoing:
    """A message for one socket: 'frontend' (a client) or 'backend' (an agent)."""

    socket: str
    frames: list[bytes]
    request_id: bytes = b""  # of a request to an agent: answered at once if it cannot be sent
    after_write: bool = True  # to a client: sent once the rows written before it are on disk
    after_batch: int | None = None  # instead: once this batch is (the one that holds the reply's audit row)


@dataclass
class Gather:
    """One client request sent on to one agent or several; answered when
    every agent asked has replied (an agent lost or silent counts as an
    UNAVAILABLE reply)."""

    client: tuple[bytes, ...]
    client_request_id: bytes
    method: str
    request: Message
    peer: Peer
    agents: list[str]  # agent ids asked, in order
    replies: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # agent id -> (status, body)

    @property
    def done(self) -> bool:
        return len(self.replies) == len(self.agents)


@dataclass
class Pending:
    """A request the colony sent to an agent."""

    agent: bytes
    agent_id: str
    method: str
    request: Message
    deadline: float
    gather: Gather | None  # None: the colony's own request (a pull, or a detach a lost part missed)
    pull: Pull | None = None  # a pull: which


class Router:
    """The requests out to agents, by their unguessable request id: only the
    link a request went to may answer it."""

    def __init__(self, agents: AgentDirectory, request_timeout: float) -> None:
        self.agents = agents
        self.request_timeout = request_timeout
        self.pending: dict[bytes, Pending] = {}

    # ----------------------------------------------------------- where to

    def targets(self, request: Message, session_of: Callable[[str], pb.DebugSession]) -> list[AgentState]:
        """The agents a client's AttachUprobe, ProfileCpu, ListFunctions or
        DetachUprobe goes to. An attach or a profile is given its session id
        here, once it can be routed."""
        if isinstance(request, pb.AttachUprobeRequest | pb.ListFunctionsRequest | pb.ProfileCpuRequest):
            agents = self.agents.for_service(request.service)
            if not agents:
                known = sorted({s.service for s in self.agents.services()})
                raise NotFound(
                    f"service {request.service!r} not found"
                    + (f" (known services: {', '.join(known)})" if known else " (no services registered)"),
                    known,
                )
            if isinstance(request, pb.ListFunctionsRequest):
                return agents[:1]
            if request.agent_id:
                agents = self._narrow(request.service, request.agent_id, agents)
            prefix = "prof" if isinstance(request, pb.ProfileCpuRequest) else "dbg"
            request.session_id = f"{prefix}-{secrets.token_hex(6)}"
            return agents
        if isinstance(request, pb.DetachUprobeRequest):
            session = session_of(request.session_id)
            running = [p.agent_id for p in session.parts if p.session.status == ACTIVE and not p.complete]
            reachable = [a for a in map(self.agents.by_id, running) if a is not None]
            if not reachable:
                raise Unavailable(f"agent {', '.join(map(repr, running))} of session {session.session_id} is not connected")
            return reachable
        raise CoralError(f"{type(request).__name__} is not routed")  # not reached: the broker routes only these

    def _narrow(self, service: str, agent_id: str, agents: list[AgentState]) -> list[AgentState]:
        """--agent: that agent only, with the known ones named if it is not one."""
        chosen = [a for a in agents if a.agent_id == agent_id]
        if chosen:
            return chosen
        running = sorted(a.agent_id for a in agents)
        if self.agents.by_id(agent_id) is None:
            known = sorted(a.agent_id for a in self.agents)
            raise NotFound(f"no agent {agent_id!r} is connected (known agents: {', '.join(known)})", known)
        raise NotFound(f"service {service!r} does not run on agent {agent_id!r} (it runs on: {', '.join(running)})", running)

    # ------------------------------------------------------ out and back

    def send(self, agent: AgentState, method: str, request: Message, now: float, gather: Gather | None,
             pull: Pull | None = None, held: float = 0.0) -> Outgoing:
        """A request to an agent. `held`: seconds the agent may hold it before answering (a pull's wait)."""
        request_id = secrets.token_hex(8).encode()  # unguessable: only its agent can answer it
        self.pending[request_id] = Pending(agent.identity, agent.agent_id, method, request,
                                           now + held + self.request_timeout, gather, pull)
        agent.last_sent = now
        return Outgoing("backend", wire.encode_request(request_id, method, request, (agent.identity,)), request_id)

    def answered(self, frame: wire.Frame) -> tuple[Pending | None, str]:
        """The request an agent's REPLY answers, taken off the table; or None
        and why: "late" (unknown, or already answered) or "foreign" (it came
        from another link than the one the request went to)."""
        pending = self.pending.get(frame.request_id)
        if pending is None:
            return None, "late"
        if frame.envelope[:1] != (pending.agent,):
            return None, "foreign"
        del self.pending[frame.request_id]
        return pending, ""

    def foreign_sender(self, frame: wire.Frame) -> tuple[str, str]:
        """Who sent a foreign reply, and which agent the request went to."""
        pending = self.pending[frame.request_id]
        sender = self.agents.get(frame.envelope[0]) if frame.envelope else None
        who = f"{sender.owner} on agent {sender.agent_id}" if sender is not None else "unknown"
        return who, pending.agent_id

    def take(self, request_id: bytes) -> Pending | None:
        """A request that could not be sent, off the table."""
        return self.pending.pop(request_id, None)

    def on_link(self, identity: bytes) -> list[Pending]:
        """Every request out on one link, off the table (the link is gone or superseded)."""
        taken = [p for p in self.pending.values() if p.agent == identity]
        self.pending = {rid: p for rid, p in self.pending.items() if p.agent != identity}
        return taken

    def overdue(self, now: float) -> list[Pending]:
        """The requests past their deadline, off the table."""
        due = [p for p in self.pending.values() if now >= p.deadline]
        self.pending = {rid: p for rid, p in self.pending.items() if now < p.deadline}
        return due

    def detach_out(self, session_id: str, identity: bytes) -> bool:
        """A kept detach of this session already on its way on this link."""
        return any(p.gather is None and p.method == "DetachUprobe" and p.agent == identity
                   and cast(pb.DetachUprobeRequest, p.request).session_id == session_id for p in self.pending.values())
