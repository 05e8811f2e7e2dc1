"""Routing and session bookkeeping for the colony, without sockets.

The broker decides; coral/colonyd/main.py moves bytes. Frontend requests
come in as (client, request id, method, body, peer); the broker answers
locally, or returns an ``Outgoing`` for an agent, and relates the agent's
reply back to the client when it arrives."""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from dataclasses import dataclass, field

from google.protobuf.message import Message

from coral import __version__
from coral.colonyd.store import AuditRow, ColonyStore
from coral.daemon import access, wire
from coral.daemon.config import Config
from coral.daemon.errors import BadRequest, CoralError, NotFound, Unavailable
from coral.daemon.liveness import is_dead
from coral.daemon.methods import COLONY_FRONTEND_METHODS, METHODS
from coral.daemon.server import Peer
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)


class AgentAway(Exception):
    """The agent owning a session is not connected."""

    def __init__(self, session: pb.DebugSession) -> None:
        super().__init__(session.session_id)
        self.session = session


@dataclass
class AgentState:
    identity: bytes
    hello: pb.AgentHello
    last_heard: float
    last_sent: float = 0.0

    @property
    def agent_id(self) -> str:
        return self.hello.agent_id


@dataclass
class Pending:
    client: tuple[bytes, ...]
    client_request_id: bytes
    method: str
    request: Message
    peer: Peer
    agent: bytes
    deadline: float


@dataclass(frozen=True)
class Outgoing:
    """A message for one socket: 'frontend' (a client) or 'backend' (an agent)."""

    socket: str
    frames: list[bytes]


@dataclass
class Broker:
    config: Config
    store: ColonyStore
    agents: dict[bytes, AgentState] = field(default_factory=dict)
    pending: dict[bytes, Pending] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _audit_rows: list[AuditRow] = field(default_factory=list)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # ------------------------------------------------------------ agents

    def agent_ready(self, identity: bytes, hello: pb.AgentHello, now: float) -> None:
        for other in [i for i, a in self.agents.items() if a.agent_id == hello.agent_id and i != identity]:
            del self.agents[other]  # the same agent reconnected on a new link
        if identity not in self.agents:
            log.info("agent %s ready (%d services)", hello.agent_id, len(hello.services))
        self.agents[identity] = AgentState(identity, hello, now)

    def agent_heard(self, identity: bytes, now: float) -> bool:
        agent = self.agents.get(identity)
        if agent is None:
            return False
        agent.last_heard = now
        return True

    def agent_gone(self, identity: bytes, why: str) -> list[Outgoing]:
        """Forget an agent; its pending requests are answered now, not at their timeout."""
        agent = self.agents.pop(identity, None)
        if agent is None:
            return []
        log.warning("agent %s lost (%s)", agent.agent_id, why)
        for session in self.store.active_sessions_of(agent.agent_id):
            # Its probes end with it (the kernel drops them) or at expiry on its own clock.
            session.status, session.status_reason, session.ended_unix_ns = "failed", "agent lost", time.time_ns()
            self.store.save_session(session)
        out = []
        for request_id, p in list(self.pending.items()):
            if p.agent == identity:
                del self.pending[request_id]
                err = Unavailable(f"agent {agent.agent_id} was lost ({why}) before answering {p.method}")
                self._audit(p.peer, p.method, p.request, err.code, err.message)
                out.append(Outgoing("frontend", wire.encode_error(p.client_request_id, err, p.client)))
        return out

    def agents_for(self, service: str) -> list[AgentState]:
        return [a for a in self.agents.values() if any(s.service == service for s in a.hello.services)]

    def services(self) -> list[pb.ServiceInstance]:
        return [s for a in self.agents.values() for s in a.hello.services]

    # ---------------------------------------------------------- requests

    def handle_request(self, frame: wire.Frame, peer: Peer, now: float) -> list[Outgoing]:
        method = frame.name
        request: Message | None = None
        try:
            if method not in COLONY_FRONTEND_METHODS:
                raise CoralError(f"method {method!r} is not served by the colony")
            request = wire.parse_body(METHODS[method].request, frame.body)
            access.check(self.config.access, peer, method, request)
            local = self._answer_locally(method, request)
            if local is not None:
                self._audit(peer, method, request, "OK", "")
                return [Outgoing("frontend", wire.encode_reply(frame.request_id, local, frame.envelope))]
            try:
                agent = self._route(method, request)
            except AgentAway as away:
                kept = self._from_store(request, away.session)
                self._audit(peer, method, request, "OK", "served from the colony's copy: the agent is not connected")
                return [Outgoing("frontend", wire.encode_reply(frame.request_id, kept, frame.envelope))]
        except CoralError as err:
            if method not in COLONY_FRONTEND_METHODS:
                err.code = "UNKNOWN_METHOD"
            self._audit(peer, method, request, err.code, err.message)
            self.count(f"errors.{err.code}")
            return [Outgoing("frontend", wire.encode_error(frame.request_id, err, frame.envelope))]
        agent_request_id = f"c{next(self._ids)}".encode()
        self.pending[agent_request_id] = Pending(
            frame.envelope, frame.request_id, method, request, peer, agent.identity, now + self.config.limits.request_timeout
        )
        agent.last_sent = now
        return [Outgoing("backend", wire.encode_request(agent_request_id, method, request, (agent.identity,)))]

    def _answer_locally(self, method: str, request: Message) -> Message | None:
        if method == "Ping":
            return pb.PingResponse(
                daemon="coral-colonyd",
                version=__version__,
                pid=os.getpid(),
                counters={**self.counters, "agents": len(self.agents), **self.store.counters()},
            )
        if method == "ListServices":
            return pb.ListServicesResponse(services=self.services())
        if isinstance(request, pb.ListAuditRequest):
            rows, truncated = self.store.audit_rows(request.since_unix_ns, min(request.max_entries or 1000, 10_000))
            return pb.ListAuditResponse(truncated=truncated, entries=[
                pb.AuditEntry(timestamp_unix_ns=r.ts_ns, who=r.who, peer_pid=r.peer_pid, method=r.method, service=r.service,
                              function=r.function, session_id=r.session_id, outcome=r.outcome, detail=r.detail)
                for r in rows])
        if isinstance(request, pb.ListDebugSessionsRequest):
            return pb.ListDebugSessionsResponse(sessions=self.store.sessions(request.service, request.active_only))
        return None

    def _route(self, method: str, request: Message) -> AgentState:
        if isinstance(request, pb.AttachUprobeRequest):
            self.config.sessions.session_duration_ms(request.duration_ms)  # refuse early, with the agent's words
        if isinstance(request, pb.AttachUprobeRequest | pb.ListFunctionsRequest):
            agents = self.agents_for(request.service)
            if not agents:
                known = sorted({s.service for s in self.services()})
                raise NotFound(
                    f"service {request.service!r} not found"
                    + (f" (known services: {', '.join(known)})" if known else " (no services registered)"),
                    known,
                )
            if isinstance(request, pb.AttachUprobeRequest):
                request.session_id = f"dbg-{secrets.token_hex(6)}"  # only once it can be routed
            return agents[0]
        session_id = getattr(request, "session_id", "")
        session = self.store.session(session_id)
        if session is None:
            raise NotFound(f"no session {session_id!r}")
        for agent in self.agents.values():
            if agent.agent_id == session.agent_id:
                return agent
        raise AgentAway(session)

    def _from_store(self, request: Message, session: pb.DebugSession) -> Message:
        """The colony's copy of a session whose agent is away: its events as
        they passed through the colony (the agent's cursor counts calls: an
        event's seq is 2 x call seq, +1 for the return)."""
        if isinstance(request, pb.QueryUprobeEventsRequest):
            limit = max(2, min(request.max_events or 500, 5000) // 2 * 2)  # whole calls: entry and return together
            events = self.store.events(session.session_id, 2 * request.cursor + 1 if request.cursor else -1, limit)
            return pb.QueryUprobeEventsResponse(events=events, next_cursor=events[-1].seq // 2 if events else request.cursor,
                                                has_more=len(events) == limit, session=session)
        raise Unavailable(f"agent {session.agent_id!r} of session {session.session_id} is not connected")

    def handle_reply(self, frame: wire.Frame, now: float) -> list[Outgoing]:
        pending = self.pending.pop(frame.request_id, None)
        if pending is None:
            self.count("late_replies")
            return []
        detail = ""
        if frame.name == wire.STATUS_OK:
            try:
                self._record(pending, wire.parse_body(METHODS[pending.method].response, frame.body))
            except BadRequest as exc:
                detail = f"unreadable agent reply: {exc.message}"
        else:
            try:
                detail = wire.parse_body(pb.Error, frame.body).message
            except BadRequest:
                detail = "unreadable error body"
        self._audit(pending.peer, pending.method, pending.request, frame.name, detail)
        return [Outgoing("frontend", wire.encode_raw_reply(pending.client_request_id, frame.name, frame.body, pending.client))]

    def _record(self, pending: Pending, response: Message) -> None:
        """Keep the colony's view of sessions current from agents' replies."""
        session = getattr(response, "session", None)
        if isinstance(session, pb.DebugSession) and session.session_id:
            self.store.save_session(session)
        if isinstance(response, pb.QueryUprobeEventsResponse):
            self.store.save_events(list(response.events))

    # -------------------------------------------------------------- time

    def tick(self, now: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        for request_id, p in list(self.pending.items()):
            if now >= p.deadline:
                del self.pending[request_id]
                err = Unavailable(f"the agent did not answer {p.method} within {self.config.limits.request_timeout:g}s")
                self._audit(p.peer, p.method, p.request, err.code, err.message)
                out.append(Outgoing("frontend", wire.encode_error(p.client_request_id, err, p.client)))
        interval, liveness = self.config.colony.heartbeat_interval, self.config.colony.heartbeat_liveness
        for identity, agent in list(self.agents.items()):
            if is_dead(agent.last_heard, now, interval, liveness):
                out.extend(self.agent_gone(identity, f"silent for {interval * liveness:g}s"))
            elif now - agent.last_sent >= interval:
                agent.last_sent = now
                out.append(Outgoing("backend", wire.encode_signal(wire.Command.HEARTBEAT, (identity,))))
        self.store.retry()
        for session in self.store.due_for_expiry(time.time_ns()):
            # The agent ends it on its own clock; the colony's view follows.
            session.status = "expired"
            session.ended_unix_ns = session.expires_unix_ns
            self.store.save_session(session)
        return out

    # ------------------------------------------------------------- audit

    def flush_audit(self) -> None:
        """Write the audit rows of the messages handled so far; the loop calls
        this before it sends their replies, so no answer precedes its row."""
        rows, self._audit_rows = self._audit_rows, []
        self.store.audit(rows)

    def _audit(self, peer: Peer, method: str, request: Message | None, outcome: str, detail: str) -> None:
        self._audit_rows.append(
            AuditRow(
                ts_ns=time.time_ns(),
                who=peer.who,
                peer_pid=peer.pid or 0,
                method=method[:64],
                service=str(getattr(request, "service", "")),
                function=str(getattr(request, "function", "")),
                session_id=str(getattr(request, "session_id", "")),
                outcome=outcome,
                detail=detail[:500],
            )
        )

    def record_agent_audit(self, e: pb.AuditEntry) -> None:
        """A request an agent served on its local socket (its `who` names the agent)."""
        self._audit_rows.append(AuditRow(e.timestamp_unix_ns, e.who[:300], e.peer_pid, e.method[:64], e.service[:200],
                                         e.function[:200], e.session_id[:64], e.outcome[:64], e.detail[:500]))

    def audit_bad_frame(self, peer: Peer, reason: str) -> None:
        self.count("bad_frames")
        self._audit(peer, "?", None, "BAD_REQUEST", reason)
