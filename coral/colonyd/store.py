"""colony.duckdb: sessions and the audit log. The colony is the only writer.
While the disk is full, what cannot be written is held in memory (audit
rows and sessions in full, events up to a bound) and written later."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from coral.agentd.store import RETRY_INTERVAL, StorageHealth, open_database
from coral.proto import coral_pb2 as pb

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id VARCHAR PRIMARY KEY, service VARCHAR, agent_id VARCHAR, status VARCHAR,
    expires_ns BIGINT, started_ns BIGINT, session BLOB
);
CREATE TABLE IF NOT EXISTS events (
    session_id VARCHAR, seq BIGINT, event BLOB, PRIMARY KEY (session_id, seq)
);
CREATE TABLE IF NOT EXISTS audit (
    ts_ns BIGINT, who VARCHAR, peer_pid INTEGER, method VARCHAR, service VARCHAR, function VARCHAR,
    session_id VARCHAR, outcome VARCHAR, detail VARCHAR
);
"""


@dataclass(frozen=True)
class AuditRow:
    ts_ns: int
    who: str
    peer_pid: int
    method: str
    service: str
    function: str
    session_id: str
    outcome: str  # "OK" or an error code
    detail: str


# Events held while colony.duckdb cannot be written; more are dropped
# (the agent still has them) and counted.
MAX_HELD_EVENTS = 100_000


class ColonyStore:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA)
        self.health = StorageHealth(path)
        self._saved: dict[str, bytes] = {}  # session id -> what was last written
        self._newest: dict[str, int] = {}  # session id -> newest event seq written
        self._held_audit: list[AuditRow] = []
        self._held_sessions: dict[str, pb.DebugSession] = {}
        self._held_events: list[pb.UprobeEvent] = []
        self.events_dropped = 0
        self._last_try = 0.0

    def close(self) -> None:
        self._db.close()

    def counters(self) -> dict[str, int]:
        return {
            "storage.failing": int(bool(self.health.error)),
            "storage.write_failures": self.health.failures,
            "storage.held_audit_rows": len(self._held_audit),
            "storage.held_events": len(self._held_events),
            "storage.events_dropped": self.events_dropped,
        }

    def _write_held(self) -> None:
        """Write whatever is held: audit rows, sessions, events, in that order.
        While writes fail, try at most once a second."""
        if not (self._held_audit or self._held_sessions or self._held_events):
            return
        if self.health.error and time.monotonic() - self._last_try < RETRY_INTERVAL:
            return
        self._last_try = time.monotonic()
        try:
            if self._held_audit:
                columns = [list(c) for c in zip(*(dataclasses.astuple(r) for r in self._held_audit), strict=True)]
                self._db.execute(
                    "INSERT INTO audit SELECT unnest($1::BIGINT[]), unnest($2::VARCHAR[]), unnest($3::INTEGER[]), "
                    "unnest($4::VARCHAR[]), unnest($5::VARCHAR[]), unnest($6::VARCHAR[]), unnest($7::VARCHAR[]), "
                    "unnest($8::VARCHAR[]), unnest($9::VARCHAR[])",
                    columns,
                )
                self._held_audit = []
            for session_id, s in list(self._held_sessions.items()):
                self._db.execute(
                    "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?)",
                    [s.session_id, s.service, s.agent_id, s.status, s.expires_unix_ns, s.started_unix_ns, s.SerializeToString()],
                )
                del self._held_sessions[session_id]
            if self._held_events:
                events = self._held_events
                self._db.execute(
                    "INSERT OR IGNORE INTO events SELECT unnest($1::VARCHAR[]), unnest($2::BIGINT[]), unnest($3::BLOB[])",
                    [[e.session_id for e in events], [e.seq for e in events], [e.SerializeToString() for e in events]],
                )
                self._held_events = []
        except duckdb.Error as exc:
            self.health.failed(
                exc,
                f"{len(self._held_audit)} audit row(s), {len(self._held_sessions)} session(s) and "
                f"{len(self._held_events)} event(s)",
            )
            return
        self.health.succeeded()

    def audit(self, rows: list[AuditRow]) -> None:
        """Write audit rows, in one statement (held in memory if the disk is full)."""
        self._held_audit.extend(rows)
        self._write_held()

    def audit_rows(self, since_ns: int = 0, limit: int = 1000) -> tuple[list[AuditRow], bool]:
        """The newest `limit` entries since `since_ns`, oldest first; and whether more matched."""
        rows = [
            AuditRow(*r)
            for r in self._db.execute(
                "SELECT * FROM audit WHERE ts_ns >= ? ORDER BY ts_ns DESC LIMIT ?", [since_ns, limit + 1]
            ).fetchall()
        ]
        rows += [r for r in self._held_audit if r.ts_ns >= since_ns]
        rows.sort(key=lambda r: r.ts_ns, reverse=True)
        return list(reversed(rows[:limit])), len(rows) > limit

    def save_session(self, s: pb.DebugSession) -> None:
        blob = s.SerializeToString(deterministic=True)
        if self._saved.get(s.session_id) == blob:
            return  # unchanged: most relayed queries
        self._saved[s.session_id] = blob
        self._held_sessions[s.session_id] = s
        self._write_held()

    def session(self, session_id: str) -> pb.DebugSession | None:
        if session_id in self._held_sessions:
            return self._held_sessions[session_id]
        row = self._db.execute("SELECT session FROM sessions WHERE session_id = ?", [session_id]).fetchone()
        return pb.DebugSession.FromString(row[0]) if row else None

    def sessions(self, service: str = "", active_only: bool = False) -> list[pb.DebugSession]:
        sql, params = "SELECT session FROM sessions WHERE 1=1", []
        if service:
            sql += " AND service = ?"
            params.append(service)
        if active_only:
            sql += " AND status = 'active'"
        rows = self._db.execute(sql + " ORDER BY started_ns", params).fetchall()
        found = {s.session_id: s for s in (pb.DebugSession.FromString(r[0]) for r in rows)}
        for session_id, s in self._held_sessions.items():  # newer than what is written
            found.pop(session_id, None)
            if (not service or s.service == service) and (not active_only or s.status == "active"):
                found[session_id] = s
        return sorted(found.values(), key=lambda s: s.started_unix_ns)

    def save_events(self, events: list[pb.UprobeEvent]) -> None:
        """Keep events that passed through the colony (each once)."""
        if events:
            newest = self._newest.get(events[0].session_id, -1)
            events = [e for e in events if e.seq > newest]
        if events:
            self._newest[events[0].session_id] = max(e.seq for e in events)
            room = max(MAX_HELD_EVENTS - len(self._held_events), 0)
            self.events_dropped += max(len(events) - room, 0)
            self._held_events.extend(events[:room])
        self._write_held()

    def events(self, session_id: str, after_seq: int, limit: int) -> list[pb.UprobeEvent]:
        rows = self._db.execute(
            "SELECT event FROM events WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?", [session_id, after_seq, limit]
        ).fetchall()
        return [pb.UprobeEvent.FromString(r[0]) for r in rows]

    def _active_where(self, sql: str, params: list[object], keep: Callable[[pb.DebugSession], bool]) -> list[pb.DebugSession]:
        rows = self._db.execute(f"SELECT session FROM sessions WHERE status = 'active' AND {sql}", params).fetchall()
        found = {s.session_id: s for s in (pb.DebugSession.FromString(r[0]) for r in rows)}
        for session_id, s in self._held_sessions.items():  # newer than what is written
            found.pop(session_id, None)
            if s.status == "active" and keep(s):
                found[session_id] = s
        return list(found.values())

    def active_sessions_of(self, agent_id: str) -> list[pb.DebugSession]:
        return self._active_where("agent_id = ?", [agent_id], lambda s: s.agent_id == agent_id)

    def due_for_expiry(self, now_ns: int) -> list[pb.DebugSession]:
        return self._active_where("expires_ns <= ?", [now_ns], lambda s: s.expires_unix_ns <= now_ns)

    def retry(self) -> None:
        """The colony's tick: write what is held (at most once a second while writes fail)."""
        self._write_held()
