"""Who may speak for an agent, and how a flood of audit rows is folded:
pure decisions, without sockets (docs/protocol.md, "Who may be an agent"
and "Audit floods")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from coral.daemon.access import unix_identity
from coral.daemon.server import Peer


def agent_refusal(
    peer: Peer,
    agent_id: str,
    agent_users: tuple[str, ...],
    holder: str | None,
    identify: Callable[[int], tuple[str, set[str]]] = unix_identity,
) -> str | None:
    """Why `peer` may not announce `agent_id`, or None if it may. `holder`
    is the identity of the live link that has the id now, if any."""
    if peer.key:
        if peer.key != agent_id:
            return f"key:{peer.key} may not speak for agent {agent_id}: on tcp an agent's id is its key's name"
    elif peer.uid is None:
        return f"an unidentified peer may not speak for agent {agent_id}: its credentials are unknown"
    elif str(peer.uid) not in agent_users and identify(peer.uid)[0] not in agent_users:
        return (
            f"uid {peer.uid} may not speak for agent {agent_id}: agents run as "
            f"{', '.join(agent_users) or 'nobody'} ([colony] agent_users)"
        )
    if holder is not None and holder != peer.who:
        return f"{_spoken(peer)} may not speak for agent {agent_id}: it is connected as {_spoken_who(holder)}"
    return None


def _spoken(peer: Peer) -> str:
    return f"key:{peer.key}" if peer.key else f"uid {peer.uid}"


def _spoken_who(who: str) -> str:
    return who.replace("uid:", "uid ", 1) if who.startswith("uid:") else who


FoldKey = tuple[str, str, str]  # who, method, outcome


@dataclass
class _Window:
    opened: float
    written: int = 0
    folded: int = 0


@dataclass
class AuditFolder:
    """At most `burst` rows per (who, method, outcome) in each `window`
    seconds; the rest are counted, and one row per closed window says how
    many. `admit` and `closed` take a monotonic clock."""

    burst: int = 100
    window: float = 60.0
    windows: dict[FoldKey, _Window] = field(default_factory=dict)
    total_folded: int = 0

    def admit(self, key: FoldKey, now: float) -> bool:
        w = self.windows.get(key)
        if w is None or now - w.opened >= self.window:
            if w is not None and w.folded:
                return True  # closed() has not reported it yet: write this one, fold from the next
            w = self.windows[key] = _Window(now)
        if w.written < self.burst:
            w.written += 1
            return True
        w.folded += 1
        self.total_folded += 1
        return False

    def closed(self, now: float, everything: bool = False) -> list[tuple[FoldKey, int, float]]:
        """(key, rows folded, window seconds) of each window that has ended
        (all of them when `everything`: at shutdown); forgets ended windows."""
        out = []
        for key, w in list(self.windows.items()):
            if not everything and now - w.opened < self.window:
                continue
            if w.folded:
                out.append((key, w.folded, min(self.window, now - w.opened)))
            del self.windows[key]
        return out


def folded_detail(count: int, seconds: float) -> str:
    return f"… and {count:,} more in {seconds:.0f}s"
