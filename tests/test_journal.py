"""The colony's audit journal (coral/colonyd/journal.py): a reply waits for
its audit row's append, not for a DuckDB transaction, and a colony that
dies before colony.duckdb has the row gets it back at its next start. Real
files, the real store and its threads; the crash is the store dropped
without its final write."""

from __future__ import annotations

from pathlib import Path

import pytest

from coral.colonyd import journal
from coral.colonyd.store import AuditRow, ColonyStore
from coral.proto import coral_pb2 as pb


def row(i: int) -> AuditRow:
    return AuditRow(1_000 + i, "uid:0", 7, "AttachUprobe", "payments", "validate_card", f"dbg-{i}", "OK", "")


def a_session(sid: str) -> pb.DebugSession:
    return pb.DebugSession(session_id=sid, service="payments", status="active", started_unix_ns=5,
                           parts=[pb.SessionPart(agent_id="a", cursor=41, session=pb.DebugSession(status="active"))])


def crash(store: ColonyStore) -> None:
    """The process dies: appends done stay on disk, nothing else is written."""
    store.journal._writer.close()
    store._writer.close()
    store._writes.close()
    store._db.close()


def journaled(store: ColonyStore) -> None:
    store.journal.behind()
    store.journal.on_written(wait=True)


def test_rows_in_the_journal_only_are_back_after_a_crash(tmp_path: Path) -> None:
    store = ColonyStore(tmp_path / "colony.duckdb")
    store.audit([row(1), row(2)])
    store.save_session(a_session("dbg-new"), created=True)
    before = store.journal.batch_of_pending()
    journaled(store)
    assert store.journal.written >= before  # the replies for these rows may go now
    assert len(journal.journal_files(tmp_path)) == 1
    crash(store)

    again = ColonyStore(tmp_path / "colony.duckdb")
    try:
        rows, _ = again.audit_rows()
        assert [(r.session_id, r.seq) for r in rows] == [("dbg-1", 1), ("dbg-2", 2)]
        s = again.session("dbg-new")
        assert s is not None and s.status == "active" and [p.cursor for p in s.parts] == [0]  # pulled again from 0
        assert journal.journal_files(tmp_path) == []  # all in colony.duckdb now
        again.audit([row(3)])  # numbering goes on after the replayed rows
        again.flush()
        assert [r.seq for r in again.audit_rows()[0]] == [1, 2, 3]
    finally:
        again.close()


def test_rows_colony_duckdb_already_had_are_not_written_twice(tmp_path: Path) -> None:
    store = ColonyStore(tmp_path / "colony.duckdb")
    store.audit([row(1)])
    store.save_session(a_session("dbg-1"), created=True)
    journaled(store)
    (path,) = journal.journal_files(tmp_path)
    kept = path.read_bytes()
    store.flush()  # in colony.duckdb too
    s = a_session("dbg-1")
    s.parts[0].cursor = 99
    store.save_session(s)
    store.flush()
    store.journal.on_written(wait=True)
    crash(store)
    path.write_bytes(kept)  # the colony died after colony.duckdb had them, before the file was deleted

    again = ColonyStore(tmp_path / "colony.duckdb")
    try:
        assert [r.seq for r in again.audit_rows()[0]] == [1]
        s2 = again.session("dbg-1")
        assert s2 is not None and s2.parts[0].cursor == 99  # what colony.duckdb had, not the journal's copy
    finally:
        again.close()


def test_files_go_once_colony_duckdb_holds_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "MAX_FILE_BYTES", 200)  # a new file every few appends
    store = ColonyStore(tmp_path / "colony.duckdb")
    try:
        for i in range(30):
            store.audit([row(i)])
            journaled(store)
            if i % 10 == 9 and i < 29:
                store.flush()
        many = len(journal.journal_files(tmp_path))  # counted before the flush below lets the thread prune them
        store.flush()
        store.audit([row(30)])
        journaled(store)  # an append first deletes the files whose entries colony.duckdb holds
        assert many >= 3 and len(journal.journal_files(tmp_path)) <= 2  # the open file, and the one it followed
        assert len(store.audit_rows()[0]) == 31
    finally:
        store.close()
    assert journal.journal_files(tmp_path) == []  # a clean stop leaves no journal


def test_a_record_cut_short_ends_the_reading(tmp_path: Path) -> None:
    store = ColonyStore(tmp_path / "colony.duckdb")
    store.audit([row(1), row(2)])
    journaled(store)
    crash(store)
    (path,) = journal.journal_files(tmp_path)
    with open(path, "ab") as f:
        f.write(b"\x40\x00\x00\x00partial")  # a length, and less than it promises: the crash came mid-write
    assert [e.seq for e in journal.read_entries(tmp_path)] == [1, 2]
    again = ColonyStore(tmp_path / "colony.duckdb")
    try:
        assert [r.seq for r in again.audit_rows()[0]] == [1, 2]
    finally:
        again.close()


def test_an_append_cut_short_loses_no_later_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk cuts an append short: the torn record ends its file, and
    the next append starts a new one, so the entries after it are read."""
    store = ColonyStore(tmp_path / "colony.duckdb")
    store.audit([row(1)])
    journaled(store)
    real_write = journal._write

    def short_write(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data)[:5])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal, "_write", short_write)
    store.audit([row(2)])
    journaled(store)
    assert store.journal.failures == 1
    monkeypatch.setattr(journal, "_write", real_write)
    store.audit([row(3)])
    journaled(store)
    crash(store)
    assert [e.seq for e in journal.read_entries(tmp_path)] == [1, 3]  # 2 is still held for colony.duckdb, not lost here
    again = ColonyStore(tmp_path / "colony.duckdb")
    try:
        assert [r.seq for r in again.audit_rows()[0]] == [1, 3]
    finally:
        again.close()


def test_an_idle_colony_keeps_no_journal_once_colony_duckdb_has_it(tmp_path: Path) -> None:
    store = ColonyStore(tmp_path / "colony.duckdb")
    try:
        store.audit([row(1)])
        store.save_session(a_session("dbg-1"), created=True)
        journaled(store)
        store.flush()  # colony.duckdb holds them: with nothing pending, the journal's files go
        store.journal.on_written(wait=True)
        assert journal.journal_files(tmp_path) == []
    finally:
        store.close()
