"""The colony's decisions, without sockets: coral/colonyd/main.py moves
bytes. A newcomer reads it as parts, each a plain class fed decoded
messages:

- the agent directory (coral/colonyd/agents.py): who is connected, and runs what;
- routing and fan-out (coral/colonyd/routing.py): which agents a request
  goes to, what is out to them, and whose answer is whose;
- sessions (coral/colonyd/sessions.py: one session, a part per agent,
  merged) and their pulls (coral/colonyd/pulls.py);
- streams (coral/colonyd/streams.py): followers, and questions that wait
  for fresh pulls;
- the audit log (coral/colonyd/audit.py).

A client's request goes through the shared allow-list (the same as the
agent's), whose handlers return a decision: answer it here, route it to
agents, wait for fresh pulls, or hold it for a follower. The broker carries
the decision out and answers the client once every agent asked has
replied, been lost, or timed out. It pulls the calls of open sessions on
its own, and purges sessions past their retention."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import cast

from google.protobuf.message import Message

from coral import __version__
from coral.colonyd import profiles as colony_profiles
from coral.colonyd import sessions as colony_sessions
from coral.colonyd.agents import AgentDirectory, AgentState
from coral.colonyd.audit import AuditLog
from coral.colonyd.pulls import PULL_PAGE, PartKey, Pull, PullSchedule
from coral.colonyd.routing import Gather, Outgoing, Pending, Router
from coral.colonyd.sessions import ACTIVE, FAILED, LOST, is_open, part_of, reply_error, reply_ok
from coral.colonyd.store import ColonyStore
from coral.colonyd.streams import FRESH_WAIT, FreshQuery, Streams, Ticket
from coral.daemon import access, profiling, wire
from coral.daemon.config import Config
from coral.daemon.errors import CoralError, Internal, NotFound, Unavailable, error_from_code
from coral.daemon.liveness import is_dead
from coral.daemon.methods import COLONY_FRONTEND_METHODS
from coral.daemon.retention import PurgeSchedule, Retention, parse_age, purge_once
from coral.daemon.server import AllowList, Peer
from coral.daemon.waiters import Waiters
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)

__all__ = ["Broker", "Outgoing", "Ticket"]

HEARTBEATS_PER_TICK = 64  # at least; a quarter of the agents when there are more


@dataclass(frozen=True)
class Answer:
    """Answered by the colony itself."""

    response: Message


@dataclass(frozen=True)
class Route:
    """Sent on to these agents; answered when each has replied."""

    agents: list[AgentState]


@dataclass(frozen=True)
class Profile:
    """Sent on to these agents, each of which answers when the profile has ended."""

    agents: list[AgentState]
    held: float  # seconds an agent may take: the duration and the time to load its program


@dataclass(frozen=True)
class AwaitPulls:
    """A question about a running session: answered once these parts were pulled since it came."""

    parts: list[PartKey]


@dataclass(frozen=True)
class Hold:
    """A follower's question: answered at once if there is news, else held."""


Decision = Answer | Route | Profile | AwaitPulls | Hold


@dataclass
class Broker:
    config: Config
    store: ColonyStore
    counters: dict[str, int] = field(default_factory=dict)
    open: dict[str, pb.DebugSession] = field(default_factory=dict)  # sessions still pulled from their agents
    replies_since_pull: bool = False  # an agent answered: a part may have ended or have more to pull
    ended: dict[str, int] = field(default_factory=dict)  # sessions no longer open, by status (this run)
    streams: Streams = field(default_factory=Streams)

    def __post_init__(self) -> None:
        self.audit = AuditLog(self.store)
        self.agents = AgentDirectory(self.config.colony.agent_users, self._count_n)
        self.router = Router(self.agents, self.config.limits.request_timeout)
        self.methods: AllowList[Decision] = AllowList(
            {
                "Ping": self._ping,
                "ListServices": self._list_services,
                "ListAudit": self._list_audit,
                "ListDebugSessions": lambda r, p: Answer(
                    pb.ListDebugSessionsResponse(sessions=self.store.sessions(r.service, r.active_only))),
                "QueryUprobeEvents": self._query,
                "AttachUprobe": self._attach,
                "DetachUprobe": self._detach,
                "ProfileCpu": self._profile,
                "ListFunctions": lambda r, p: Route(self.router.targets(r, self._session)),
            },
            COLONY_FRONTEND_METHODS,
            lambda method, request, peer: access.check(self.config.access, peer, method, request),
            where="by the colony",
        )
        self.open = {s.session_id: s for s in self.store.open_sessions()}
        self.pulls = PullSchedule(self.config.colony.pull_interval)
        self.retention = Retention(parse_age(self.config.colony.retention))
        self.purges = PurgeSchedule(self.config.colony.purge_interval)

    @property
    def pending(self) -> dict[bytes, Pending]:
        return self.router.pending

    @property
    def followers(self) -> Waiters:
        return self.streams.followers

    def count(self, name: str) -> None:
        self._count_n(name, 1)

    def _count_n(self, name: str, n: int) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # ------------------------------------------------------------ agents

    def agent_ready(self, identity: bytes, hello: pb.AgentHello, peer: Peer, now: float) -> list[Outgoing]:
        """READY on a link: accepted only from an identity that may speak for
        that agent id; a new link of the same identity supersedes the old,
        and what was pending on the old one is sent again or answered."""
        state, superseded, why = self.agents.announce(identity, hello, peer, now)
        if state is None:
            self.count("agents.refused")
            log.warning("refused READY: %s", why)
            self.audit.request(peer, "READY", None, "PERMISSION_DENIED", why)
            return []
        out = self._detach_when_back(state, now)
        if superseded is None:
            return out
        for p in self.router.on_link(superseded.identity):
            if p.pull is not None:  # a pull sent on the old link: pull again on the new one
                self.pulls.answered(p.pull, ok=True, more=not p.pull.wait, now=now)
            elif p.gather is not None:
                err = Unavailable(f"agent {p.agent_id} reconnected before answering {p.method}")
                out.extend(self._deliver(p, err.code, _error_body(err)))
        return out

    def _detach_when_back(self, agent: AgentState, now: float) -> list[Outgoing]:
        """The detaches its lost parts missed (kept in each part's detach_by,
        saved with the session), sent by the colony itself."""
        out = []
        for session in self.open.values():
            part = part_of(session, agent.agent_id)
            if part is None or not part.detach_by or part.complete or part.session.status != LOST \
                    or self.router.detach_out(session.session_id, agent.identity):  # not twice on one link
                continue
            request = pb.DetachUprobeRequest(session_id=session.session_id)
            self.audit.row(part.detach_by, 0, "DetachUprobe", "OK", f"sent to agent {agent.agent_id} when it came back",
                           session.service, session.function, session.session_id, always=True)
            out.append(self._send(agent, "DetachUprobe", request, now, None))
        return out

    def agent_services(self, identity: bytes, changed: pb.ServicesChanged, now: float) -> bool:
        """SERVICES from a link: False if the link is not a known agent."""
        return self.agents.services_changed(identity, changed, now)

    def agent_heard(self, identity: bytes, now: float) -> bool:
        return self.agents.heard(identity, now) is not None

    def agent_gone(self, identity: bytes, why: str) -> list[Outgoing]:
        """Forget an agent; its pending requests are answered now, not at their timeout."""
        agent = self.agents.remove(identity)
        if agent is None:
            return []
        log.warning("agent %s lost (%s)", agent.agent_id, why)
        for session in list(self.open.values()):
            part = part_of(session, agent.agent_id)
            if part is None or part.complete:
                continue
            if part.session.status == ACTIVE:
                # Not final: when the agent is back, the part is pulled from its cursor (docs/protocol.md).
                part.session.status, part.session.status_reason = LOST, "agent lost"
                self._changed(session)
        out = []
        for p in self.router.on_link(identity):
            err = Unavailable(f"agent {agent.agent_id} was lost ({why}) before answering {p.method}")
            out.extend(self._deliver(p, err.code, _error_body(err)))
        return out

    def agent_by_id(self, agent_id: str) -> AgentState | None:
        return self.agents.by_id(agent_id)

    def agents_for(self, service: str) -> list[AgentState]:
        return self.agents.for_service(service)

    def services(self) -> list[pb.ServiceInstance]:
        return self.agents.services()

    # ---------------------------------------------------------- requests

    def handle_request(self, frame: wire.Frame, peer: Peer, now: float) -> list[Outgoing]:
        """A client's request: through the allow-list to its handler's decision, carried out."""
        method = frame.name
        self.count("requests")
        request: Message | None = None
        try:
            request = self.methods.parse(method, frame.body)
            self.methods.check(method, request, peer)  # a refusal's audit row names what was asked
            decision = self.methods.handlers[method](request, peer)
            if isinstance(decision, Hold):
                return self._follow(frame, cast(pb.QueryUprobeEventsRequest, request), peer, now)
            if isinstance(decision, AwaitPulls):
                self.streams.ask(FreshQuery(frame.envelope, frame.request_id, cast(pb.QueryUprobeEventsRequest, request),
                                            peer, now + FRESH_WAIT, set(decision.parts)))
                for key in decision.parts:
                    self.pulls.hurry(key)
                return self._pull(now, everything=False)
            if isinstance(decision, Answer):
                counted = self.audit.answered_read(peer, method, request)  # a read with no values: no row of its own to wait for
                if not counted:
                    self.audit.request(peer, method, request, "OK", "")
                return [Outgoing("frontend", wire.encode_reply(frame.request_id, decision.response, frame.envelope),
                                 after_write=not counted)]
        except CoralError as err:
            self.audit.request(peer, method, request, err.code, err.message)
            self.count(f"errors.{err.code}")
            return [Outgoing("frontend", wire.encode_error(frame.request_id, err, frame.envelope))]
        gather = Gather(frame.envelope, frame.request_id, method, request, peer, [a.agent_id for a in decision.agents])
        held = decision.held if isinstance(decision, Profile) else 0.0
        return [self._send(agent, method, request, now, gather, held=held) for agent in decision.agents]

    def _send(self, agent: AgentState, method: str, request: Message, now: float, gather: Gather | None,
              pull: Pull | None = None, held: float = 0.0) -> Outgoing:
        return self.router.send(agent, method, request, now, gather, pull, held)

    def not_sent(self, agent_request_id: bytes, why: str) -> list[Outgoing]:
        """A request that could not be sent to its agent is answered now
        (UNAVAILABLE), not at its timeout."""
        pending = self.router.take(agent_request_id)
        if pending is None:
            return []
        err = Unavailable(f"could not send {pending.method} to agent {pending.agent_id}: {why}")
        return self._deliver(pending, err.code, _error_body(err))

    # The handlers: a decoded request in, a decision out.

    def _ping(self, request: pb.PingRequest, peer: Peer) -> Decision:
        return Answer(pb.PingResponse(daemon="coral-colonyd", version=__version__, pid=os.getpid(),
                                      counters=self.counters_now()))

    def counters_now(self) -> dict[str, int]:
        """What `coralctl ping` shows (and /metrics, coral/colonyd/metrics.py)."""
        return {**self.counters, "agents": len(self.agents), "sessions.open": len(self.open),
                **self.followers.counters(), **self.methods.counters,
                "audit.folded": self.audit.folder.total_folded, **self.store.counters()}

    def _list_services(self, request: pb.ListServicesRequest, peer: Peer) -> Decision:
        return Answer(self.agents.services_page(request.after, self.config.limits.max_message_bytes // 4))

    def _list_audit(self, request: pb.ListAuditRequest, peer: Peer) -> Decision:
        rows, truncated = self.store.audit_rows(request.since_unix_ns, min(request.max_entries or 1000, 10_000))
        return Answer(pb.ListAuditResponse(
            truncated=truncated,
            entries=[
                pb.AuditEntry(timestamp_unix_ns=r.ts_ns, who=r.who, peer_pid=r.peer_pid, method=r.method,
                              service=r.service, function=r.function, session_id=r.session_id, outcome=r.outcome,
                              detail=r.detail, client_label=r.client_label)
                for r in rows
            ],
        ))

    def _query(self, request: pb.QueryUprobeEventsRequest, peer: Peer) -> Decision:
        if request.wait_ms:
            return Hold()
        running = self._running_parts(request.session_id)
        return AwaitPulls(running) if running else Answer(self._calls(request, peer))

    def _attach(self, request: pb.AttachUprobeRequest, peer: Peer) -> Decision:
        self.config.sessions.session_duration_ms(request.duration_ms)  # refuse early, with the agent's words
        return Route(self.router.targets(request, self._session))

    def _profile(self, request: pb.ProfileCpuRequest, peer: Peer) -> Decision:
        """Checked here with the agent's words, routed to every agent running
        the service, and listed as an active session until they answer."""
        duration_ms = profiling.duration_ms(self.config.sessions, request.duration_ms)
        profiling.frequency(request.frequency_hz)
        agents = self.router.targets(request, self._session)
        session = colony_profiles.begun(request, [a.agent_id for a in agents], duration_ms, peer.who, time.time_ns())
        self.store.save_session(session, created=True)
        return Profile(agents, duration_ms / 1000 + profiling.LOAD_ALLOWANCE_S)

    def _profiled(self, gather: Gather) -> list[Outgoing]:
        request = cast(pb.ProfileCpuRequest, gather.request)
        session = self.store.session(request.session_id) or colony_profiles.begun(
            request, gather.agents, 0, gather.peer.who, time.time_ns())
        response, refusals = colony_profiles.ended(session, [(a, *gather.replies[a]) for a in gather.agents],
                                                   time.time_ns())
        self.store.save_session(response.session)
        if len(refusals) == len(gather.agents):
            return self._refuse(gather, refusals)
        detail = "; ".join(f"agent {a} refused: {m}" for a, _, m in refusals)
        return self._reply(gather, response, detail)

    def _detach(self, request: pb.DetachUprobeRequest, peer: Peer) -> Decision:
        session = self._session(request.session_id)
        lost = [p for p in session.parts if p.session.status == LOST and not p.complete]
        for p in lost:
            p.detach_by = peer.who  # sent to its agent when it is back, even after a colony restart
        if lost:
            self._changed(session)
        if not any(p.session.status == ACTIVE and not p.complete for p in session.parts):
            return Answer(pb.DetachUprobeResponse(session=session))  # already ended: report it as it ended
        return Route(self.router.targets(request, self._session))

    def _running_parts(self, session_id: str) -> list[PartKey]:
        """Parts of an open session still recording, on a connected agent."""
        session = self.open.get(session_id)
        if session is None:
            return []
        return [
            (session_id, p.agent_id)
            for p in session.parts
            if p.session.status == ACTIVE and not p.complete and self.agent_by_id(p.agent_id) is not None
        ]

    def _answer_fresh(self, now: float) -> list[Outgoing]:
        """Answer the waiting queries whose pulls are back (or whose wait is over)."""
        out = []
        for q in self.streams.due(now, lambda session_id: set(self._running_parts(session_id))):
            try:
                response = self._calls(q.request, q.peer)
            except CoralError as err:  # purged meanwhile
                self.audit.request(q.peer, "QueryUprobeEvents", q.request, err.code, err.message)
                out.append(Outgoing("frontend", wire.encode_error(q.client_request_id, err, q.client)))
                continue
            late = "" if now < q.deadline else "answered before its pulls"
            self.audit.request(q.peer, "QueryUprobeEvents", q.request, "OK", late)
            out.append(Outgoing("frontend", wire.encode_reply(q.client_request_id, response, q.client)))
        return out

    def _follow(self, frame: wire.Frame, request: pb.QueryUprobeEventsRequest, peer: Peer, now: float) -> list[Outgoing]:
        """A follower's question: answered at once if there is anything after
        its cursor or the session is over, else when it has news or the wait is up."""
        response = self._calls(request, peer)
        if response.calls or not is_open(response.session):
            self.audit.request(peer, "QueryUprobeEvents", request, "OK", "")
            return [Outgoing("frontend", wire.encode_reply(frame.request_id, response, frame.envelope))]
        ticket: Ticket | None = None

        def answer() -> None:
            try:
                response = self._calls(request, peer)
            except Exception as exc:  # purged meanwhile, or a bug: this question is answered, the loop goes on
                err = exc if isinstance(exc, CoralError) else Internal("internal error; see the daemon's log")
                if not isinstance(exc, CoralError):
                    log.error("answering a held QueryUprobeEvents failed", exc_info=exc)
                self.audit.request(peer, "QueryUprobeEvents", request, err.code, err.message)
                self.streams.woken.append(Outgoing("frontend", wire.encode_error(frame.request_id, err, frame.envelope)))
                return
            self.streams.woken.append(Outgoing("frontend", wire.encode_reply(frame.request_id, response, frame.envelope),
                                               after_batch=ticket.batch if ticket else None))

        ticket = self.streams.hold(request.session_id, request.wait_ms, now, answer)
        if ticket is None:
            self.count("followers.refused")
            self.audit.request(peer, "QueryUprobeEvents", request, "OK", "")
            return [Outgoing("frontend", wire.encode_reply(frame.request_id, response, frame.envelope))]
        self.audit.request(peer, "QueryUprobeEvents", request, "OK", "")  # its row now: the answer waits for no other write
        return []

    def take_woken(self) -> list[Outgoing]:
        return self.streams.take_woken()

    def _session(self, session_id: str) -> pb.DebugSession:
        session = self.open.get(session_id) or self.store.session(session_id)
        if session is None:
            raise NotFound(f"no session {session_id!r}")
        return session

    def _calls(self, request: pb.QueryUprobeEventsRequest, peer: Peer) -> pb.QueryUprobeEventsResponse:
        """A session's calls from colony.duckdb (pulled from its agents);
        the cursor is the colony's own order. has_more also while an ended
        part's last calls are still being pulled. Values only for the
        session's owner and holders of the capture right."""
        session = self._session(request.session_id)
        limit = max(1, min(request.max_events or 500, 5000))
        rows = self.store.calls(session.session_id, request.cursor, request.since_unix_ns, request.until_unix_ns, limit)
        access.values_for(self.config.access, peer, session.owner, (c for _, c in rows))
        return pb.QueryUprobeEventsResponse(
            calls=[c for _, c in rows],
            next_cursor=rows[-1][0] if rows else request.cursor,
            has_more=len(rows) == limit or colony_sessions.draining(session),
            session=session,
        )

    def handle_reply(self, frame: wire.Frame, now: float) -> list[Outgoing]:
        """An agent's REPLY; accepted only from the link its request went to."""
        pending, why = self.router.answered(frame)
        if pending is None and why == "foreign":
            self.count("replies.foreign")
            who, agent_id = self.router.foreign_sender(frame)
            self.audit.row(who, 0, "REPLY", "PERMISSION_DENIED",
                           f"a reply to a request sent to agent {agent_id} came from another link; dropped")
            return []
        if pending is None:
            self.count("late_replies")
            return []
        self.replies_since_pull = True
        out = self._deliver(pending, frame.name, frame.body)
        return out + self._answer_fresh(now) if self.streams.fresh else out

    def _deliver(self, pending: Pending, status: str, body: bytes) -> list[Outgoing]:
        """An agent's answer (or the colony's word for its silence) to a request."""
        if pending.gather is None and pending.method == "DetachUprobe":
            self._detached_when_back(pending, status, body)
            return []
        if pending.gather is None:
            self._pulled(pending, status, body)
            return []
        gather = pending.gather
        gather.replies[pending.agent_id] = (status, body)
        if not gather.done:
            return []
        if gather.method == "AttachUprobe":
            return self._attached(gather)
        if gather.method == "DetachUprobe":
            return self._detached(gather)
        if gather.method == "ProfileCpu":
            return self._profiled(gather)
        detail = reply_error(status, body)
        self.audit.request(gather.peer, gather.method, gather.request, status, detail)
        return [Outgoing("frontend", wire.encode_raw_reply(gather.client_request_id, status, body, gather.client))]

    def _detached_when_back(self, pending: Pending, status: str, body: bytes) -> None:
        """The agent's answer to a detach the colony sent for a lost part:
        the part takes it, and its last calls are pulled next."""
        session_id = cast(pb.DetachUprobeRequest, pending.request).session_id
        session = self.open.get(session_id)
        part = part_of(session, pending.agent_id) if session is not None else None
        if session is None or part is None:
            return
        for agent_id, code, message in colony_sessions.detached(session, [(pending.agent_id, status, body)]):
            log.warning("detach of %s sent to agent %s when it came back: %s %s", session_id, agent_id, code, message)
        if status != Unavailable.code:  # answered, or the session is unknown there: done; else sent again when back
            part.detach_by = ""
        self.pulls.hurry((session_id, pending.agent_id))
        self._changed(session)

    def _reply(self, gather: Gather, response: Message, detail: str) -> list[Outgoing]:
        """A session started or ended: its row is always written, never folded."""
        self.audit.request(gather.peer, gather.method, gather.request, "OK", detail, always=True)
        return [Outgoing("frontend", wire.encode_reply(gather.client_request_id, response, gather.client))]

    def _refuse(self, gather: Gather, errors: list[tuple[str, str, str]]) -> list[Outgoing]:
        """Every agent asked refused: one agent's error as it said it, or all of them named."""
        if len(gather.agents) == 1:
            status, body = gather.replies[gather.agents[0]]
            self.audit.request(gather.peer, gather.method, gather.request, status, reply_error(status, body))
            return [Outgoing("frontend", wire.encode_raw_reply(gather.client_request_id, status, body, gather.client))]
        err = error_from_code(errors[0][1], "; ".join(f"agent {a}: {m}" for a, _, m in errors))
        self.audit.request(gather.peer, gather.method, gather.request, err.code, err.message)
        return [Outgoing("frontend", wire.encode_error(gather.client_request_id, err, gather.client))]

    def _attached(self, gather: Gather) -> list[Outgoing]:
        request = cast(pb.AttachUprobeRequest, gather.request)
        replies = [(a, *gather.replies[a]) for a in gather.agents]
        session, refusals = colony_sessions.started(request, replies, time.time_ns())
        session.owner = gather.peer.who
        if len(refusals) == len(gather.agents):
            return self._refuse(gather, refusals)
        self._changed(session, created=True)
        if is_open(session):
            self.open[session.session_id] = session
        detail = "; ".join(f"agent {a} refused: {m}" for a, _, m in refusals)
        return self._reply(gather, pb.AttachUprobeResponse(session=session), detail)

    def _detached(self, gather: Gather) -> list[Outgoing]:
        request = cast(pb.DetachUprobeRequest, gather.request)
        session = self.open.get(request.session_id) or self.store.session(request.session_id) or pb.DebugSession()
        failures = colony_sessions.detached(session, [(a, *gather.replies[a]) for a in gather.agents])
        if len(failures) == len(gather.agents):
            return self._refuse(gather, failures)
        for p in session.parts:
            if p.session.status != ACTIVE and not p.complete:
                self.pulls.ended((session.session_id, p.agent_id))  # drained now (docs/protocol.md, "Pulling calls")
        self._changed(session)
        detail = "; ".join(f"agent {a}: {m}" for a, _, m in failures)
        return self._reply(gather, pb.DetachUprobeResponse(session=session), detail)

    def _changed(self, session: pb.DebugSession, created: bool = False, merge: bool = True) -> None:
        """A part changed: merge, save, and stop pulling once nothing is left
        to pull. Followers are told when the session's status changes.
        A session just `created` is journaled with its audit row. No
        `merge` when only parts' completeness changed: no merged field
        depends on it (a merge of one part took 13 us in a micro-bench).
        The parts are walked once: nothing here changes their completeness
        (the callers do, before), so it is counted once, and open or not
        is known from it."""
        status, complete = session.status, 0
        for p in session.parts:
            if p.complete:
                p.detach_by = ""  # nothing left to detach there
                complete += 1
        if merge:
            colony_sessions.merge(session)
        self.store.save_session(session, created)
        session_id = session.session_id
        self.pulls.stir(session_id)
        still_open = complete < len(session.parts) if session.parts else session.status == ACTIVE  # is_open()
        if session.status != status or not still_open:
            self.streams.followers.wake(session_id)
        if not still_open:
            if self.open.pop(session_id, None) is not None:
                self.ended[session.status] = self.ended.get(session.status, 0) + 1
            self.pulls.forget((session_id, p.agent_id) for p in session.parts)

    # ------------------------------------------------------------- pulls

    def pull(self, now: float) -> list[Outgoing]:
        """Between ticks, after agents answered: a full page or an ended
        part is pulled again at once, not at the next tick."""
        return self._pull(now, everything=False)

    def _pull(self, now: float, everything: bool = True) -> list[Outgoing]:
        """Start the pulls that are due (a bounded number per tick): in every
        open session, or only in those stirred since the last look."""
        self.replies_since_pull = False
        stirred = self.pulls.take_stirred(now)
        sessions = self.open.values() if everything else [self.open[sid] for sid in stirred if sid in self.open]
        due = self.pulls.due(sessions, lambda a: self.agent_by_id(a) is not None, now)
        if not everything and len(due) >= self.pulls.per_tick:  # some may be left: looked at again next time
            for sid in stirred:
                self.pulls.stir(sid)
        out = []
        interval = self.config.colony.pull_interval
        for pull in due:
            key = pull.key
            session, agent = self.open[key[0]], self.agent_by_id(key[1])
            part = part_of(session, key[1])
            if agent is None or part is None:
                continue
            request = pb.QueryUprobeEventsRequest(session_id=key[0], cursor=part.cursor, max_events=PULL_PAGE,
                                                  wait_ms=int(interval * 1000) if pull.wait else 0)
            out.append(self._send(agent, "QueryUprobeEvents", request, now, None, pull, interval if pull.wait else 0.0))
            self.pulls.sent(pull)
            if not pull.wait:  # sent after the waiting questions: it brings the calls made before them
                self.streams.pull_sent(key)
        return out

    def _pulled(self, pending: Pending, status: str, body: bytes) -> None:
        """Keep what a pull brought: new calls (each once), the agent's view of its part."""
        request = cast(pb.QueryUprobeEventsRequest, pending.request)
        key: PartKey = (request.session_id, pending.agent_id)
        session = self.open.get(key[0])
        part = part_of(session, key[1]) if session is not None else None
        reply = reply_ok(status, body, pb.QueryUprobeEventsResponse)
        pull = pending.pull or Pull(key, wait=False)
        now = time.monotonic()
        held_for = now - (pending.deadline - self.config.limits.request_timeout - self.config.colony.pull_interval)
        # A held pull answered at once with nothing (an agent that does not hold): the next waits, as a failed one.
        idle = pull.wait and reply is not None and not reply.calls and reply.session.status == ACTIVE \
            and held_for < self.config.colony.pull_interval / 2
        self.pulls.answered(pull, ok=reply is not None and not idle, more=reply is not None and reply.has_more, now=now)
        if not pull.wait and (reply is None or not reply.has_more):
            self.streams.pull_back(key)
        if session is None or part is None or part.complete:
            return
        if reply is None:
            self.count(f"pull_errors.{status}")
            if status == NotFound.code:  # the agent no longer has it (its store was purged or replaced)
                if part.session.status == ACTIVE:
                    part.session.status = FAILED
                    part.session.status_reason = f"agent {key[1]} no longer knows the session"
                part.complete = True
                self._changed(session)
            else:
                log.debug("pull of %s from %s: %s", key[0], key[1], reply_error(status, body))
            return
        new = self.store.save_calls(key[0], key[1], list(reply.calls))
        self.counters["pulled_calls"] = self.counters.get("pulled_calls", 0) + new
        # Most pulls of a running part bring nothing: no merge, nothing to save (49 us).
        moved = reply.next_cursor > part.cursor or part.session != reply.session
        if moved:
            part.cursor = max(part.cursor, reply.next_cursor)  # a held pull and a quick one may both be out
            part.session.CopyFrom(reply.session)
        drained = not reply.has_more and reply.session.status != ACTIVE
        if drained:
            part.complete = True  # ended, and every call is here
        if moved or drained:
            self._changed(session, merge=moved)
        if new or part.complete:  # followers wait for calls, and for a part's last one
            self.followers.wake(key[0])

    def _parts_away(self) -> None:
        """Parts whose agent is not connected (e.g. after a colony restart) and
        whose time is well past: ended on the agent's clock, nothing to pull."""
        grace_ns = int(self.config.colony.heartbeat_interval * self.config.colony.heartbeat_liveness * 1e9)
        now_ns = time.time_ns()
        for session in list(self.open.values()):
            if colony_sessions.complete_parts_away(session, lambda a: self.agent_by_id(a) is not None, now_ns, grace_ns):
                self._changed(session)

    # ---------------------------------------------------------- retention

    def purge(self, now: float) -> int:
        """One bounded run of retention: ended sessions past it go, with their calls."""
        if not self.purges.due(now):
            return 0
        sessions, calls, more = purge_once(self.retention, self.store.purge_candidates, self.store.purge, time.time_ns())
        if sessions:
            log.info(
                "retention: purged %d session(s) and %d call(s) that ended more than %s ago",
                sessions,
                calls,
                self.config.colony.retention,
            )
            self.counters["purged_sessions"] = self.counters.get("purged_sessions", 0) + sessions
        self.purges.done(now, more)
        return sessions

    # -------------------------------------------------------------- time

    def tick(self, now: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        for p in self.router.overdue(now):
            err = Unavailable(f"agent {p.agent_id} did not answer {p.method} within {self.config.limits.request_timeout:g}s")
            out.extend(self._deliver(p, err.code, _error_body(err)))
        interval, liveness = self.config.colony.heartbeat_interval, self.config.colony.heartbeat_liveness
        # A bounded number of heartbeats per tick: a thousand agents that
        # came up together are spread over the next ticks, not sent at once
        # in front of waiting clients (liveness allows several intervals).
        beats = max(HEARTBEATS_PER_TICK, len(self.agents) // 4)
        for agent in self.agents:  # a copy: agent_gone removes from it
            identity = agent.identity
            if is_dead(agent.last_heard, now, interval, liveness):
                out.extend(self.agent_gone(identity, f"silent for {interval * liveness:g}s"))
            elif now - agent.last_sent >= interval and beats > 0:
                beats -= 1
                agent.last_sent = now
                out.append(Outgoing("backend", wire.encode_signal(wire.Command.HEARTBEAT, (identity,))))
        self._parts_away()
        self.followers.expire(now)
        out.extend(self._pull(now))
        out.extend(self._answer_fresh(now))
        self.purge(now)
        self.audit.tick(now)
        return out

    # ------------------------------------------------------------- audit

    def record_agent_audit(self, identity: bytes, e: pb.AuditEntry) -> None:
        """An agent's report of its local socket, if the link is a known agent's."""
        agent = self.agents.get(identity)
        if agent is not None:
            self.audit.agent_report(agent.agent_id, e)

    def audit_bad_frame(self, peer: Peer, reason: str) -> None:
        self.count("bad_frames")
        self.audit.request(peer, "?", None, "BAD_REQUEST", reason)


def _error_body(err: CoralError) -> bytes:
    return pb.Error(code=err.code, message=err.message, suggestions=err.suggestions).SerializeToString()
