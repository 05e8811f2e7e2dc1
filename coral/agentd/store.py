"""agent.duckdb: the agent's sessions and their events. The agent is the
only writer; clients read through the agent's API."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id VARCHAR PRIMARY KEY,
    service VARCHAR, function VARCHAR, pids VARCHAR,
    started_ns BIGINT, expires_ns BIGINT, ended_ns BIGINT,
    status VARCHAR, reason VARCHAR, config VARCHAR, lost VARCHAR
);
CREATE TABLE IF NOT EXISTS calls (
    seq BIGINT, session_id VARCHAR, start_ns BIGINT, duration_ns BIGINT,
    pid INTEGER, tid INTEGER, args VARCHAR, ret VARCHAR
);
"""

# A batch goes in as one statement with one list parameter per column:
# DuckDB binds a list in one go, where row-by-row parameters cost ~90 µs a row.
_INSERT = (
    "INSERT INTO calls SELECT unnest($1::BIGINT[]), unnest($2::VARCHAR[]), unnest($3::BIGINT[]), "
    "unnest($4::BIGINT[]), unnest($5::INTEGER[]), unnest($6::INTEGER[]), unnest($7::VARCHAR[]), "
    "unnest($8::VARCHAR[])"
)


def open_database(path: Path, schema: str) -> duckdb.DuckDBPyConnection:
    """Open (or create) a daemon's database. A file DuckDB cannot open is
    moved aside, not deleted, and a new one started: the daemon keeps
    serving, and the old data stays on disk for a person to look at."""
    # One thread: a daemon shares the host with the services it probes.
    config: dict[str, str | bool | int | float | list[str]] = {"threads": 1, "memory_limit": "256MB"}
    try:
        db = duckdb.connect(str(path), config=config)
        db.execute(schema)
        return db
    except duckdb.Error as exc:
        if not path.exists() or "Could not set lock" in str(exc):
            raise  # another daemon holds it: its data is not ours to move
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        path.rename(aside)
        Path(f"{path}.wal").unlink(missing_ok=True)
        log.error("%s could not be opened (%s); moved it to %s and started a new one", path, exc, aside)
        db = duckdb.connect(str(path), config=config)
        db.execute(schema)
        return db


@dataclass(frozen=True)
class CallRow:
    """One completed call: it is shown as an entry and a return event."""

    seq: int
    session_id: str
    start_ns: int  # Unix time
    duration_ns: int
    pid: int
    tid: int
    args: str  # JSON list of {name, type, value}, or ""
    ret: str  # JSON {type, value, is_error, error_message}, or ""


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
        self._db = open_database(path, SCHEMA)

    def close(self) -> None:
        self._db.close()

    def next_seq(self) -> int:
        row = self._db.execute("SELECT coalesce(max(seq), 0) FROM calls").fetchone()
        return int(row[0]) + 1 if row else 1

    def fail_active_sessions(self, reason: str, now_ns: int) -> int:
        """At start-up: sessions left active by a previous run cannot be."""
        rows = self._db.execute(
            "UPDATE sessions SET status = 'failed', reason = ?, ended_ns = ? WHERE status = 'active' RETURNING session_id",
            [reason, now_ns],
        ).fetchall()
        return len(rows)

    def append(self, columns: Sequence[list[object]]) -> None:
        """One batch, given as the table's eight columns (CallRow's fields, in order)."""
        if columns and columns[0]:
            self._db.execute(_INSERT, list(columns))

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

    def call_count(self, session_id: str) -> int:
        row = self._db.execute("SELECT count(*) FROM calls WHERE session_id = ?", [session_id]).fetchone()
        return int(row[0]) if row else 0

    def query(self, session_id: str, after_seq: int, since_ns: int, until_ns: int, limit: int) -> list[CallRow]:
        sql = "SELECT * FROM calls WHERE session_id = ? AND seq > ?"
        params: list[object] = [session_id, after_seq]
        if since_ns:
            sql += " AND start_ns + duration_ns >= ?"
            params.append(since_ns)
        if until_ns:
            sql += " AND start_ns <= ?"
            params.append(until_ns)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [CallRow(*r) for r in self._db.execute(sql, params).fetchall()]
