"""agent.duckdb: the agent's sessions and their events. The agent is the
only writer; clients read through the agent's API."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id VARCHAR PRIMARY KEY,
    service VARCHAR, function VARCHAR, pids VARCHAR,
    started_ns BIGINT, expires_ns BIGINT, ended_ns BIGINT,
    status VARCHAR, reason VARCHAR, config VARCHAR, lost VARCHAR
);
CREATE TABLE IF NOT EXISTS events (
    seq BIGINT, session_id VARCHAR, event_type VARCHAR, ts_ns BIGINT,
    pid INTEGER, tid INTEGER, duration_ns BIGINT, args VARCHAR, ret VARCHAR
);
"""

# Rows per INSERT statement: one statement per batch, not one per row.
_CHUNK = 256


@dataclass(frozen=True)
class EventRow:
    seq: int
    session_id: str
    event_type: str
    ts_ns: int
    pid: int
    tid: int
    duration_ns: int
    args: str  # JSON list of {name, type, value}
    ret: str  # JSON {type, value, is_error, error_message} or ""


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    service: str
    function: str
    pids: list[int]
    started_ns: int
    expires_ns: int
    ended_ns: int
    status: str
    reason: str
    config: dict[str, object]
    lost: dict[str, int]


class EventStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = duckdb.connect(str(path))
        self._db.execute(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def next_seq(self) -> int:
        row = self._db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        return int(row[0]) + 1 if row else 1

    def fail_active_sessions(self, reason: str, now_ns: int) -> int:
        """At start-up: sessions left active by a previous run cannot be."""
        rows = self._db.execute(
            "UPDATE sessions SET status = 'failed', reason = ?, ended_ns = ? WHERE status = 'active' RETURNING session_id",
            [reason, now_ns],
        ).fetchall()
        return len(rows)

    def append(self, rows: Sequence[EventRow]) -> None:
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            placeholders = ",".join(["(?,?,?,?,?,?,?,?,?)"] * len(chunk))
            params: list[object] = []
            for r in chunk:
                params.extend((r.seq, r.session_id, r.event_type, r.ts_ns, r.pid, r.tid, r.duration_ns, r.args, r.ret))
            self._db.execute(f"INSERT INTO events VALUES {placeholders}", params)

    def save_session(self, s: SessionRow) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                s.session_id,
                s.service,
                s.function,
                json.dumps(s.pids),
                s.started_ns,
                s.expires_ns,
                s.ended_ns,
                s.status,
                s.reason,
                json.dumps(s.config),
                json.dumps(s.lost),
            ],
        )

    def sessions(self) -> list[SessionRow]:
        rows = self._db.execute("SELECT * FROM sessions ORDER BY started_ns").fetchall()
        return [
            SessionRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8], json.loads(r[9]), json.loads(r[10]))
            for r in rows
        ]

    def counts(self, session_id: str) -> tuple[int, int]:
        """(events stored, completed calls stored)."""
        row = self._db.execute(
            "SELECT count(*), count(*) FILTER (WHERE event_type = 'return') FROM events WHERE session_id = ?", [session_id]
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def query(self, session_id: str, after_seq: int, since_ns: int, until_ns: int, limit: int) -> list[EventRow]:
        sql = "SELECT * FROM events WHERE session_id = ? AND seq > ?"
        params: list[object] = [session_id, after_seq]
        if since_ns:
            sql += " AND ts_ns >= ?"
            params.append(since_ns)
        if until_ns:
            sql += " AND ts_ns <= ?"
            params.append(until_ns)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [EventRow(*r) for r in self._db.execute(sql, params).fetchall()]


def rows_to_json(items: Iterable[dict[str, object]]) -> str:
    return json.dumps(list(items), separators=(",", ":"))
