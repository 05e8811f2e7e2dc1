"""Following a session: a question with wait_ms is held until its session
has a new call or ends, on the colony and on the agent's local socket, and
the colony keeps one pull held on each running part (docs/protocol.md,
"Following a session" and "Pulling events"). Real daemons, real BCC, the C
demo under coral-run; the daemons' followers.* counters say whether a
question was woken by news or answered when its wait was over."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import cast

from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, NativeService, Process

LONG_WAIT_MS = 5000  # the longest a daemon holds a question: woken ones come back long before it


def counters(env: CoralEnv, socket: str) -> dict[str, int]:
    with Client(env.endpoint(socket), 10) as c:
        return dict(cast(pb.PingResponse, c.call("Ping", pb.PingRequest())).counters)


def until(what: str, check: Callable[[], bool], deadline_s: float = 20.0) -> None:
    """Ask until `check` holds (each check is a round trip to a daemon)."""
    end = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"never: {what}")


class Question(threading.Thread):
    """One QueryUprobeEvents with wait_ms, asked on its own socket."""

    def __init__(self, env: CoralEnv, socket: str, session_id: str, cursor: int, wait_ms: int) -> None:
        super().__init__(daemon=True)
        self.endpoint = env.endpoint(socket)
        self.request = pb.QueryUprobeEventsRequest(session_id=session_id, cursor=cursor, wait_ms=wait_ms)
        self.reply: pb.QueryUprobeEventsResponse | None = None
        self.start()

    def run(self) -> None:
        with Client(self.endpoint, 30) as c:
            self.reply = cast(pb.QueryUprobeEventsResponse, c.call("QueryUprobeEvents", self.request))

    def answer(self) -> pb.QueryUprobeEventsResponse:
        self.join(30)
        assert self.reply is not None, "no answer"
        return self.reply


def test_a_held_question_is_answered_by_the_next_call_and_by_the_end(
    coral_env: CoralEnv, agent: Process, payments: NativeService
) -> None:
    with Client(coral_env.endpoint("colony/colony.sock"), 30) as c:
        until("the colony lists payments",
              lambda: bool(cast(pb.ListServicesResponse, c.call("ListServices", pb.ListServicesRequest())).services))
        sid = cast(pb.AttachUprobeResponse, c.call("AttachUprobe", pb.AttachUprobeRequest(
            service="payments", function="validate_card", duration_ms=60_000))).session.session_id
    colony, local = counters(coral_env, "colony/colony.sock"), counters(coral_env, "agent.sock")
    assert colony["followers.held"] == 0
    until("the colony's pull is held on the agent", lambda: counters(coral_env, "agent.sock")["followers.held"] == 1)

    on_colony = Question(coral_env, "colony/colony.sock", sid, 0, LONG_WAIT_MS)
    on_agent = Question(coral_env, "agent.sock", sid, 0, LONG_WAIT_MS)
    until("both questions are held", lambda: counters(coral_env, "colony/colony.sock")["followers.held"] == 1
          and counters(coral_env, "agent.sock")["followers.held"] == 2)
    payments.call(1)
    for q in (on_colony, on_agent):
        reply = q.answer()
        assert len(reply.calls) == 1 and reply.calls[0].duration_ns > 0
        assert reply.session.status == "active"
    colony_after, local_after = counters(coral_env, "colony/colony.sock"), counters(coral_env, "agent.sock")
    assert colony_after["followers.woken"] - colony["followers.woken"] == 1
    assert colony_after["followers.timed_out"] == colony["followers.timed_out"]
    assert local_after["followers.woken"] - local["followers.woken"] >= 2  # ours, and the colony's pull

    cursor = on_colony.answer().next_cursor
    quiet = Question(coral_env, "colony/colony.sock", sid, cursor, 300)  # nothing comes: answered at its wait
    assert list(quiet.answer().calls) == []
    assert counters(coral_env, "colony/colony.sock")["followers.timed_out"] == colony["followers.timed_out"] + 1

    last = Question(coral_env, "colony/colony.sock", sid, cursor, LONG_WAIT_MS)
    until("the last question is held", lambda: counters(coral_env, "colony/colony.sock")["followers.held"] == 1)
    with Client(coral_env.endpoint("colony/colony.sock"), 30) as c:
        c.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid))
    ended = last.answer()
    assert list(ended.calls) == [] and ended.session.status == "detached"
    final = counters(coral_env, "colony/colony.sock")
    assert final["followers.woken"] == colony_after["followers.woken"] + 1 and final["followers.held"] == 0
    assert final["pulled_calls"] == 1  # held pulls and quick ones, each call once
