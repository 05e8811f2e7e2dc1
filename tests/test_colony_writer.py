"""colony.duckdb written behind the loop (coral/colonyd/store.py, writer.py):
what is handed to the writer is read back at once, is on disk once
`written` says so, and a write that fails is held again, nothing lost.
A real database in a temporary directory; no sockets."""

from __future__ import annotations

import functools
import select
import time
from pathlib import Path

import duckdb

from coral.colonyd.store import WRITE_EVERY, AuditRow, ColonyStore
from coral.colonyd.writer import Writer
from coral.proto import coral_pb2 as pb


def row(n: int) -> AuditRow:
    return AuditRow(time.time_ns(), "uid:0", 1, "AttachUprobe", "svc", "f", f"dbg-{n}", "OK", "")


def test_a_write_behind_is_read_back_at_once_and_on_disk_when_written(tmp_path: Path) -> None:
    store = ColonyStore(tmp_path / "colony.duckdb")
    store.save_session(pb.DebugSession(session_id="dbg-1", service="svc", status="active", started_unix_ns=1))
    store.audit([row(1)])
    assert store.batch_of_held() == 1 and store.written == 0
    assert store.write_behind(now=100.0)
    assert not store.write_behind(now=200.0)  # one batch at a time: what comes next waits for the next one
    store.audit([row(2)])
    assert store.batch_of_held() == 2
    assert store.session("dbg-1") is not None  # in flight or written: read back either way
    assert [r.session_id for r in store.audit_rows()[0]] == ["dbg-1", "dbg-2"]
    assert store.on_written(wait=True) == 1
    assert not store.write_behind(now=100 + WRITE_EVERY / 2)  # the next batch goes WRITE_EVERY after the last
    assert store.write_behind(now=100 + WRITE_EVERY) and store.on_written(wait=True) == 2
    assert store.counters()["storage.held_audit_rows"] == 0
    store.close()
    db = duckdb.connect(str(tmp_path / "colony.duckdb"), read_only=True)
    assert db.execute("SELECT count(*) FROM audit").fetchone() == (2,)
    assert db.execute("SELECT session_id FROM sessions").fetchall() == [("dbg-1",)]
    db.close()


def test_a_batch_committed_but_not_yet_marked_written_is_listed_once(tmp_path: Path) -> None:
    """Between the writer's commit and the loop's on_written, a batch's
    rows are both in colony.duckdb and in flight: ListAudit lists each once
    (a loaded CI run saw a row twice, and a colony restart 'lose' it)."""
    store = ColonyStore(tmp_path / "colony.duckdb")
    store.audit([row(1), row(2)])
    assert store.write_behind(now=100.0)
    select.select([store.writer_fd()], [], [], 30)  # committed; on_written not called yet
    assert store._inflight is not None
    assert [r.session_id for r in store.audit_rows()[0]] == ["dbg-1", "dbg-2"]
    store.close()


def test_a_failed_write_behind_is_held_again_and_still_read(tmp_path: Path) -> None:
    store = ColonyStore(tmp_path / "colony.duckdb")
    store._writes.close()  # the writer's connection is gone: every write fails
    store.save_session(pb.DebugSession(session_id="dbg-1", service="svc", status="active"))
    store.audit([row(1)])
    assert store.write_behind(now=100.0)
    store.audit([row(2)])
    assert store.on_written(wait=True) == 1  # finished: failed, and held again ahead of what came since
    counters = store.counters()
    assert (counters["storage.failing"], counters["storage.held_audit_rows"], counters["storage.held_sessions"]) == (1, 2, 1)
    assert [r.session_id for r in store.audit_rows()[0]] == ["dbg-1", "dbg-2"]
    assert store.session("dbg-1") is not None
    assert not store.write_behind(now=100 + WRITE_EVERY)  # while writes fail, at most one try a second
    store._writer.close()


def test_the_writer_tells_every_outcome_and_leaves_no_wake_up_behind() -> None:
    """The loop reads the writer's pipe only when a byte may be owed: every
    outcome still wakes it, and once all are taken the pipe is emptied by
    at most one more call (else the loop would spin)."""
    writer = Writer("test-writer")
    try:
        outcomes: list[BaseException | None] = []
        def job(i: int) -> None:
            if i % 7 == 0:
                raise ValueError(f"job {i}")

        for i in range(200):
            writer.submit(functools.partial(job, i))
            if i % 3 == 0:
                outcomes += writer.finished()
        while len(outcomes) < 200:
            assert select.select([writer.fileno()], [], [], 5.0)[0], "an outcome came without a byte to wake the loop"
            outcomes += writer.finished()
        assert [i for i, o in enumerate(outcomes) if o is not None] == [i for i in range(200) if i % 7 == 0]
        if select.select([writer.fileno()], [], [], 0.05)[0]:  # the last byte, written after its outcome was taken
            assert writer.finished() == []
        assert select.select([writer.fileno()], [], [], 0.05)[0] == []
    finally:
        writer.close()
