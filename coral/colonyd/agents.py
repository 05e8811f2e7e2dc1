"""The agents the colony knows: one link per agent id, who may announce
which id, and the services each announced (READY, then SERVICES). Pure
bookkeeping, without sockets (docs/protocol.md, "Who may be an agent")."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from coral.colonyd.trust import agent_refusal
from coral.daemon.paging import services_page
from coral.daemon.server import Peer
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)

MAX_AGENT_SERVICES = 100_000  # instances the colony holds for one agent (docs/protocol.md)


@dataclass
class AgentState:
    identity: bytes  # the link's ROUTER identity
    hello: pb.AgentHello
    last_heard: float
    owner: str  # who the link proved it is: uid:N on ipc, key:NAME on tcp
    last_sent: float = 0.0
    services: dict[int, pb.ServiceInstance] = field(default_factory=dict)  # by pid: READY, then SERVICES
    refused_services: int = 0  # instances past MAX_AGENT_SERVICES
    warned_at: float = float("-inf")

    @property
    def agent_id(self) -> str:
        return self.hello.agent_id

    def apply(self, added: Iterable[pb.ServiceInstance], removed: Iterable[int]) -> int:
        """Apply one READY page or SERVICES message; returns how many instances
        did not fit under MAX_AGENT_SERVICES."""
        for pid in removed:
            self.services.pop(pid, None)
        refused = 0
        for instance in added:
            if instance.pid not in self.services and len(self.services) >= MAX_AGENT_SERVICES:
                refused += 1
                continue
            instance.agent_id = self.agent_id  # what the link proved, whatever the message says
            self.services[instance.pid] = instance
        self.refused_services += refused
        return refused


@dataclass
class AgentDirectory:
    agent_users: tuple[str, ...]
    count: Callable[[str, int], None] = lambda name, n: None
    links: dict[bytes, AgentState] = field(default_factory=dict)  # by ROUTER identity
    _by_id: dict[str, AgentState] = field(default_factory=dict)  # agent id -> its current link
    _by_service: dict[str, list[AgentState]] | None = None  # built on demand, dropped when services change
    _page: tuple[str, int, pb.ListServicesResponse] | None = None  # the last ListServices page, until they change

    def announce(self, identity: bytes, hello: pb.AgentHello, peer: Peer,
                 now: float) -> tuple[AgentState | None, AgentState | None, str]:
        """READY on a link: (its new state, the link of the same agent it
        supersedes, "") or (None, None, why it is refused)."""
        this = self.links.get(identity)
        previous = self._by_id.get(hello.agent_id)
        holder = previous.owner if previous is not None and previous.identity != identity else None
        why = agent_refusal(peer, hello.agent_id, self.agent_users, holder)
        if why is None and this is not None and this.agent_id != hello.agent_id:
            why = f"this link speaks for agent {this.agent_id}; a link announces one agent id"
        if why is not None:
            return None, None, why
        superseded = previous if previous is not None and previous.identity != identity else None
        if superseded is not None:
            del self.links[superseded.identity]  # the same agent reconnected on a new link
        if this is None:
            log.info("agent %s ready (%d services in READY)", hello.agent_id, len(hello.services))
        state = AgentState(identity, pb.AgentHello(), now, peer.who)
        state.hello.CopyFrom(hello)
        del state.hello.services[:]  # kept by pid in state.services
        self._refused(state, state.apply(hello.services, ()))
        self.links[identity] = self._by_id[hello.agent_id] = state
        self._changed()
        return state, superseded, ""

    def services_changed(self, identity: bytes, changed: pb.ServicesChanged, now: float) -> bool:
        """SERVICES from a link: False if the link is not a known agent."""
        agent = self.heard(identity, now)
        if agent is None:
            return False
        self._refused(agent, agent.apply(changed.added, changed.removed))
        self._changed()
        return True

    def _changed(self) -> None:
        self._by_service = None
        self._page = None

    def _refused(self, agent: AgentState, refused: int) -> None:
        if not refused:
            return
        self.count("services.refused", refused)
        now = time.monotonic()
        if now - agent.warned_at >= 60:  # once a minute: the count says the rest
            agent.warned_at = now
            log.warning("agent %s announced more than %d instances; %d not listed (%d in all)",
                        agent.agent_id, MAX_AGENT_SERVICES, refused, agent.refused_services)

    def heard(self, identity: bytes, now: float) -> AgentState | None:
        agent = self.links.get(identity)
        if agent is not None:
            agent.last_heard = now
        return agent

    def remove(self, identity: bytes) -> AgentState | None:
        agent = self.links.pop(identity, None)
        if agent is not None:
            self._changed()
            if self._by_id.get(agent.agent_id) is agent:
                del self._by_id[agent.agent_id]
        return agent

    def get(self, identity: bytes) -> AgentState | None:
        return self.links.get(identity)

    def by_id(self, agent_id: str) -> AgentState | None:
        return self._by_id.get(agent_id)

    def for_service(self, service: str) -> list[AgentState]:
        if self._by_service is None:
            self._by_service = {}
            for agent in self.links.values():
                for name in dict.fromkeys(s.service for s in agent.services.values()):
                    self._by_service.setdefault(name, []).append(agent)
        return self._by_service.get(service, [])

    def services(self) -> list[pb.ServiceInstance]:
        return [s for a in self.links.values() for s in a.services.values()]

    def services_page(self, after: str, limit_bytes: int) -> pb.ListServicesResponse:
        """A ListServices page, kept until the services change: sorting and
        copying 100 instances cost 0.18 ms, more than the rest of the request."""
        if self._page is None or self._page[:2] != (after, limit_bytes):
            self._page = (after, limit_bytes, services_page(self.services(), after, limit_bytes))
        return self._page[2]

    def __iter__(self) -> Iterator[AgentState]:
        return iter(list(self.links.values()))

    def __len__(self) -> int:
        return len(self.links)
