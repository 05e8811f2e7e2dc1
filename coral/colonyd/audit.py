"""The colony's audit log: every row stamped by the colony, folded past a
flood allowance, answered value-free reads counted. Rows wait here until
the loop hands them to the store's next write; the replies they describe
go out once it is done
(docs/security.md, "Audit"; docs/protocol.md, "Audit floods")."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from google.protobuf.message import Message

from coral.colonyd.store import AuditRow, ColonyStore
from coral.colonyd.trust import AuditFolder, FoldKey, folded_detail
from coral.daemon.access import values_asked
from coral.daemon.errors import CoralError
from coral.daemon.methods import AGENT_LOCAL_METHODS, METHODS
from coral.daemon.server import Peer
from coral.proto import coral_pb2 as pb

# What a row's method and outcome may be: anything else is "?".
AUDIT_METHODS = frozenset({*METHODS, "READY", "REPLY", "CONNECT", "?"})
AUDIT_OUTCOMES = frozenset({"OK", "DENIED", "?", *(c.code for c in CoralError.__subclasses__()), CoralError.code})
# Answered reads that carry no captured values: one row per peer and method a
# minute, counting them, written after the replies.
COUNTED_READS = frozenset({"Ping", "ListServices", "ListDebugSessions"})
READS_WINDOW = 60.0
MAX_CLIENT_LABEL = 64


def client_label(request: Message | None) -> str:
    """A request's client_label as an audit row keeps it: at most 64 bytes
    of printable ASCII, anything else shown as "?". Only ever displayed: who
    asked is the peer's credentials, whatever this says (docs/protocol.md,
    "Client label")."""
    label = str(getattr(request, "client_label", ""))[:MAX_CLIENT_LABEL]
    return "".join(c if " " <= c <= "~" else "?" for c in label)


@dataclass
class AuditLog:
    store: ColonyStore
    folder: AuditFolder = field(default_factory=AuditFolder)
    rows: list[AuditRow] = field(default_factory=list)  # not written yet
    reads: dict[tuple[str, int, str, str], int] = field(default_factory=dict)  # (who, pid, method, label) -> answered
    reads_since: float = field(default_factory=time.monotonic)
    recorded: int = 0  # rows handed to the store in this run

    def request(self, peer: Peer, method: str, request: Message | None, outcome: str, detail: str,
                always: bool = False) -> None:
        """A client's request, as the colony saw it (with the key an attach counts by, if any)."""
        asked = values_asked(request)
        if asked:
            detail = f"{detail}; {asked}" if detail else asked
        self.row(peer.who, peer.pid or 0, method, outcome, detail, str(getattr(request, "service", "")),
                 str(getattr(request, "function", "")), str(getattr(request, "session_id", "")), always=always,
                 label=client_label(request))

    def answered_read(self, peer: Peer, method: str, request: Message | None = None) -> bool:
        """Count an answered read of COUNTED_READS (True), or say it needs its own row (False)."""
        if method not in COUNTED_READS:
            return False
        key = (peer.who[:300], peer.pid or 0, method, client_label(request))
        self.reads[key] = self.reads.get(key, 0) + 1
        return True

    def row(self, who: str, pid: int, method: str, outcome: str, detail: str, service: str = "", function: str = "",
            session_id: str = "", always: bool = False, fold: FoldKey | None = None, label: str = "") -> None:
        """One row, unless its fold key (who, method, outcome unless said
        otherwise) is past its flood allowance. Method and outcome come from
        bounded sets, so the keys do too."""
        who = who[:300]
        method = method if method in AUDIT_METHODS else "?"
        outcome = outcome if outcome in AUDIT_OUTCOMES else "?"
        if not always and not self.folder.admit(fold or (who, method, outcome), time.monotonic()):
            return
        self.rows.append(AuditRow(time.time_ns(), who, pid, method, service[:200], function[:200], session_id[:64],
                                  outcome, detail[:500], client_label=label))

    def refused_connection(self, who: str, domain: str, detail: str) -> None:
        """A tcp peer refused at the handshake: who is key:NAME or
        key:FINGERPRINT, or "unknown" if it had no usable key. Folded per
        domain, not per key: a refused peer can make a new key for every try."""
        self.row(who, 0, "CONNECT", "DENIED", f"{domain}: {detail}", fold=(f"{domain} handshakes", "CONNECT", "DENIED"))

    def connection_cut(self, uid: int, pid: int, detail: str) -> None:
        """Connections of one uid cut past its cap (reported once a minute at most, saying how many)."""
        self.row(f"uid:{uid}", pid, "CONNECT", "LIMIT_EXCEEDED", detail)

    def agent_report(self, agent_id: str, e: pb.AuditEntry) -> None:
        """A request an agent served on its local socket, as that agent
        reports it: the colony's time, and `who` naming the agent its link
        proved it is. Folded per agent: what it reports as `who` is its word."""
        method = e.method if e.method in AGENT_LOCAL_METHODS or e.method == "CONNECT" else "?"
        outcome = e.outcome if e.outcome in AUDIT_OUTCOMES else "?"
        self.row(f"{e.who[:64]} on agent {agent_id}", e.peer_pid, method, outcome, e.detail, e.service, e.function,
                 e.session_id, fold=(f"agent {agent_id}", method, outcome))

    def tick(self, now: float, everything: bool = False) -> None:
        """The rows that say what a window folded or counted, once it closes
        (all of them when `everything`: at shutdown)."""
        for (who, method, outcome), count, seconds in self.folder.closed(now, everything):
            self.rows.append(AuditRow(time.time_ns(), who, 0, method, "", "", "", outcome, folded_detail(count, seconds)))
        seconds = now - self.reads_since
        if self.reads and (seconds >= READS_WINDOW or everything):
            stamp = time.time_ns()
            for (who, pid, method, label), n in self.reads.items():
                detail = f"{n:,} answered in {seconds:.0f}s" if n > 1 else "answered"
                self.rows.append(AuditRow(stamp, who, pid, method, "", "", "", "OK", detail, client_label=label))
            self.reads.clear()
            self.reads_since = now

    def hand_over(self) -> None:
        """The rows so far, to the store's next batch."""
        rows, self.rows = self.rows, []
        self.recorded += len(rows)
        self.store.audit(rows)

    def flush(self, final: bool = False) -> None:
        """Write the rows so far, with the sessions and calls the store holds,
        in one transaction, now. `final`: at shutdown, every open window is told."""
        if final:
            self.tick(time.monotonic(), everything=True)
        self.hand_over()
        self.store.journal.drain()
        self.store.flush()
