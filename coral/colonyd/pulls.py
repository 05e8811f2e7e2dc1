"""When the colony pulls a session's calls from its agents: a pure
schedule (no sockets, no database). Each part of an open session has one
pull out: while the part runs the agent holds it until it has new calls (or
`interval` has passed), and the next goes when it is back; an ended part is
pulled without a wait until it is drained. A client waiting for its calls
hurries a part: its next pull does not wait, and if a held one is out, one
quick pull goes beside it. A failed pull is tried again after `interval`. At
most `per_tick` pulls start per loop iteration, so the colony keeps serving
clients whatever the number of sessions (docs/protocol.md, "Pulling calls").

Between two ticks the colony looks only at the sessions `stirred` since it
last looked (a pull answered or hurried, a part changed): with hundreds of
open sessions, a look at all of them after every reply was a third of the
loop's time. A failed pull's wait that is over stirs its session too; an
agent that is back waits for the tick's look at every session."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from coral.proto import coral_pb2 as pb

PULL_PAGE = 2000  # calls per pull
PULLS_PER_TICK = 16

PartKey = tuple[str, str]  # (session id, agent id)


@dataclass(frozen=True)
class Pull:
    key: PartKey
    wait: bool  # held by the agent until it has news (a running part's routine pull)
    quick: bool = False  # beside a held pull, for a client waiting for its calls


@dataclass
class PullSchedule:
    interval: float
    per_tick: int = PULLS_PER_TICK
    in_flight: set[PartKey] = field(default_factory=set)  # the part's one routine pull is out
    quick: set[PartKey] = field(default_factory=set)  # a quick pull is out beside it
    hurried: set[PartKey] = field(default_factory=set)  # a client waits: the next pull does not wait
    next_at: dict[PartKey, float] = field(default_factory=dict)  # after a failed pull
    stirred: dict[str, None] = field(default_factory=dict)  # session ids to look at before the next tick, in order
    waits: list[tuple[float, str]] = field(default_factory=list)  # heap: when a failed pull's session is due again
    _start: int = 0  # where the last round stopped: every part gets its turn

    def due(self, sessions: Iterable[pb.DebugSession], reachable: Callable[[str], bool], now: float) -> list[Pull]:
        """The pulls to send now, at most `per_tick`: ended and hurried
        parts first, then running parts whose pull is back, in turn."""
        urgent: list[Pull] = []
        routine: list[Pull] = []
        for s in sessions:
            for p in s.parts:
                key = (s.session_id, p.agent_id)
                if p.complete or not reachable(p.agent_id):
                    continue
                ended = p.session.status != "active"
                if key not in self.in_flight and now >= self.next_at.get(key, 0.0):
                    hurry = ended or key in self.hurried
                    (urgent if hurry else routine).append(Pull(key, wait=not hurry))
                elif key in self.hurried and key in self.in_flight and key not in self.quick:
                    urgent.append(Pull(key, wait=False, quick=True))
        room = self.per_tick - len(urgent)
        if room <= 0:
            return urgent[: self.per_tick]
        if len(routine) > room:
            start = self._start % len(routine)
            self._start = start + room
            routine = (routine[start:] + routine[:start])[:room]
        return urgent + routine

    def stir(self, session_id: str) -> None:
        """Something about this session's pulls changed: look at it before the next tick."""
        self.stirred[session_id] = None

    def take_stirred(self, now: float) -> list[str]:
        """The sessions stirred since the last call, and those whose failed pull's wait is over by `now`."""
        while self.waits and self.waits[0][0] <= now:
            self.stir(heapq.heappop(self.waits)[1])
        stirred, self.stirred = list(self.stirred), {}
        return stirred

    def hurry(self, key: PartKey) -> None:
        """Pull this part at the next chance, without a wait (a client waits for it)."""
        self.stir(key[0])
        self.hurried.add(key)
        self.next_at.pop(key, None)

    def ended(self, key: PartKey) -> None:
        """The part has ended (its detach was answered): its last calls are
        pulled at once, not after the wait that a held pull answered at once
        with nothing, or a failed one, set. Such a wait kept a detached
        session open up to `interval` longer, and every tick looked at it."""
        if self.next_at.pop(key, None) is not None:
            self.stir(key[0])

    def sent(self, pull: Pull) -> None:
        (self.quick if pull.quick else self.in_flight).add(pull.key)
        if not pull.wait:
            self.hurried.discard(pull.key)

    def answered(self, pull: Pull, ok: bool, more: bool, now: float) -> None:
        """A pull came back (or failed). A failed routine pull waits
        `interval`; a full page from a pull a client waits for keeps the
        next one quick, until the last page."""
        self.stir(pull.key[0])
        (self.quick if pull.quick else self.in_flight).discard(pull.key)
        if not ok and not pull.quick:
            self.next_at[pull.key] = now + self.interval
            heapq.heappush(self.waits, (now + self.interval, pull.key[0]))
        if ok and more and not pull.wait:
            self.hurried.add(pull.key)

    def forget(self, keys: Iterable[PartKey]) -> None:
        """A session's parts, by key: not a walk of every part's pull (2% of
        the loop's time with a few hundred sessions open)."""
        for key in keys:
            for table in (self.in_flight, self.quick, self.hurried):
                table.discard(key)
            self.next_at.pop(key, None)
