"""colony.duckdb: sessions and the audit log. The colony is the only writer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from coral.agentd.store import open_database
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


class ColonyStore:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA)
        self._saved: dict[str, bytes] = {}  # session id -> what was last written
        self._newest: dict[str, int] = {}  # session id -> newest event seq written

    def close(self) -> None:
        self._db.close()

    def audit(self, rows: list[AuditRow]) -> None:
        """Write audit rows, in one statement."""
        if rows:
            columns = [list(c) for c in zip(*(dataclasses.astuple(r) for r in rows), strict=True)]
            self._db.execute(
                "INSERT INTO audit SELECT unnest($1::BIGINT[]), unnest($2::VARCHAR[]), unnest($3::INTEGER[]), "
                "unnest($4::VARCHAR[]), unnest($5::VARCHAR[]), unnest($6::VARCHAR[]), unnest($7::VARCHAR[]), "
                "unnest($8::VARCHAR[]), unnest($9::VARCHAR[])",
                columns,
            )

    def audit_rows(self, since_ns: int = 0, limit: int = 1000) -> tuple[list[AuditRow], bool]:
        """The newest `limit` entries since `since_ns`, oldest first; and whether more matched."""
        rows = self._db.execute("SELECT * FROM audit WHERE ts_ns >= ? ORDER BY ts_ns DESC LIMIT ?",
                                [since_ns, limit + 1]).fetchall()
        return [AuditRow(*r) for r in reversed(rows[:limit])], len(rows) > limit

    def save_session(self, s: pb.DebugSession) -> None:
        blob = s.SerializeToString(deterministic=True)
        if self._saved.get(s.session_id) == blob:
            return  # unchanged: most relayed queries
        self._saved[s.session_id] = blob
        self._db.execute(
            "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?)",
            [s.session_id, s.service, s.agent_id, s.status, s.expires_unix_ns, s.started_unix_ns, s.SerializeToString()],
        )

    def session(self, session_id: str) -> pb.DebugSession | None:
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
        return [pb.DebugSession.FromString(r[0]) for r in rows]

    def save_events(self, events: list[pb.UprobeEvent]) -> None:
        """Keep events that passed through the colony (each once)."""
        if events:
            newest = self._newest.get(events[0].session_id, -1)
            events = [e for e in events if e.seq > newest]
        if events:
            self._newest[events[0].session_id] = max(e.seq for e in events)
            self._db.execute(
                "INSERT OR IGNORE INTO events SELECT unnest($1::VARCHAR[]), unnest($2::BIGINT[]), unnest($3::BLOB[])",
                [[e.session_id for e in events], [e.seq for e in events], [e.SerializeToString() for e in events]],
            )

    def events(self, session_id: str, after_seq: int, limit: int) -> list[pb.UprobeEvent]:
        rows = self._db.execute("SELECT event FROM events WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                                [session_id, after_seq, limit]).fetchall()
        return [pb.UprobeEvent.FromString(r[0]) for r in rows]

    def active_sessions_of(self, agent_id: str) -> list[pb.DebugSession]:
        rows = self._db.execute("SELECT session FROM sessions WHERE status = 'active' AND agent_id = ?", [agent_id]).fetchall()
        return [pb.DebugSession.FromString(r[0]) for r in rows]

    def due_for_expiry(self, now_ns: int) -> list[pb.DebugSession]:
        rows = self._db.execute("SELECT session FROM sessions WHERE status = 'active' AND expires_ns <= ?", [now_ns]).fetchall()
        return [pb.DebugSession.FromString(r[0]) for r in rows]
