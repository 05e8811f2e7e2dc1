"""The pure parts of sessions across agents, pulls and retention: merging
parts, the pull schedule, the purge decision, and the broker's fan-out
with fake agents (no sockets: frames in, frames out)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from google.protobuf.message import Message

from coral.colonyd.broker import Broker, Outgoing
from coral.colonyd.pulls import Pull, PullSchedule
from coral.colonyd.sessions import complete_parts_away, draining, is_open, merge, merge_many
from coral.colonyd.store import ColonyStore
from coral.daemon import wire
from coral.daemon.config import Config, ConfigError, parse_config
from coral.daemon.errors import NotFound
from coral.daemon.retention import PurgeSchedule, Retention, parse_age, purge_once
from coral.daemon.server import Peer
from coral.daemon.waiters import MAX_WAIT_MS, Waiters
from coral.histogram import bucket_of, percentile_ns
from coral.proto import coral_pb2 as pb

ROOT = Peer(uid=0, gid=0, pid=1)


def part(
    agent_id: str,
    durations: list[int],
    status: str = "active",
    reason: str = "",
    complete: bool = False,
    lost: dict[str, int] | None = None,
) -> pb.SessionPart:
    hist: dict[int, int] = {}
    for d in durations:
        hist[bucket_of(d)] = hist.get(bucket_of(d), 0) + 1
    return pb.SessionPart(
        agent_id=agent_id,
        complete=complete,
        session=pb.DebugSession(
            session_id="dbg-1",
            agent_id=agent_id,
            status=status,
            status_reason=reason,
            pids=[len(agent_id)],
            started_unix_ns=100,
            expires_unix_ns=200,
            ended_unix_ns=0 if status == "active" else 150,
            total_calls=len(durations),
            calls=len(durations),
            probes=2,
            sum_duration_ns=sum(durations),
            max_duration_ns=max(durations, default=0),
            histogram=hist,
            lost=lost or {},
        ),
    )


def test_merged_counts_add_and_percentiles_come_from_the_merged_histogram() -> None:
    rng = random.Random(3)
    fast = [rng.randint(1_000, 50_000) for _ in range(3000)]
    slow = [rng.randint(5_000_000, 9_000_000) for _ in range(1000)]
    s = pb.DebugSession(
        session_id="dbg-1", parts=[part("a", fast, lost={"sampled": 2}), part("bb", slow, lost={"sampled": 1, "ringbuf_full": 4})]
    )
    merge(s)
    assert (s.total_calls, s.calls, s.probes) == (4000, 4000, 4)
    assert s.sum_duration_ns == sum(fast) + sum(slow) and s.max_duration_ns == max(slow)
    assert dict(s.lost) == {"sampled": 3, "ringbuf_full": 4} and list(s.pids) == [1, 2]
    # Bucket by bucket: exactly the histogram of all calls together.
    together: dict[int, int] = {}
    for d in fast + slow:
        together[bucket_of(d)] = together.get(bucket_of(d), 0) + 1
    assert dict(s.histogram) == together
    everything = sorted(fast + slow)
    for p in (50, 95, 99):
        exact = everything[-(-p * len(everything) // 100) - 1]
        assert abs(percentile_ns(dict(s.histogram), p, s.max_duration_ns) - exact) <= exact / 16
    assert percentile_ns(dict(s.histogram), 95, s.max_duration_ns) >= 5_000_000  # the slow agent shows


def test_merged_status_says_which_agent_failed_and_why() -> None:
    s = pb.DebugSession(parts=[part("a", [5], "expired"), part("b", [], "failed", "target exited", complete=True)])
    merge(s)
    assert (s.status, s.status_reason, s.agent_id, s.ended_unix_ns) == ("expired", "b: target exited", "", 150)
    assert is_open(s) and draining(s)  # a's last events are not pulled yet
    s.parts[0].complete = True
    assert not is_open(s) and not draining(s)
    s = pb.DebugSession(parts=[part("a", [5]), part("b", [], "failed", "agent lost", complete=True)])
    merge(s)
    assert (s.status, s.ended_unix_ns) == ("active", 0)
    one = pb.DebugSession(parts=[part("a", [], "failed", "agent lost", complete=True)])
    merge(one)
    assert (one.status, one.status_reason, one.agent_id) == ("failed", "agent lost", "a")


def test_a_session_of_one_part_merges_as_the_general_merge_does() -> None:
    """merge() copies a single part's fields directly: the same session as
    the general merge makes, for every status and every kind of field."""
    for status in ("active", "expired", "detached", "failed", "lost"):
        one = part("a", [5, 900, 70_000], status, "why", lost={"sampled": 2, "ringbuf_full": 0})
        one.session.unanswered.extend(["pid 9"])
        one.session.inlined_into.extend(["caller"])
        one.session.return_probe, one.session.entry_instruction, one.session.probe_cost_ns = "ret", "push", 40
        fast, general = pb.DebugSession(parts=[one]), pb.DebugSession(parts=[one])
        fast.pids.append(99)  # stale: replaced, not added to
        merge(fast)
        merge_many(general)
        assert fast == general, status
        assert (fast.status, fast.agent_id, list(fast.pids)) == (status, "a", [1])
        assert dict(fast.lost) == {"sampled": 2, "ringbuf_full": 0}


def test_a_part_whose_agent_stays_away_is_completed_after_its_end_and_a_grace() -> None:
    s = pb.DebugSession(parts=[part("a", [5]), part("b", [5])])  # both expire at 200
    assert not complete_parts_away(s, lambda agent: agent == "a", now_ns=204, grace_ns=5)
    assert complete_parts_away(s, lambda agent: agent == "a", now_ns=205, grace_ns=5)
    assert [(p.session.status, p.complete) for p in s.parts] == [("active", False), ("expired", True)]


def test_a_lost_part_waits_for_its_agent_then_fails() -> None:
    from coral.colonyd.sessions import LOST_GRACE_NS

    s = pb.DebugSession(parts=[part("a", [5], "lost", "agent lost")])  # expires at 200
    merge(s)
    assert (s.status, s.status_reason) == ("lost", "agent lost")
    assert is_open(s) and not draining(s)  # open: its calls may come; not draining: nobody waits on them
    assert not complete_parts_away(s, lambda agent: False, now_ns=200 + LOST_GRACE_NS - 1, grace_ns=5)
    assert complete_parts_away(s, lambda agent: False, now_ns=200 + LOST_GRACE_NS, grace_ns=5)
    merge(s)
    assert (s.status, s.status_reason, s.parts[0].complete, is_open(s)) == ("failed", "agent lost", True, False)
    two = pb.DebugSession(parts=[part("a", [5], "detached"), part("b", [5], "lost", "agent lost")])
    merge(two)
    assert (two.status, two.status_reason) == ("detached", "b: agent lost")


def test_pull_schedule_keeps_one_held_pull_per_part_bounded_per_tick() -> None:
    sessions = [pb.DebugSession(session_id=f"dbg-{i}", parts=[part("a", []), part("b", [])]) for i in range(20)]
    schedule = PullSchedule(interval=0.5, per_tick=16)
    first = schedule.due(sessions, lambda agent: agent != "b", now=10.0)
    assert len(first) == 16 and all(p.key[1] == "a" and p.wait and not p.quick for p in first)
    for pull in first:
        schedule.sent(pull)
    rest = schedule.due(sessions, lambda agent: agent != "b", now=10.1)
    assert sorted(p.key for p in rest) == sorted({(s.session_id, "a") for s in sessions} - {p.key for p in first})
    for pull in rest:
        schedule.sent(pull)
    a_only = lambda agent: agent == "a"  # noqa: E731
    assert schedule.due(sessions, a_only, now=10.2) == []  # one held pull a part at a time
    schedule.answered(first[0], ok=True, more=False, now=10.2)
    assert schedule.due(sessions, a_only, now=10.2) == [first[0]]  # the next at once
    schedule.sent(first[0])
    schedule.answered(first[1], ok=False, more=False, now=10.2)
    assert schedule.due(sessions, a_only, now=10.3) == []  # a failed pull waits the interval
    assert schedule.due(sessions, a_only, now=10.8) == [first[1]]


def test_an_ended_part_and_a_waiting_client_are_pulled_at_once_without_a_wait() -> None:
    sessions = [pb.DebugSession(session_id="dbg-1", parts=[part("a", [])])]
    schedule = PullSchedule(interval=0.5)
    held = Pull(("dbg-1", "a"), wait=True)
    schedule.sent(held)
    assert schedule.due(sessions, lambda agent: True, now=1.0) == []
    schedule.hurry(held.key)  # a client's question: a quick pull beside the held one
    quick = schedule.due(sessions, lambda agent: True, now=1.0)
    assert quick == [Pull(held.key, wait=False, quick=True)]
    schedule.sent(quick[0])
    assert schedule.due(sessions, lambda agent: True, now=1.0) == []
    schedule.answered(quick[0], ok=True, more=True, now=1.0)  # a full page: the client waits for the rest too
    assert schedule.due(sessions, lambda agent: True, now=1.0) == quick
    schedule.sent(quick[0])
    schedule.answered(quick[0], ok=True, more=False, now=1.0)
    schedule.answered(held, ok=True, more=False, now=1.0)
    sessions[0].parts[0].session.status = "expired"
    assert schedule.due(sessions, lambda agent: True, now=1.0) == [Pull(held.key, wait=False)]  # its last events
    sessions[0].parts[0].complete = True
    assert schedule.due(sessions, lambda agent: True, now=99.0) == []


def test_an_ended_part_is_pulled_at_once_even_after_a_failed_pull() -> None:
    sessions = [pb.DebugSession(session_id="dbg-1", parts=[part("a", [])])]
    schedule = PullSchedule(interval=0.5)
    held = Pull(("dbg-1", "a"), wait=True)
    schedule.sent(held)
    schedule.answered(held, ok=False, more=False, now=1.0)  # e.g. answered at once with nothing: waits the interval
    assert schedule.due(sessions, lambda agent: True, now=1.1) == []
    sessions[0].parts[0].session.status = "detached"
    schedule.take_stirred(now=1.1)
    schedule.ended(held.key)  # its detach was answered
    assert schedule.take_stirred(now=1.1) == ["dbg-1"]
    assert schedule.due(sessions, lambda agent: True, now=1.1) == [Pull(held.key, wait=False)]


def test_between_ticks_only_the_sessions_whose_pulls_changed_are_looked_at() -> None:
    schedule = PullSchedule(interval=0.5)
    held = Pull(("dbg-1", "a"), wait=True)
    schedule.sent(held)
    assert schedule.take_stirred(now=1.0) == []  # a pull sent changes nothing that could make one due
    schedule.answered(held, ok=True, more=False, now=1.0)  # back: its next pull is due
    schedule.hurry(("dbg-2", "a"))  # a client waits
    schedule.stir("dbg-3")  # a part changed (the broker says so)
    schedule.answered(held, ok=True, more=False, now=1.0)
    assert schedule.take_stirred(now=1.0) == ["dbg-1", "dbg-2", "dbg-3"]  # each once, in order
    assert schedule.take_stirred(now=1.0) == []
    schedule.sent(held)
    schedule.answered(held, ok=False, more=False, now=1.0)  # failed: due again once its wait is over
    assert schedule.take_stirred(now=1.0) == ["dbg-1"]
    assert schedule.take_stirred(now=1.4) == []
    assert schedule.take_stirred(now=1.5) == ["dbg-1"]


def test_waiters_are_answered_on_news_or_at_their_deadline_and_bounded() -> None:
    answered: list[str] = []
    w = Waiters(per_key=2)
    assert w.hold("s1", 1000, 0.0, lambda: answered.append("a"))
    assert w.hold("s1", 99_000, 0.0, lambda: answered.append("b"))  # taken as MAX_WAIT_MS
    assert not w.hold("s1", 1000, 0.0, lambda: answered.append("c"))  # past the bound: answer it now
    assert w.hold("s2", 200, 0.0, lambda: answered.append("d"))
    assert (len(w), w.next_deadline()) == (3, 0.2)
    assert w.expire(0.5) == 1 and answered == ["d"]
    assert w.wake("s1") == 2 and answered == ["d", "a", "b"] and len(w) == 0
    assert w.hold("s3", 10_000, 0.0, lambda: answered.append("e"))
    assert w.expire(MAX_WAIT_MS / 1000 - 0.001) == 0 and w.expire(MAX_WAIT_MS / 1000) == 1


@pytest.mark.parametrize(("text", "seconds"), [("7d", 604800), ("12h", 43200), ("1d12h", 129600), ("90s", 90), ("0", 0)])
def test_retention_ages(text: str, seconds: int) -> None:
    assert parse_age(text) == seconds


def test_a_bad_retention_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"c.toml: \[colony\] retention: invalid age '7 days'"):
        parse_config({"colony": {"retention": "7 days"}}, "c.toml")
    assert parse_config({"agent": {"retention": "2h"}}, "c.toml").agent.retention == "2h"


def test_retention_purges_ended_sessions_only_oldest_first_one_batch_at_a_time() -> None:
    s = 1_000_000_000
    now = 1000 * s
    rows = [
        ("old", "expired", 100 * s),
        ("older", "failed", 50 * s),
        ("recent", "detached", 999 * s),
        ("running", "active", 10 * s),
        ("never-ended", "expired", 0),
    ]
    assert Retention(60).purgeable(rows, now) == ["older", "old"]
    assert Retention(60, batch=1).purgeable(rows, now) == ["older"]
    assert Retention(0).purgeable(rows, now) == []  # "0": keep forever
    schedule = PurgeSchedule(interval=60.0)
    assert schedule.due(0.0)
    schedule.done(5.0, more=True)
    assert schedule.due(5.0)
    schedule.done(5.0, more=False)
    assert not schedule.due(64.0) and schedule.due(65.0)


def test_a_purge_run_stops_after_enough_rows_and_says_more_is_due() -> None:
    s = 1_000_000_000
    rows = {f"s{i}": (f"s{i}", "expired", (10 + i) * s) for i in range(5)}
    purged: list[str] = []

    def purge(ids: list[str]) -> tuple[int, int]:
        purged.extend(ids)
        return len(ids), 40_000 * len(ids)  # 40,000 events each

    def candidates(before_ns: int, limit: int) -> list[tuple[str, str, int]]:
        return [r for r in rows.values() if r[0] not in purged and r[2] < before_ns][:limit]

    assert purge_once(Retention(60), candidates, purge, 1000 * s, max_rows=100_000) == (3, 120_000, True)
    assert purged == ["s0", "s1", "s2"]  # oldest first
    assert purge_once(Retention(60), candidates, purge, 1000 * s, max_rows=100_000) == (2, 80_000, False)
    assert purge_once(Retention(0), candidates, purge, 1000 * s) == (0, 0, False)


# ------------------------------------------------------------- the broker, with fake agents


def hello(agent_id: str) -> pb.AgentHello:
    return pb.AgentHello(agent_id=agent_id, services=[pb.ServiceInstance(service="payments", pid=7, agent_id=agent_id)])


def sent_to(out: list[Outgoing], socket: str) -> list[wire.Frame]:
    return [wire.decode(m.frames) for m in out if m.socket == socket]


def client_request(method: str, body: Message) -> wire.Frame:
    return wire.decode(wire.encode_request(b"r1", method, body, (b"client",)))


def agent_reply(frame: wire.Frame, body: Message | None = None, error: NotFound | None = None) -> wire.Frame:
    if body is None:
        return wire.decode(wire.encode_error(frame.request_id, error or NotFound("?"), frame.envelope))
    return wire.decode(wire.encode_reply(frame.request_id, body, frame.envelope))


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    b = Broker(Config(), ColonyStore(tmp_path / "colony.duckdb"))
    b.agent_ready(b"A", hello("a"), ROOT, 0.0)
    b.agent_ready(b"B", hello("b"), ROOT, 0.0)
    return b


def test_attach_goes_to_every_agent_and_one_refusal_is_named(broker: Broker) -> None:
    out = broker.handle_request(
        client_request("AttachUprobe", pb.AttachUprobeRequest(service="payments", function="validate_card")), ROOT, 0.0
    )
    to_agents = sent_to(out, "backend")
    assert [f.envelope for f in to_agents] == [(b"A",), (b"B",)] and not sent_to(out, "frontend")
    request = wire.parse_body(pb.AttachUprobeRequest, to_agents[0].body)
    started = part("a", []).session
    started.session_id = request.session_id
    assert broker.handle_reply(agent_reply(to_agents[0], pb.AttachUprobeResponse(session=started)), 0.1) == []
    out = broker.handle_reply(agent_reply(to_agents[1], error=NotFound("function 'validate_card' not found")), 0.1)
    reply = sent_to(out, "frontend")[0]
    assert reply.name == "OK" and reply.envelope == (b"client",)
    session = wire.parse_body(pb.AttachUprobeResponse, reply.body).session
    assert [(p.agent_id, p.session.status, p.complete) for p in session.parts] == [("a", "active", False), ("b", "failed", True)]
    assert session.status == "active" and session.status_reason == "b: function 'validate_card' not found"

    # The colony pulls from a (b has nothing to pull), and keeps each call once.
    pulls = sent_to(broker.tick(1.0), "backend")
    pulls = [f for f in pulls if f.name == "QueryUprobeEvents"]
    assert [f.envelope for f in pulls] == [(b"A",)]
    broker.agent_ready(b"A2", hello("a"), ROOT, 1.05)  # a reconnected on a new link: its pull is sent again there
    pulls = [f for f in sent_to(broker.tick(1.06), "backend") if f.name == "QueryUprobeEvents"]
    assert [f.envelope for f in pulls] == [(b"A2",)]
    calls = [pb.Call(session_id=request.session_id, agent_id="a", seq=seq, start_unix_ns=100, end_unix_ns=109,
                     duration_ns=9) for seq in (5, 6)]
    ended = part("a", [9], "expired").session
    ended.session_id = request.session_id
    for _ in range(2):  # the same page twice (say, a retried pull)
        broker.handle_reply(agent_reply(pulls[0], pb.QueryUprobeEventsResponse(calls=calls, next_cursor=6, session=ended)), 1.1)
    answer = broker.handle_request(
        client_request("QueryUprobeEvents", pb.QueryUprobeEventsRequest(session_id=request.session_id)), ROOT, 1.2
    )
    q = wire.parse_body(pb.QueryUprobeEventsResponse, sent_to(answer, "frontend")[0].body)
    assert [c.seq for c in q.calls] == [5, 6] and not q.has_more
    assert (q.session.status, q.session.total_calls) == ("expired", 1) and request.session_id not in broker.open


def test_every_agent_refusing_is_one_error_naming_each(broker: Broker) -> None:
    out = broker.handle_request(
        client_request("AttachUprobe", pb.AttachUprobeRequest(service="payments", function="nosuch")), ROOT, 0.0
    )
    replies: list[Outgoing] = []
    for frame in sent_to(out, "backend"):
        replies += broker.handle_reply(agent_reply(frame, error=NotFound("function 'nosuch' not found")), 0.1)
    reply = sent_to(replies, "frontend")[0]
    err = wire.parse_body(pb.Error, reply.body)
    assert (reply.name, err.message) == (
        "NOT_FOUND",
        "agent a: function 'nosuch' not found; agent b: function 'nosuch' not found",
    )
    assert broker.store.sessions() == []


def test_an_unknown_agent_is_refused_with_the_known_ones(broker: Broker) -> None:
    out = broker.handle_request(
        client_request("AttachUprobe", pb.AttachUprobeRequest(service="payments", function="f", agent_id="c")), ROOT, 0.0
    )
    reply = sent_to(out, "frontend")[0]
    assert (reply.name, wire.parse_body(pb.Error, reply.body).message) == (
        "NOT_FOUND",
        "no agent 'c' is connected (known agents: a, b)",
    )


def test_a_detached_session_is_drained_at_once_after_its_agent_answered_a_held_pull_with_nothing(broker: Broker) -> None:
    """An agent that answers a held pull at once with nothing makes the
    next pull wait pull_interval; once the part is detached, its last
    calls are pulled at the next turn, not after that wait."""
    t0 = time.monotonic()  # the broker times how long a held pull was held on this clock
    out = broker.handle_request(client_request("AttachUprobe", pb.AttachUprobeRequest(service="payments", function="f",
                                                                                      agent_id="a")), ROOT, t0)
    attach = sent_to(out, "backend")[0]
    started = part("a", []).session
    started.session_id = wire.parse_body(pb.AttachUprobeRequest, attach.body).session_id
    broker.handle_reply(agent_reply(attach, pb.AttachUprobeResponse(session=started)), t0)
    held = [f for f in sent_to(broker.pull(t0), "backend") if f.name == "QueryUprobeEvents"]
    assert len(held) == 1 and wire.parse_body(pb.QueryUprobeEventsRequest, held[0].body).wait_ms > 0
    broker.handle_reply(agent_reply(held[0], pb.QueryUprobeEventsResponse(session=started)), t0)  # at once, nothing
    assert sent_to(broker.pull(t0 + 0.01), "backend") == []  # the next held pull waits
    out = broker.handle_request(client_request("DetachUprobe", pb.DetachUprobeRequest(session_id=started.session_id)),
                                ROOT, t0 + 0.02)
    detach = sent_to(out, "backend")[0]
    ended = part("a", [], "detached").session
    ended.session_id = started.session_id
    broker.handle_reply(agent_reply(detach, pb.DetachUprobeResponse(session=ended)), t0 + 0.03)
    drain = [f for f in sent_to(broker.pull(t0 + 0.03), "backend") if f.name == "QueryUprobeEvents"]
    assert [wire.parse_body(pb.QueryUprobeEventsRequest, f.body).wait_ms for f in drain] == [0]
    broker.handle_reply(agent_reply(drain[0], pb.QueryUprobeEventsResponse(session=ended)), t0 + 0.04)
    assert started.session_id not in broker.open  # complete: nothing more to pull
