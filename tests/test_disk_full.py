"""A full disk under the state directory, for real: a small tmpfs mounted
as the agent's (and then the colony's) state directory and filled up
mid-session. A clear error in the log and in the status, the daemon
serves what it had written, holds what it could not, and writes it once
there is room again."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, NativeService, coralctl, start_agent, start_attach, start_colony


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs, unmounted after the test whatever happens."""
    mount = tmp_path / "state"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0750", "coral-test", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of the disk: fallocate what statvfs says is
    free, then write until the kernel says ENOSPC."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    subprocess.run(["fallocate", "-l", str(st.f_bavail * st.f_frsize), str(filler)], check=False)
    try:
        with open(filler, "ab") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    assert filler.exists()
    return filler


def ping(endpoint: str) -> dict[str, int]:
    with Client(endpoint, 10) as c:
        return dict(c.call("Ping", pb.PingRequest()).counters)  # type: ignore[attr-defined]


def events(env: CoralEnv, session_id: str, *flags: str) -> int:
    out = coralctl(env, *flags, "--output", "json", "debug", "events", session_id)
    assert out.returncode == 0, out.stderr
    return sum(1 for line in out.stdout.splitlines() if '"kind":"call"' in line)


def test_the_agents_disk_fills_mid_session(coral_env: CoralEnv, bpf: None, payments_binary: Path, small_disk: Path) -> None:
    coral_env.env["CORAL_STATE_DIR"] = str(small_disk)
    agent = start_agent(coral_env)
    payments = NativeService(coral_env, payments_binary, sleep_ms=0)
    try:
        attach, first = start_attach(coral_env, "payments", "validate_card", "--local", "--duration", "5m", "--no-save")
        sid = first["session_id"]
        assert payments.call(500) == "done 500 declined 50"
        assert events(coral_env, sid, "--local") == 500  # drained (a question reads what is not written yet too)
        while ping(coral_env.endpoint("agent.sock"))["storage.pending_calls"]:
            pass  # until they are written (within agent.flush_interval), before the disk fills
        filler = fill(small_disk)
        assert payments.call(2000) == "done 2000 declined 200"
        # The next write fails: what was written is served, then what is held in
        # memory. (A first small batch may still fit in space the database file
        # already owns: 506 of 2,500 were written in one run.)
        while (counters := ping(coral_env.endpoint("agent.sock")))["storage.pending_calls"]:
            pass  # until the loop has tried to write them (within agent.flush_interval)
        assert counters["storage.failing"] == 1 and 0 < counters["storage.held_calls"] <= 2000, counters
        assert events(coral_env, sid, "--local") == 2500  # nothing held is hidden
        listed = coralctl(coral_env, "--local", "--output", "json", "debug", "sessions")
        (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (row["status"], row["status_reason"]) == ("active", "storage: No space left on device")
        # Room again: the next write takes everything held, and nothing was lost.
        filler.unlink()
        assert events(coral_env, sid, "--local") == 2500
        counters = ping(coral_env.endpoint("agent.sock"))
        assert (counters["storage.failing"], counters["storage.held_calls"]) == (0, 0)
        assert coralctl(coral_env, "--local", "debug", "detach", sid).returncode == 0
        out, _ = attach.communicate(timeout=30)
        summary = json.loads(out.splitlines()[-1])
        assert (summary["status"], summary["calls"], summary["lost"]) == ("detached", 2500, {})
    finally:
        payments.stop()
        agent.stop()
    log = agent.output()
    held = (
        rf"cannot write {small_disk}/agent/agent.duckdb: No space left on device; "
        r"\d+ call\(s\) and 0 session row\(s\) held in memory, retrying"
    )
    assert re.search(held, log), log
    assert f"writing {small_disk}/agent/agent.duckdb again: everything held in memory is written" in log
    db = duckdb.connect(str(small_disk / "agent" / "agent.duckdb"), read_only=True)
    assert db.execute("SELECT count(*) FROM calls WHERE session_id = ?", [sid]).fetchone() == (2500,)
    db.close()


def test_the_colonys_disk_fills_mid_session(coral_env: CoralEnv, bpf: None, payments_binary: Path, small_disk: Path) -> None:
    from tests.test_fanout import wait_for_session
    from tests.test_native_e2e import wait_for_service

    colony_env = CoralEnv(coral_env.root, {**coral_env.env, "CORAL_STATE_DIR": str(small_disk)})
    colony = start_colony(colony_env)
    agent = start_agent(coral_env)
    payments = NativeService(coral_env, payments_binary, sleep_ms=0)
    try:
        wait_for_service(coral_env, "payments")
        filler = fill(small_disk)
        attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "5m", "--no-save")
        sid = first["session_id"]
        assert payments.call(2000) == "done 2000 declined 200"
        # The colony pulls them; it cannot write them, so it serves them from memory.
        wait_for_session(coral_env, sid, lambda s: s["calls"] == 2000)
        assert events(coral_env, sid) == 2000
        # It writes behind every 0.5 s: ask until its first write has failed.
        counters = wait_for_counter(coral_env.endpoint("colony/colony.sock"), "storage.failing", 1)
        assert counters["storage.held_calls"] > 0
        # The audit log and the session list still show everything, held rows included.
        audit = [json.loads(line) for line in coralctl(coral_env, "--output", "json", "audit").stdout.splitlines()]
        assert any(e["method"] == "AttachUprobe" and e["session_id"] == sid and e["outcome"] == "OK" for e in audit)
        listed = coralctl(coral_env, "--output", "json", "debug", "sessions")
        assert [json.loads(line)["session_id"] for line in listed.stdout.splitlines()] == [sid]
        # Room again: the colony's next tick writes what it held.
        filler.unlink()
        wait_until_stored(coral_env.endpoint("colony/colony.sock"))
        assert coralctl(coral_env, "debug", "detach", sid).returncode == 0
        attach.communicate(timeout=30)
    finally:
        payments.stop()
        agent.stop()
        colony.stop()
    log = colony.output()
    assert re.search(
        rf"cannot write {small_disk}/colony/colony.duckdb: No space left on device; \d+ audit row\(s\), \d+ session\(s\) "
        r"and \d+ call\(s\) held in memory, retrying",
        log,
    ), log
    assert f"writing {small_disk}/colony/colony.duckdb again: everything held in memory is written" in log
    db = duckdb.connect(str(small_disk / "colony" / "colony.duckdb"), read_only=True)
    assert db.execute("SELECT count(*) FROM audit WHERE method = 'AttachUprobe' AND session_id = ?", [sid]).fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM calls WHERE session_id = ?", [sid]).fetchone() == (2000,)
    assert db.execute("SELECT status FROM sessions WHERE session_id = ?", [sid]).fetchone() == ("detached",)
    db.close()


def wait_for_counter(endpoint: str, name: str, value: int, deadline_s: float = 10.0) -> dict[str, int]:
    """Ask until the daemon's counter `name` is `value`; its counters then."""
    import time

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        counters = ping(endpoint)
        if counters[name] == value:
            return counters
    raise AssertionError(f"{endpoint}: {name} is not {value} after {deadline_s}s")


def wait_until_stored(endpoint: str, deadline_s: float = 10.0) -> None:
    """Ask until the daemon says it writes again (it retries once a second)."""
    wait_for_counter(endpoint, "storage.failing", 0, deadline_s)
