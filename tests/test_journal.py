"""The colony's audit journal (coral/colonyd/journal.py): a reply waits for
its audit row's append, not for a DuckDB transaction, and a colony that
dies before colony.duckdb has the row gets it back at its next start. Real
files, the real store and its threads; the crash is the store dropped
without its final write."""

from __future__ import annotations

import os
import pwd
import threading
import time
from pathlib import Path

import pytest
import zmq
from google.protobuf.message import Message

from coral.colonyd import journal
from coral.colonyd.main import Colony
from coral.colonyd.routing import Outgoing
from coral.colonyd.store import AuditRow, ColonyStore
from coral.daemon import wire
from coral.daemon.client import Client
from coral.daemon.config import load_config
from coral.daemon.runtime import Notifier, ShutdownSignals
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


# ------------------------------------- the colony's loop: no answer before its row is synced

FAKE_AGENT_HELLO = pb.AgentHello(agent_id="fake", heartbeat_interval_ms=1000,
                                 services=[pb.ServiceInstance(service="payments", pid=7, kind="native", agent_id="fake")])


def fake_agent(endpoint: str, stop: threading.Event) -> None:
    """An agent on the colony's backend that starts and ends sessions at
    once, and holds no pull (answered with the session as it is)."""
    s: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    s.send_multipart(wire.encode_ready(FAKE_AGENT_HELLO))
    sessions: dict[str, pb.DebugSession] = {}
    while not stop.is_set():
        if not s.poll(100):
            s.send_multipart(wire.encode_signal(wire.Command.HEARTBEAT))
            continue
        frame = wire.decode(s.recv_multipart())
        if frame.command != wire.Command.REQUEST:
            continue
        if frame.name == "AttachUprobe":
            attach = wire.parse_body(pb.AttachUprobeRequest, frame.body)
            sessions[attach.session_id] = pb.DebugSession(session_id=attach.session_id, service=attach.service,
                                                          function=attach.function, agent_id="fake", status="active")
            response: Message = pb.AttachUprobeResponse(session=sessions[attach.session_id])
        elif frame.name == "DetachUprobe":
            session = sessions[wire.parse_body(pb.DetachUprobeRequest, frame.body).session_id]
            session.status = "detached"
            response = pb.DetachUprobeResponse(session=session)
        else:
            session = sessions[wire.parse_body(pb.QueryUprobeEventsRequest, frame.body).session_id]
            response = pb.QueryUprobeEventsResponse(session=session)
        s.send_multipart(wire.encode_reply(frame.request_id, response))
    s.close()


def test_the_colony_answers_a_change_only_after_its_audit_row_is_synced(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/security.md, "Audit": a row is on disk before the reply it
    describes is sent. A real colony's loop (in this process, so its
    journal's fdatasync and its sends can be watched), a fake agent and a
    client: every attach's and detach's answer leaves after an fdatasync
    that followed the append of its row."""
    user = pwd.getpwuid(os.getuid()).pw_name
    config_file = tmp_path / "coral.toml"
    config_file.write_text(f'[colony]\nagent_users = ["{user}"]\n')
    monkeypatch.setenv("CORAL_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("CORAL_STATE_DIR", str(tmp_path / "state"))
    config = load_config(str(config_file))
    for path in (config.colony_runtime_dir, config.colony_state_dir):
        path.mkdir(parents=True)
    synced: set[tuple[str, str]] = set()  # (method, session) of the rows in the journal at the end of an fdatasync
    answered: list[tuple[str, bool]] = []  # (session, its rows were synced when its answer was sent)
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        synced.update((e.audit.method, e.audit.session_id) for e in journal.read_entries(config.colony_state_dir)
                      if e.HasField("audit"))

    monkeypatch.setattr(os, "fdatasync", fdatasync)  # the journal's, called as os.fdatasync
    real_send_now = Colony._send_now

    def send_now(self: Colony, m: Outgoing) -> None:
        if m.socket == "frontend" and m.frames[-2] == b"OK" and counting.is_set():
            body = m.frames[-1]
            session_id = pb.AttachUprobeResponse.FromString(body).session.session_id
            method = "DetachUprobe" if pb.DetachUprobeResponse.FromString(body).session.status == "detached" \
                else "AttachUprobe"
            answered.append((session_id, (method, session_id) in synced))
        real_send_now(self, m)

    monkeypatch.setattr(Colony, "_send_now", send_now)
    signals, stop = ShutdownSignals(), threading.Event()
    ready, counting = threading.Event(), threading.Event()  # counting: only attaches and detaches are asked

    def run_colony() -> None:
        colony = Colony(config)
        ready.set()
        colony.run(signals, Notifier())

    loop = threading.Thread(target=run_colony)
    loop.start()
    ready.wait(10)
    agent = threading.Thread(target=fake_agent, args=(config.colony_backend, stop))
    agent.start()
    try:
        with Client(config.colony_frontend, 10) as client:
            # Each ask is a round trip through the loop, which lists the fake agent's service once it has read
            # its hello: the answer itself is what is awaited, no sleeping between asks.
            end = time.monotonic() + 10
            while not client.call("ListServices", pb.ListServicesRequest()).services:  # type: ignore[attr-defined]
                assert time.monotonic() < end, "the colony never listed the fake agent's service"
            counting.set()
            for _ in range(20):
                reply = client.call("AttachUprobe", pb.AttachUprobeRequest(service="payments", function="f",
                                                                           duration_ms=60_000))
                client.call("DetachUprobe", pb.DetachUprobeRequest(session_id=reply.session.session_id))  # type: ignore[attr-defined]
    finally:
        stop.set()
        signals.requested = True
        agent.join(10)
        loop.join(30)
    assert len(answered) == 40 and all(ok for _, ok in answered), answered
