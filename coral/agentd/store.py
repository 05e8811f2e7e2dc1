"""agent.duckdb: the agent's sessions and their calls. The agent is the
only writer; clients read through the agent's API."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import duckdb

from coral.agentd.callblocks import CallBlock, CallRow, as_columns, calls_of, rows_in_blocks, take

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
ALTER TABLE calls ADD COLUMN IF NOT EXISTS stack VARCHAR DEFAULT '';
"""

# A batch goes in as one statement that scans numpy columns (about 0.3 µs a
# call here; a list parameter per column cost 7.5 µs, a row at a time 90 µs).
# $1 is the batch's session ids; each call names its own by a 1-based index.
_INSERT_TIMING = (
    "INSERT INTO calls SELECT seq, ($1::VARCHAR[])[session], start_ns, duration_ns, pid, tid, '', '', '' FROM coral_batch"
)
_INSERT_VALUED = (
    "INSERT INTO calls SELECT seq, ($1::VARCHAR[])[session], start_ns, duration_ns, pid, tid, args, ret, stack "
    "FROM coral_batch"
)


# DuckDB keeps the blocks it read and wrote cached, up to its memory limit:
# about 60 MiB of the agent's RSS after a million calls. While no session
# runs, the agent lowers the limit and DuckDB gives the blocks back.
MEMORY_LIMIT, IDLE_MEMORY_LIMIT = "256MB", "16MB"


def open_database(path: Path, schema: str) -> duckdb.DuckDBPyConnection:
    """Open (or create) a daemon's database. A file DuckDB cannot open is
    moved aside, not deleted, and a new one started: the daemon keeps
    serving, and the old data stays on disk for a person to look at."""
    # One thread: a daemon shares the host with the services it probes.
    config: dict[str, str | bool | int | float | list[str]] = {"threads": 1, "memory_limit": MEMORY_LIMIT}
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


class StorageHealth:
    """Whether a daemon's database takes writes. A failed write (a full
    disk, say) is counted and logged once per outage; the store keeps what
    it could not write in memory, up to a bound, and writes it when it can."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error = ""  # why the last write failed; "" once writes work
        self.failures = 0

    def failed(self, exc: duckdb.Error, held: str) -> None:
        self.failures += 1
        reason = str(exc).rsplit(": ", 1)[-1]  # DuckDB's text ends with the OS's reason
        if not self.error:
            log.error("cannot write %s: %s; %s held in memory, retrying", self.path, reason, held)
        self.error = reason

    def succeeded(self) -> None:
        if self.error:
            log.warning("writing %s again: everything held in memory is written", self.path)
            self.error = ""


# Calls held in memory while agent.duckdb cannot be written; more are
# dropped and counted as lost (storage) in their session.
MAX_HELD_CALLS = 200_000
RETRY_INTERVAL = 1.0  # seconds between the loop's own tries while writes fail


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
        self.health = StorageHealth(path)
        self._held: list[CallBlock] = []  # calls not written yet
        self._held_sessions: dict[str, SessionRow] = {}
        self._last_try = 0.0
        self._idle = False

    def close(self) -> None:
        self._db.close()

    def set_idle(self, idle: bool) -> None:
        """No session runs (True) or one does: DuckDB's cache shrinks or may grow again."""
        if idle == self._idle:
            return
        try:
            self._db.execute(f"SET memory_limit = '{IDLE_MEMORY_LIMIT if idle else MEMORY_LIMIT}'")
            self._idle = idle
        except duckdb.Error as exc:  # not worth more than a line: the limit stays as it was
            log.warning("could not set agent.duckdb's memory limit: %s", exc)

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

    @property
    def held_calls(self) -> int:
        return sum(len(b) for b in self._held)

    @property
    def holding(self) -> bool:
        return bool(self._held or self._held_sessions)

    def append(self, blocks: list[CallBlock], force: bool = True) -> Counter[str]:
        """Calls in blocks, after whatever is held from earlier. If the
        database cannot take them, they are held; calls beyond MAX_HELD_CALLS
        are dropped. While writes fail, only a forced append (a client asked)
        tries more than once a second. Returns the dropped calls by session id."""
        dropped: Counter[str] = Counter()
        room = MAX_HELD_CALLS - self.held_calls
        kept, over = take(blocks, room) if room > 0 else ([], blocks)
        for block in over:
            dropped[block.session_id] += len(block)
        self._held += kept
        if force or not self.health.error or time.monotonic() - self._last_try >= RETRY_INTERVAL:
            self.retry()
        return dropped

    def retry(self) -> None:
        """Write what is held: calls, then session rows."""
        self._last_try = time.monotonic()
        try:
            if self._held:
                self._write_calls(self._held)
                self._held = []
            for session_id, row in list(self._held_sessions.items()):
                self._write_session(row)
                del self._held_sessions[session_id]
        except duckdb.Error as exc:
            self.health.failed(exc, f"{self.held_calls} call(s) and {len(self._held_sessions)} session row(s)")
            return
        self.health.succeeded()

    def _write_calls(self, blocks: list[CallBlock]) -> None:
        """All or nothing: one transaction, a statement per kind of block."""
        self._db.begin()
        try:
            for group, sql in (([b for b in blocks if b.args is None], _INSERT_TIMING),
                               ([b for b in blocks if b.args is not None], _INSERT_VALUED)):
                if group:
                    sessions, columns = as_columns(group)
                    self._db.register("coral_batch", columns)
                    try:
                        self._db.execute(sql, [sessions])
                    finally:
                        self._db.unregister("coral_batch")
            self._db.commit()
        except duckdb.Error:
            with contextlib.suppress(duckdb.Error):  # DuckDB may have ended it already (a full disk does)
                self._db.rollback()
            raise

    def save_session(self, s: SessionRow) -> None:
        self._held_sessions[s.session_id] = s
        self.retry()

    def _write_session(self, s: SessionRow) -> None:
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
        """Every session, those held in memory (not written yet) included."""
        rows = self._db.execute("SELECT * FROM sessions ORDER BY started_ns").fetchall()
        stored = {
            r[0]: SessionRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8], json.loads(r[9]),
                             json.loads(r[10]))
            for r in rows
        }
        stored.update(self._held_sessions)
        return sorted(stored.values(), key=lambda row: row.started_ns)

    def call_count(self, session_id: str) -> int:
        """Its calls written, and those held since a write failed."""
        row = self._db.execute("SELECT count(*) FROM calls WHERE session_id = ?", [session_id]).fetchone()
        return (int(row[0]) if row else 0) + calls_of(self._held, session_id)

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
        rows = [CallRow(*r) for r in self._db.execute(sql, params).fetchall()]
        if len(rows) < limit and self._held:  # then those held since a write failed, which come after
            rows += rows_in_blocks(self._held, session_id, rows[-1].seq if rows else after_seq, since_ns, until_ns,
                                    limit - len(rows))
        return rows

    def purge_candidates(self, before_ns: int, limit: int) -> list[tuple[str, str, int]]:
        """Ended sessions that ended before `before_ns`, oldest first."""
        rows = self._db.execute(
            "SELECT session_id, status, ended_ns FROM sessions WHERE status != 'active' AND ended_ns > 0 AND ended_ns < ? "
            "ORDER BY ended_ns LIMIT ?",
            [before_ns, limit],
        ).fetchall()
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    def purge(self, session_ids: list[str]) -> tuple[int, int]:
        """Delete sessions and their calls; returns (sessions, calls) deleted.
        With the full memory limit, idle or not: a large session's delete
        needs more than the idle limit."""
        if not session_ids:
            return 0, 0
        idle, ids = self._idle, [session_ids]
        self.set_idle(False)
        try:
            row = self._db.execute("SELECT count(*) FROM calls WHERE session_id IN (SELECT unnest($1::VARCHAR[]))",
                                   ids).fetchone()
            self._db.execute("DELETE FROM calls WHERE session_id IN (SELECT unnest($1::VARCHAR[]))", ids)
            sessions = self._db.execute(
                "DELETE FROM sessions WHERE session_id IN (SELECT unnest($1::VARCHAR[])) RETURNING session_id", ids
            ).fetchall()
        finally:
            self.set_idle(idle)
        return len(sessions), int(row[0]) if row else 0
