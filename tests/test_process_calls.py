"""The agent's questions to processes (coral/agentd/process_calls.py): sent
at once, answered later, each by its deadline; a silent process is not
asked again until its cooldown has passed. Real ZeroMQ sockets (inproc), a
given clock: no sleeps."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq
from google.protobuf.message import Message

from coral.agentd.process_calls import MAX_WAITING, PROCESS_TIMEOUT, ProcessCalls
from coral.agentd.registry import Registration
from coral.daemon.errors import CoralError, NotFound, Unavailable
from coral.daemon.methods import PYTHON_PROCESS_METHODS
from coral.daemon.server import Dispatcher, Peer, serve_rep_once
from coral.proto import coral_pb2 as pb

Context = zmq.Context[zmq.Socket[bytes]]


def registration(pid: int, address: str, service: str = "api") -> Registration:
    return Registration(f"r{pid}", service, pid, "/bin/true", address, "python", "", "", 0, "")


class FakeProcess:
    """A process API socket that answers only when told to."""

    def __init__(self, context: Context, address: str) -> None:
        self.rep = context.socket(zmq.REP)
        self.rep.bind(address)

        def functions(req: pb.ListFunctionsRequest, peer: Peer) -> pb.ListFunctionsResponse:
            if req.pattern == "missing":
                raise NotFound("no such function", ["present"])
            return pb.ListFunctionsResponse(functions=[f"{req.pattern}-1"])

        handlers = {name: functions for name in PYTHON_PROCESS_METHODS}
        self.dispatcher = Dispatcher(handlers, ["ListFunctions"])

    def answer(self, n: int = 1) -> None:
        for _ in range(n):
            assert self.rep.poll(2000), "the question never reached the process"
            serve_rep_once(self.rep, self.dispatcher)


@pytest.fixture
def context() -> Iterator[Context]:
    ctx: Context = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def settle(calls: ProcessCalls) -> None:
    """Read every answer that has come (the agent's loop does this when its poller says so)."""
    for sock in calls.sockets():
        if sock.poll(2000):
            calls.on_readable(sock)


def test_a_question_is_answered_later_with_the_processes_reply(context: Context) -> None:
    calls = ProcessCalls(context, 1 << 20)
    proc = FakeProcess(context, "inproc://p1")
    got: list[Message | CoralError] = []
    calls.ask(registration(1, "inproc://p1"), "ListFunctions", pb.ListFunctionsRequest(pattern="a"), got.append, 0.0)
    calls.ask(registration(1, "inproc://p1"), "ListFunctions", pb.ListFunctionsRequest(pattern="missing"), got.append, 0.0)
    assert got == [] and calls.next_deadline() == PROCESS_TIMEOUT  # nothing waited for
    proc.answer(2)
    settle(calls)
    settle(calls)
    assert isinstance(got[0], pb.ListFunctionsResponse) and list(got[0].functions) == ["a-1"]
    assert isinstance(got[1], NotFound) and got[1].suggestions == ["present"]
    assert calls.sockets() == [] and calls.next_deadline() is None
    calls.close()


def test_a_silent_process_costs_one_deadline_then_is_refused_at_once(context: Context) -> None:
    calls = ProcessCalls(context, 1 << 20)
    silent = FakeProcess(context, "inproc://silent")  # never answers
    other = FakeProcess(context, "inproc://other")
    got: list[Message | CoralError] = []
    reg = registration(2, "inproc://silent", "stuck")
    for _ in range(3):
        calls.ask(reg, "ListFunctions", pb.ListFunctionsRequest(pattern="x"), got.append, 0.0)
    calls.ask(registration(3, "inproc://other"), "ListFunctions", pb.ListFunctionsRequest(pattern="o"), got.append, 0.0)
    other.answer()
    settle(calls)
    assert len(got) == 1 and isinstance(got[0], pb.ListFunctionsResponse)  # the other one is not held up
    assert calls.expire(PROCESS_TIMEOUT - 0.01) == 0
    assert calls.expire(PROCESS_TIMEOUT) == 3  # all three waiting on it, at the first deadline
    assert [type(g) for g in got[1:]] == [Unavailable] * 3
    assert "process 2 of service 'stuck' did not answer at inproc://silent" in str(got[1])
    calls.ask(reg, "ListFunctions", pb.ListFunctionsRequest(pattern="x"), got.append, PROCESS_TIMEOUT + 1)
    assert isinstance(got[-1], Unavailable) and "(not asked again for 4s)" in got[-1].message
    assert (calls.counters["process_asks.timed_out"], calls.counters["process_asks.refused"]) == (3, 1)
    assert calls.sockets() == []
    silent.rep.close(linger=0)
    calls.close()


def test_questions_waiting_on_one_process_are_bounded(context: Context) -> None:
    calls = ProcessCalls(context, 1 << 20)
    slow = FakeProcess(context, "inproc://slow")  # bound, never answers (kept: a collected socket closes)
    got: list[Message | CoralError] = []
    reg = registration(4, "inproc://slow")
    for _ in range(MAX_WAITING + 2):
        calls.ask(reg, "ListFunctions", pb.ListFunctionsRequest(pattern="x"), got.append, 0.0)
    assert len(got) == 2 and all(isinstance(g, Unavailable) and "questions waiting already" in g.message for g in got)
    calls.forget("inproc://slow", "process 4 is no longer registered")
    assert len(got) == MAX_WAITING + 2 and str(got[-1]) == "process 4 is no longer registered"
    slow.rep.close(linger=0)
    calls.close()
    calls.ask(reg, "ListFunctions", pb.ListFunctionsRequest(pattern="x"), got.append, 0.0)
    assert str(got[-1]) == "the agent is stopping"
