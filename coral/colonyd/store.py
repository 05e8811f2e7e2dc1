"""colony.duckdb: sessions, the calls pulled from agents, and the audit
log. The colony is the only writer. An audit row, and a session the colony
creates, are durable first in the audit journal (coral/colonyd/journal.py),
whose appends the replies wait for; colony.duckdb gets them behind.

Writes are held in memory and written together, in one transaction: by
``write_behind()`` on the writer thread (the colony's loop goes on, and
sends the replies that depend on the write once ``written`` says it is
done), or by ``flush()`` at once. Until then every read sees them. While
the disk is full, what cannot be written stays held (audit rows and sessions
in full, calls up to a bound) and is written when there is room."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import operator
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from coral.agentd.store import RETRY_INTERVAL, StorageHealth, open_database
from coral.colonyd.journal import Journal, read_entries, remove_files
from coral.colonyd.sessions import is_open
from coral.colonyd.writer import Writer
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id VARCHAR PRIMARY KEY, service VARCHAR, agent_id VARCHAR, status VARCHAR,
    expires_ns BIGINT, started_ns BIGINT, session BLOB
);
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS open BOOLEAN DEFAULT false;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS ended_ns BIGINT DEFAULT 0;
DROP TABLE IF EXISTS agent_events;
CREATE TABLE IF NOT EXISTS calls (
    n BIGINT, session_id VARCHAR, agent_id VARCHAR, seq BIGINT, start_ns BIGINT, end_ns BIGINT, call BLOB,
    PRIMARY KEY (session_id, agent_id, seq)
);
CREATE TABLE IF NOT EXISTS audit (
    ts_ns BIGINT, who VARCHAR, peer_pid INTEGER, method VARCHAR, service VARCHAR, function VARCHAR,
    session_id VARCHAR, outcome VARCHAR, detail VARCHAR
);
ALTER TABLE audit ADD COLUMN IF NOT EXISTS seq BIGINT DEFAULT 0;
ALTER TABLE audit ADD COLUMN IF NOT EXISTS client_label VARCHAR DEFAULT '';
"""
# calls: one row per call. n is the colony's own order (the cursor it hands
# to clients); (session, agent, seq) is the agent's call number, so a pull
# that returns a call twice stores it once. agent_events held an earlier
# build's two events a call; it is dropped (docs/architecture.md).


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
    seq: int = 0  # its number, given by the store: the journal's replay skips those colony.duckdb has
    client_label: str = ""  # what the client said it is ("via MCP: ..."): a label, never an identity

    def numbered(self, seq: int) -> AuditRow:
        """This row with its number (dataclasses.replace took 4 us a row)."""
        return AuditRow(self.ts_ns, self.who, self.peer_pid, self.method, self.service, self.function,
                        self.session_id, self.outcome, self.detail, seq, self.client_label)


# Seconds between two writes behind, while less than WRITE_ROWS are held. A
# transaction costs about 5 ms of CPU here whatever it holds (8 sessions and
# 16 audit rows: 5.5 ms; 400 and 800: 23 ms), mostly the sessions' upsert:
# at 0.1 s the writer took 18% of the colony's CPU under bench/routing.py.
WRITE_EVERY = 0.5
WRITE_ROWS = 5_000

# Calls held while colony.duckdb cannot be written; more are dropped
# (the agent still has them) and counted.
MAX_HELD_CALLS = 100_000

_audit_columns = operator.attrgetter(*(f.name for f in dataclasses.fields(AuditRow)))  # a row as a tuple, not deep-copied
CallRow = tuple[int, str, str, int, int, int, bytes]  # n, session, agent, seq, start_ns, end_ns, call


@dataclass
class Batch:
    """What one transaction writes."""

    audit: list[AuditRow]
    sessions: dict[str, tuple[pb.DebugSession, bytes]]  # by id: the session and its saved bytes
    calls: list[CallRow]
    journaled: int = 0  # every journal entry up to this number is in this batch or an earlier one

    def describe(self) -> str:
        return f"{len(self.audit)} audit row(s), {len(self.sessions)} session(s) and {len(self.calls)} call(s)"


class ColonyStore:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA)
        self.health = StorageHealth(path)
        self._saved: dict[str, bytes] = {}  # session id -> what was last saved
        self._newest: dict[tuple[str, str], int] = {}  # (session id, agent id) -> newest call seq saved
        self._on_disk: dict[str, int] = {}  # session id -> its highest call n written (once read or written)
        self._n = -1  # the next colony call order; read from the file on first use
        self._held_audit: list[AuditRow] = []
        self._held_sessions: dict[str, pb.DebugSession] = {}
        self._held_calls: list[CallRow] = []
        self.calls_dropped = 0
        self._last_try = 0.0
        self._last_batch = 0.0  # when the last write behind was handed to the writer
        self._writes = self._db.cursor()  # the writer's own connection: reads on _db go on meanwhile
        self._writer = Writer()
        self._inflight: Batch | None = None  # being written by the writer thread
        self.submitted = 0  # batches handed to the writer so far
        self.written = 0  # of those, how many have finished (written, or failed and held again)
        self._replay_journal(path.parent)
        self._audit_seq = max([self._stored_seq()] + [r.seq for r in self._held_audit])
        self._entries = 0  # journal entries numbered so far
        self.journal = Journal(path.parent)

    def close(self) -> None:
        self.journal.drain()
        self.flush(force=True)
        self.journal.close(everything_stored=not self.holding)
        self._writer.close()
        self._writes.close()
        self._db.close()

    def _replay_journal(self, directory: Path) -> None:
        """What the journal holds and colony.duckdb does not (a colony that
        died before writing it there) is written there; then the files go."""
        entries = list(read_entries(directory))
        if not entries:
            remove_files(directory)
            return
        stored = self._stored_seq()
        audit = [AuditRow(e.audit.timestamp_unix_ns, e.audit.who, e.audit.peer_pid, e.audit.method, e.audit.service,
                          e.audit.function, e.audit.session_id, e.audit.outcome, e.audit.detail, e.seq,
                          e.audit.client_label)
                 for e in entries if e.seq > stored]
        sessions: dict[str, tuple[pb.DebugSession, bytes]] = {}
        for e in entries:
            if e.session:
                s = pb.DebugSession.FromString(e.session)
                known = self._db.execute("SELECT 1 FROM sessions WHERE session_id = ?", [s.session_id]).fetchone()
                if known is None:
                    sessions[s.session_id] = (s, e.session)
        if audit or sessions:
            try:
                self._write(Batch(audit, sessions, []))
            except duckdb.Error as exc:  # a full disk: held, and the files kept for the next start
                self._held_audit = audit
                self._held_sessions = {sid: s for sid, (s, _) in sessions.items()}
                self._saved.update({sid: blob for sid, (_, blob) in sessions.items()})
                self.health.failed(exc, f"{len(audit)} audit row(s) and {len(sessions)} session(s) from the journal")
                return
            log.warning("audit journal: wrote %d audit row(s) and %d session(s) that colony.duckdb did not hold yet",
                        len(audit), len(sessions))
        remove_files(directory)

    def _stored_seq(self) -> int:
        row = self._db.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()
        return int(row[0]) if row else 0

    def writer_fd(self) -> int:
        """Readable when a write behind has finished (call ``on_written``)."""
        return self._writer.fileno()

    @property
    def holding(self) -> bool:
        return bool(self._held_audit or self._held_sessions or self._held_calls)

    def batch_of_held(self) -> int:
        """The batch that will hold what is held now: a reply that reports it
        goes out once ``written`` reaches this number."""
        return self.submitted + (1 if self.holding else 0)

    def _journal(self, entry: pb.JournalEntry) -> None:
        self._entries += 1
        self.journal.add(self._entries, entry)

    def counters(self) -> dict[str, int]:
        inflight = self._inflight or Batch([], {}, [])
        return {
            "storage.failing": int(bool(self.health.error)),
            "storage.write_failures": self.health.failures,
            "storage.held_audit_rows": len(self._held_audit) + len(inflight.audit),
            "storage.held_sessions": len(self._held_sessions.keys() | inflight.sessions.keys()),
            "storage.held_calls": len(self._held_calls) + len(inflight.calls),
            "storage.calls_dropped": self.calls_dropped,
            "storage.batches_written": self.written,
            "storage.journal_appends": self.journal.written,
            "storage.journal_failures": self.journal.failures,
        }

    def _take(self, force: bool) -> Batch | None:
        """What is held, as the next batch; None if nothing is, or while
        writes fail and the last try was under a second ago."""
        if self._inflight is not None or not self.holding:
            return None
        if self.health.error and not force and time.monotonic() - self._last_try < RETRY_INTERVAL:
            return None
        self._last_try = time.monotonic()
        batch = Batch(self._held_audit, {sid: (s, self._saved[sid]) for sid, s in self._held_sessions.items()},
                      self._held_calls, self._entries)
        self._held_audit, self._held_sessions, self._held_calls = [], {}, []
        self._inflight = batch
        self.submitted += 1
        return batch

    def write_behind(self, now: float | None = None) -> bool:
        """Hand what is held to the writer thread, if it is idle and the last
        batch went WRITE_EVERY ago (or WRITE_ROWS are held); True if it did.
        No reply waits for it (they wait for the journal), so fewer, larger
        transactions cost the colony less: each costs milliseconds of CPU."""
        now = time.monotonic() if now is None else now
        if now - self._last_batch < WRITE_EVERY and len(self._held_calls) + len(self._held_audit) < WRITE_ROWS:
            return False
        batch = self._take(force=False)
        if batch is None:
            return False
        self._last_batch = now
        self._writer.submit(lambda: self._write(batch))
        return True

    def on_written(self, wait: bool = False) -> int:
        """Take the writer's outcomes: a batch written is done; one that
        failed is held again, ahead of what came since. Returns ``written``."""
        for error in self._writer.finished(wait):
            self._finished(error)
        return self.written

    def _finished(self, error: BaseException | None) -> None:
        batch, self._inflight = self._inflight, None
        self.written += 1
        if batch is None:
            return
        if error is None:
            self.health.succeeded()
            self.journal.covered(batch.journaled)
            for n, sid, *_ in batch.calls:
                if sid in self._on_disk:
                    self._on_disk[sid] = max(self._on_disk[sid], n)
            return
        self._held_audit = batch.audit + self._held_audit
        self._held_calls = batch.calls + self._held_calls
        for sid, (s, _) in batch.sessions.items():
            self._held_sessions.setdefault(sid, s)  # a newer copy held since wins
        if not isinstance(error, duckdb.Error):  # a bug, not the disk: say where, and hold the rows all the same
            log.error("writing %s failed", batch.describe(), exc_info=error)
            error = duckdb.Error(f"{type(error).__name__}: {error}")
        self.health.failed(error, batch.describe())

    def flush(self, force: bool = False) -> None:
        """Write everything held now, in this thread, after any write behind
        has finished. While writes fail, try at most once a second unless
        `force`."""
        while self._inflight is not None:
            self.on_written(wait=True)
        batch = self._take(force)
        if batch is None:
            return
        try:
            self._write(batch)
        except duckdb.Error as exc:
            self._finished(exc)
            return
        self._finished(None)

    def _write(self, batch: Batch) -> None:
        """One transaction on the writer's connection (the writer thread's,
        or the caller's while the writer is idle)."""
        db = self._writes
        try:
            db.execute("BEGIN TRANSACTION")
            self._write_batch(db, batch)
            db.execute("COMMIT")
        except duckdb.Error:
            with contextlib.suppress(duckdb.Error):  # no transaction left to roll back
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _write_batch(db: duckdb.DuckDBPyConnection, batch: Batch) -> None:
        if batch.audit:
            columns = [list(c) for c in zip(*map(_audit_columns, batch.audit), strict=True)]
            db.execute(
                "INSERT INTO audit SELECT unnest($1::BIGINT[]), unnest($2::VARCHAR[]), unnest($3::INTEGER[]), "
                "unnest($4::VARCHAR[]), unnest($5::VARCHAR[]), unnest($6::VARCHAR[]), unnest($7::VARCHAR[]), "
                "unnest($8::VARCHAR[]), unnest($9::VARCHAR[]), unnest($10::BIGINT[]), unnest($11::VARCHAR[])",
                columns,
            )
        if batch.sessions:
            held = [s for s, _ in batch.sessions.values()]
            db.execute(
                "INSERT OR REPLACE INTO sessions (session_id, service, agent_id, status, expires_ns, started_ns, session, open, "
                "ended_ns) SELECT unnest($1::VARCHAR[]), unnest($2::VARCHAR[]), unnest($3::VARCHAR[]), unnest($4::VARCHAR[]), "
                "unnest($5::BIGINT[]), unnest($6::BIGINT[]), unnest($7::BLOB[]), unnest($8::BOOLEAN[]), unnest($9::BIGINT[])",
                [
                    [s.session_id for s in held],
                    [s.service for s in held],
                    [s.agent_id for s in held],
                    [s.status for s in held],
                    [s.expires_unix_ns for s in held],
                    [s.started_unix_ns for s in held],
                    [blob for _, blob in batch.sessions.values()],
                    [is_open(s) for s in held],
                    [s.ended_unix_ns for s in held],
                ],
            )
        if batch.calls:
            columns = [list(c) for c in zip(*batch.calls, strict=True)]
            db.execute(
                "INSERT OR IGNORE INTO calls SELECT unnest($1::BIGINT[]), unnest($2::VARCHAR[]), unnest($3::VARCHAR[]), "
                "unnest($4::BIGINT[]), unnest($5::BIGINT[]), unnest($6::BIGINT[]), unnest($7::BLOB[])",
                columns,
            )

    def _unwritten_audit(self) -> list[AuditRow]:
        return (self._inflight.audit if self._inflight else []) + self._held_audit

    def _unwritten_sessions(self) -> dict[str, pb.DebugSession]:
        """Sessions saved but not yet written: held ones are newer than those being written."""
        if self._inflight is None:
            return self._held_sessions
        return {**{sid: s for sid, (s, _) in self._inflight.sessions.items()}, **self._held_sessions}

    def _unwritten_calls(self) -> list[CallRow]:
        return (self._inflight.calls if self._inflight else []) + self._held_calls

    def audit(self, rows: list[AuditRow]) -> None:
        """Audit rows, numbered: in the journal with its next append, in
        colony.duckdb with the next batch."""
        for row in rows:
            self._audit_seq += 1
            row = row.numbered(self._audit_seq)
            self._journal(pb.JournalEntry(seq=row.seq, audit=pb.AuditEntry(
                timestamp_unix_ns=row.ts_ns, who=row.who, peer_pid=row.peer_pid, method=row.method,
                service=row.service, function=row.function, session_id=row.session_id, outcome=row.outcome,
                detail=row.detail, client_label=row.client_label)))
            self._held_audit.append(row)

    def audit_rows(self, since_ns: int = 0, limit: int = 1000) -> tuple[list[AuditRow], bool]:
        """The newest `limit` entries since `since_ns`, oldest first; and whether more matched."""
        rows = [
            AuditRow(*r)
            for r in self._db.execute(
                "SELECT * FROM audit WHERE ts_ns >= ? ORDER BY ts_ns DESC LIMIT ?", [since_ns, limit + 1]
            ).fetchall()
        ]
        on_disk = {r.seq for r in rows}  # a batch just committed is in both until it is marked written
        rows += [r for r in self._unwritten_audit() if r.ts_ns >= since_ns and r.seq not in on_disk]
        rows.sort(key=lambda r: r.ts_ns, reverse=True)
        return list(reversed(rows[:limit])), len(rows) > limit

    def save_session(self, s: pb.DebugSession, created: bool = False) -> None:
        """Written at the next flush; read back at once from memory. A
        session just `created` is journaled too, its cursors at 0."""
        blob = s.SerializeToString(deterministic=True)
        if self._saved.get(s.session_id) == blob:
            return  # unchanged: most pulls of an idle session
        if created:
            journaled = blob
            if any(part.cursor for part in s.parts):  # not so when just started: no call pulled yet
                fresh = pb.DebugSession.FromString(blob)
                for part in fresh.parts:
                    part.cursor = 0
                journaled = fresh.SerializeToString(deterministic=True)
            self._journal(pb.JournalEntry(session=journaled))
        self._saved[s.session_id] = blob
        self._held_sessions[s.session_id] = pb.DebugSession.FromString(blob)

    def session(self, session_id: str) -> pb.DebugSession | None:
        unwritten = self._unwritten_sessions()
        if session_id in unwritten:
            return unwritten[session_id]
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
        for session_id, s in self._unwritten_sessions().items():  # newer than what is written
            found.pop(session_id, None)
            if (not service or s.service == service) and (not active_only or s.status == "active"):
                found[session_id] = s
        return sorted(found.values(), key=lambda s: s.started_unix_ns)

    def open_sessions(self) -> list[pb.DebugSession]:
        """Sessions the colony still pulls calls for (at start-up)."""
        rows = self._db.execute("SELECT session FROM sessions WHERE open ORDER BY started_ns").fetchall()
        return [pb.DebugSession.FromString(r[0]) for r in rows]

    def save_calls(self, session_id: str, agent_id: str, calls: list[pb.Call]) -> int:
        """Keep calls pulled from one agent, each once; returns how many were new."""
        key = (session_id, agent_id)
        if not calls:
            return 0
        if key not in self._newest:
            row = self._db.execute(
                "SELECT coalesce(max(seq), -1) FROM calls WHERE session_id = ? AND agent_id = ?", [session_id, agent_id]
            ).fetchone()
            self._newest[key] = int(row[0]) if row else -1
        calls = [c for c in calls if c.seq > self._newest[key]]
        if not calls:
            return 0
        self._newest[key] = max(c.seq for c in calls)
        room = max(MAX_HELD_CALLS - len(self._held_calls) - len(self._inflight.calls if self._inflight else ()), 0)
        if len(calls) > room:
            self.calls_dropped += len(calls) - room
            calls = calls[:room]
        first = self._next_n()
        self._held_calls.extend(
            (first + i, session_id, agent_id, c.seq, c.start_unix_ns, c.end_unix_ns, c.SerializeToString())
            for i, c in enumerate(calls)
        )
        self._n = first + len(calls)
        return len(calls)

    def _next_n(self) -> int:
        if self._n < 0:
            row = self._db.execute("SELECT coalesce(max(n), 0) FROM calls").fetchone()
            self._n = int(row[0]) + 1 if row else 1
        return self._n

    def calls(self, session_id: str, after_n: int, since_ns: int, until_ns: int, limit: int) -> list[tuple[int, pb.Call]]:
        """A page of a session's calls in the order the colony received
        them, each with its colony order (the next cursor). A time span
        keeps the calls that overlap it."""
        sql, params = "SELECT n, call FROM calls WHERE session_id = ? AND n > ?", [session_id, after_n]
        if since_ns:
            sql += " AND end_ns >= ?"
            params.append(since_ns)
        if until_ns:
            sql += " AND start_ns <= ?"
            params.append(until_ns)
        rows: list[tuple[int, bytes]] = []
        if self._disk_upto(session_id) > after_n:  # else all it has after the cursor is in memory (a follower)
            rows = [(int(r[0]), bytes(r[1]))
                    for r in self._db.execute(sql + " ORDER BY n LIMIT ?", [*params, limit]).fetchall()]
        if len(rows) < limit:  # then those not written yet, which come after
            floor = rows[-1][0] if rows else after_n  # a batch just committed is in both until it is marked
            rows += [
                (n, blob)
                for n, sid, _, _, start_ns, end_ns, blob in self._unwritten_calls()
                if sid == session_id and n > floor
                and (not since_ns or end_ns >= since_ns)
                and (not until_ns or start_ns <= until_ns)
            ][: limit - len(rows)]
        return [(n, pb.Call.FromString(blob)) for n, blob in rows]

    def _disk_upto(self, session_id: str) -> int:
        if session_id not in self._on_disk:
            row = self._db.execute("SELECT coalesce(max(n), -1) FROM calls WHERE session_id = ?",
                                   [session_id]).fetchone()
            self._on_disk[session_id] = int(row[0]) if row else -1
        return self._on_disk[session_id]

    def purge_candidates(self, before_ns: int, limit: int) -> list[tuple[str, str, int]]:
        """Ended sessions (nothing left to pull) that ended before `before_ns`, oldest first."""
        rows = self._db.execute(
            "SELECT session_id, status, ended_ns FROM sessions WHERE NOT coalesce(open, false) AND status != 'active' "
            "AND ended_ns > 0 AND ended_ns < ? ORDER BY ended_ns LIMIT ?",
            [before_ns, limit],
        ).fetchall()
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    def purge(self, session_ids: list[str]) -> tuple[int, int]:
        """Delete sessions and their calls (never audit rows); returns (sessions, calls) deleted."""
        if not session_ids or self._inflight is not None or self._held_sessions.keys() & set(session_ids):
            return 0, 0  # not beside a write behind, nor while a newer copy of one waits to be written
        try:
            self._db.execute("BEGIN TRANSACTION")
            calls = self._db.execute(
                "DELETE FROM calls WHERE session_id IN (SELECT unnest($1::VARCHAR[])) RETURNING n", [session_ids]
            ).fetchall()
            sessions = self._db.execute(
                "DELETE FROM sessions WHERE session_id IN (SELECT unnest($1::VARCHAR[])) RETURNING session_id", [session_ids]
            ).fetchall()
            self._db.execute("COMMIT")
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                self._db.execute("ROLLBACK")
            self.health.failed(exc, "nothing (a purge was undone)")
            return 0, 0
        for sid in session_ids:
            self._saved.pop(sid, None)
        self._newest = {k: v for k, v in self._newest.items() if k[0] not in set(session_ids)}
        for sid in session_ids:
            self._on_disk.pop(sid, None)
        return len(sessions), len(calls)
