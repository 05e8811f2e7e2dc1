"""Overload sheds, never stalls: a C function called in a tight loop on
three threads, probed with no per-session CPU budget, fills the ring
buffer far faster than the agent may read it ([agent] ingest_cpu_percent).
The agent keeps answering its socket, the colony and coral-run's
registration; the calls it cannot take are shed and counted by cause (in
the kernel, ringbuf_full; or past the session's cap of stored calls,
max_events: with 32-byte timing records the agent now reads them faster
than the ring buffer fills here); the summary still counts every call. Real daemons, real
BCC, bench/hot.c under coral-run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import pytest

from coral.agentd.ingest import IngestBudget
from coral.daemon.client import Client
from coral.daemon.config import ConfigError, parse_config
from coral.proto import coral_pb2 as pb
from tests.harness import REPO, CoralEnv, build_c, start_agent, start_colony
from tests.test_budget import HotService


def test_the_ingest_budget_is_a_bucket_that_stops_reading_until_it_refills() -> None:
    b = IngestBudget(percent=20)  # fills at 0.2 CPU-s a second, holds 0.02 (BURST: 0.1 s of it)
    assert b.allows(10.0) and b.resume_at(10.0) == 10.0
    b.charge(10.0, 0.015)
    assert b.allows(10.0)
    b.charge(10.0, 0.025)  # allowed while it held some; now 0.02 owed
    assert not b.allows(10.05) and b.paused_windows == 1
    assert b.resume_at(10.05) == pytest.approx(10.1, abs=1e-5)  # the 0.01 still owed, at 0.2 a second
    assert b.allows(10.11)
    assert b.allows(20.0) and b.tokens == pytest.approx(0.02)  # a long idle spell fills it, no more
    # Any second holds at most the budget, its burst and the last piece of work: a straddled
    # second of fixed windows could hold twice the budget.
    spent, t = 0.0, 30.0
    while t < 31.0:
        if b.allows(t):
            b.charge(t, 0.02)
            spent += 0.02
        t += 0.001
    assert spent <= 0.2 + 0.02 + 0.02
    assert IngestBudget(percent=0).allows(0.0)  # no limit
    with pytest.raises(ConfigError, match=r"\[agent\] ingest_cpu_percent: must be between 0 and 100, got 101"):
        parse_config({"agent": {"ingest_cpu_percent": 101}}, "t")


def test_a_hot_function_at_full_speed_is_shed_and_counted_and_nobody_waits(coral_env: CoralEnv, bpf: None,
                                                                           tmp_path: Path) -> None:
    # 5% of a CPU: far less than reading, storing and handing out the calls of
    # three threads at full speed takes, however fast the agent gets at it.
    env = coral_env.with_config("[sessions]\ncpu_budget_percent = 0\n[agent]\ningest_cpu_percent = 5\n")
    colony, agent = start_colony(env), start_agent(env)
    service = HotService(env, build_c(REPO / "bench" / "hot.c", tmp_path / "hot"))
    try:
        with Client(env.endpoint("colony/colony.sock"), 10) as c, Client(env.endpoint("agent.sock"), 10) as local:
            while not cast(pb.ListServicesResponse, c.call("ListServices", pb.ListServicesRequest())).services:
                pass  # each ask is a round trip: until coral-run's registration has reached the colony
            sid = cast(pb.AttachUprobeResponse, c.call("AttachUprobe", pb.AttachUprobeRequest(
                service="hot", function="hot", duration_ms=5000))).session.session_id
            statuses = set()
            while True:  # meanwhile, each question is answered (a client waits 10 s at most)
                local.call("Ping", pb.PingRequest())
                services = cast(pb.ListServicesResponse, c.call("ListServices", pb.ListServicesRequest())).services
                assert [s.service for s in services] == ["hot"]  # coral-run's heartbeats keep its registration
                (s,) = [s for s in cast(pb.ListDebugSessionsResponse, c.call(
                    "ListDebugSessions", pb.ListDebugSessionsRequest())).sessions if s.session_id == sid]
                statuses |= {p.session.status for p in s.parts}
                if all(p.complete for p in s.parts):
                    break
                time.sleep(0.2)  # workload: a round of questions every 0.2 s while the function runs
            ping = cast(pb.PingResponse, local.call("Ping", pb.PingRequest())).counters
        # Asked and answered while the function ran at full speed, and after; never
        # lost: the agent's heartbeats were on time.
        assert statuses == {"active", "expired"}, statuses
        assert s.status == "expired"
        lost = dict(s.lost)
        assert lost.get("ringbuf_full", 0) + lost.get("max_events", 0) > 0, lost  # shed, and counted by cause
        assert s.calls + sum(lost.values()) == s.total_calls  # every call accounted for
        assert sum(s.histogram.values()) == s.total_calls
        assert ping["ingest.paused_windows"] > 0, ping
        assert service.rate() > 0  # the program runs on
    finally:
        service.stop()
        agent.stop()
        colony.stop()
