"""Clients reading a running session through the colony: followers (a
QueryUprobeEvents with wait_ms, held until their session has news) and
one-off questions that wait for fresh pulls so that a call made before the
question is in its answer (docs/protocol.md, "Pulling calls"). No sockets,
no database: the broker says what was asked, which pulls went out and came
back, and is told which questions to answer now."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from coral.colonyd.pulls import PartKey
from coral.colonyd.routing import Outgoing
from coral.daemon.server import Peer
from coral.daemon.waiters import Waiters
from coral.proto import coral_pb2 as pb

FRESH_WAIT = 2.0  # seconds a question waits for its pulls before it is answered with what is here


@dataclass
class FreshQuery:
    """A client's QueryUprobeEvents on a running session. It is answered once
    every running part was pulled by a pull sent after the question came,
    or at its deadline with what the colony has."""

    client: tuple[bytes, ...]
    client_request_id: bytes
    request: pb.QueryUprobeEventsRequest
    peer: Peer
    deadline: float
    unsent: set[PartKey]  # no pull sent for these since the question came
    sent: set[PartKey] = field(default_factory=set)  # pulled since; not yet back to the last page


@dataclass
class Ticket:
    """Which write batch holds an audit row handed over in this loop turn
    (told by the colony's flush): a held follower's answer waits for that
    batch only, not for the calls written since."""

    batch: int | None = None


@dataclass
class Streams:
    fresh: list[FreshQuery] = field(default_factory=list)
    followers: Waiters = field(default_factory=Waiters)  # held until their session has news
    woken: list[Outgoing] = field(default_factory=list)  # answers to followers, for the next send
    tickets: list[Ticket] = field(default_factory=list)  # rows of this turn's held followers, for the flush to number

    def ask(self, q: FreshQuery) -> None:
        self.fresh.append(q)

    def pull_sent(self, key: PartKey) -> None:
        """A pull without a wait went to a part: it brings the calls made before the questions waiting on it."""
        for q in self.fresh:
            if key in q.unsent:
                q.unsent.discard(key)
                q.sent.add(key)

    def pull_back(self, key: PartKey) -> None:
        """A pull without a wait came back at its last page (or failed): that
        part's calls up to the questions are here, or will not come."""
        for q in self.fresh:
            q.sent.discard(key)

    def due(self, now: float, running: Callable[[str], set[PartKey]]) -> list[FreshQuery]:
        """The questions to answer now, off the list: their running parts
        (`running` of their session) were all pulled since, or their wait is over."""
        ready = []
        for q in list(self.fresh):
            parts = running(q.request.session_id)
            q.unsent &= parts
            q.sent &= parts
            if (q.unsent or q.sent) and now < q.deadline:
                continue
            self.fresh.remove(q)
            ready.append(q)
        return ready

    def hold(self, session_id: str, wait_ms: int, now: float, answer: Callable[[], None]) -> Ticket | None:
        """Hold a follower's question; its Ticket, or None if its session has
        as many held as it may (answer it at once)."""
        if not self.followers.hold(session_id, wait_ms, now, answer):
            return None
        ticket = Ticket()
        self.tickets.append(ticket)
        return ticket

    def take_woken(self) -> list[Outgoing]:
        out, self.woken = self.woken, []
        return out
