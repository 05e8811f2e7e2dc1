"""colony.duckdb: sessions, the events pulled from agents, and the audit
log. The colony is the only writer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from coral.agentd.store import open_database
from coral.colonyd.sessions import is_open
from coral.proto import coral_pb2 as pb

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id VARCHAR PRIMARY KEY, service VARCHAR, agent_id VARCHAR, status VARCHAR,
    expires_ns BIGINT, started_ns BIGINT, session BLOB
);
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS open BOOLEAN DEFAULT false;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS ended_ns BIGINT DEFAULT 0;
CREATE TABLE IF NOT EXISTS agent_events (
    n BIGINT, session_id VARCHAR, agent_id VARCHAR, seq BIGINT, end_ns BIGINT, event BLOB,
    PRIMARY KEY (session_id, agent_id, seq)
);
CREATE TABLE IF NOT EXISTS audit (
    ts_ns BIGINT, who VARCHAR, peer_pid INTEGER, method VARCHAR, service VARCHAR, function VARCHAR,
    session_id VARCHAR, outcome VARCHAR, detail VARCHAR
);
"""
# agent_events: n is the colony's own order (the cursor it hands to clients);
# (session, agent, seq) is the agent's event sequence, so a pull that
# returns an event twice stores it once. end_ns is the end of the event's
# call, so that a time filter keeps a call's entry and return together.


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
        self._newest: dict[tuple[str, str], int] = {}  # (session id, agent id) -> newest event seq written
        self._n = -1  # the next colony event order; read from the file on first use

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
        rows = self._db.execute(
            "SELECT * FROM audit WHERE ts_ns >= ? ORDER BY ts_ns DESC LIMIT ?", [since_ns, limit + 1]
        ).fetchall()
        return [AuditRow(*r) for r in reversed(rows[:limit])], len(rows) > limit

    def save_session(self, s: pb.DebugSession) -> None:
        blob = s.SerializeToString(deterministic=True)
        if self._saved.get(s.session_id) == blob:
            return  # unchanged: most pulls of an idle session
        self._saved[s.session_id] = blob
        self._db.execute(
            "INSERT OR REPLACE INTO sessions (session_id, service, agent_id, status, expires_ns, started_ns, session, open, "
            "ended_ns) VALUES (?,?,?,?,?,?,?,?,?)",
            [
                s.session_id,
                s.service,
                s.agent_id,
                s.status,
                s.expires_unix_ns,
                s.started_unix_ns,
                blob,
                is_open(s),
                s.ended_unix_ns,
            ],
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

    def open_sessions(self) -> list[pb.DebugSession]:
        """Sessions the colony still pulls events for (at start-up)."""
        rows = self._db.execute("SELECT session FROM sessions WHERE open ORDER BY started_ns").fetchall()
        return [pb.DebugSession.FromString(r[0]) for r in rows]

    def save_events(self, session_id: str, agent_id: str, events: list[pb.UprobeEvent]) -> int:
        """Keep events pulled from one agent, each once; returns how many were new."""
        key = (session_id, agent_id)
        if key not in self._newest:
            row = self._db.execute(
                "SELECT coalesce(max(seq), -1) FROM agent_events WHERE session_id = ? AND agent_id = ?", [session_id, agent_id]
            ).fetchone()
            self._newest[key] = int(row[0]) if row else -1
        events = [e for e in events if e.seq > self._newest[key]]
        if not events:
            return 0
        self._newest[key] = max(e.seq for e in events)
        ends = {e.seq // 2: e.timestamp_unix_ns for e in events if e.event_type == "return"}
        first = self._next_n()
        self._db.execute(
            "INSERT OR IGNORE INTO agent_events SELECT unnest($1::BIGINT[]), $2, $3, unnest($4::BIGINT[]), "
            "unnest($5::BIGINT[]), unnest($6::BLOB[])",
            [
                list(range(first, first + len(events))),
                session_id,
                agent_id,
                [e.seq for e in events],
                [ends.get(e.seq // 2, e.timestamp_unix_ns) for e in events],
                [e.SerializeToString() for e in events],
            ],
        )
        self._n = first + len(events)
        return len(events)

    def _next_n(self) -> int:
        if self._n < 0:
            row = self._db.execute("SELECT coalesce(max(n), 0) FROM agent_events").fetchone()
            self._n = int(row[0]) + 1 if row else 1
        return self._n

    def events(self, session_id: str, after_n: int, since_ns: int, until_ns: int, limit: int) -> list[tuple[int, pb.UprobeEvent]]:
        """A page of a session's events in the order the colony received
        them, each with its colony order (the next cursor)."""
        sql, params = "SELECT n, event FROM agent_events WHERE session_id = ? AND n > ?", [session_id, after_n]
        if since_ns:
            sql += " AND end_ns >= ?"
            params.append(since_ns)
        if until_ns:
            sql += " AND end_ns <= ?"
            params.append(until_ns)
        rows = self._db.execute(sql + " ORDER BY n LIMIT ?", [*params, limit]).fetchall()
        return [(int(r[0]), pb.UprobeEvent.FromString(r[1])) for r in rows]

    def purge_candidates(self, before_ns: int, limit: int) -> list[tuple[str, str, int]]:
        """Ended sessions (nothing left to pull) that ended before `before_ns`, oldest first."""
        rows = self._db.execute(
            "SELECT session_id, status, ended_ns FROM sessions WHERE NOT coalesce(open, false) AND status != 'active' "
            "AND ended_ns > 0 AND ended_ns < ? ORDER BY ended_ns LIMIT ?",
            [before_ns, limit],
        ).fetchall()
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    def purge(self, session_ids: list[str]) -> tuple[int, int]:
        """Delete sessions and their events (never audit rows); returns (sessions, events) deleted."""
        if not session_ids:
            return 0, 0
        events = self._db.execute(
            "DELETE FROM agent_events WHERE session_id IN (SELECT unnest($1::VARCHAR[])) RETURNING n", [session_ids]
        ).fetchall()
        sessions = self._db.execute(
            "DELETE FROM sessions WHERE session_id IN (SELECT unnest($1::VARCHAR[])) RETURNING session_id", [session_ids]
        ).fetchall()
        for sid in session_ids:
            self._saved.pop(sid, None)
        self._newest = {k: v for k, v in self._newest.items() if k[0] not in set(session_ids)}
        return len(sessions), len(events)
