"""The colony's routing and its streams, without sockets or a database:
decoded requests and frames in, agents to send to and questions to answer
out (coral/colonyd/routing.py, coral/colonyd/streams.py)."""

from __future__ import annotations

import re

import pytest

from coral.colonyd.agents import AgentDirectory
from coral.colonyd.routing import Gather, Router
from coral.colonyd.streams import FreshQuery, Streams
from coral.daemon import wire
from coral.daemon.errors import NotFound, Unavailable
from coral.daemon.server import AllowList, Peer
from coral.proto import coral_pb2 as pb

ROOT = Peer(uid=0, gid=0, pid=1)


def directory(*agents: tuple[bytes, str, str]) -> AgentDirectory:
    """Agents as (link identity, agent id, the service it runs)."""
    d = AgentDirectory(("0",))
    for identity, agent_id, service in agents:
        d.announce(identity, pb.AgentHello(agent_id=agent_id, services=[pb.ServiceInstance(service=service, pid=7)]),
                   ROOT, 0.0)
    return d


def a_session(*parts: tuple[str, str]) -> pb.DebugSession:
    return pb.DebugSession(session_id="dbg-1", parts=[
        pb.SessionPart(agent_id=a, session=pb.DebugSession(status=status)) for a, status in parts])


def test_an_attach_goes_to_every_agent_of_its_service_with_a_fresh_session_id() -> None:
    router = Router(directory((b"A", "a", "payments"), (b"B", "b", "payments"), (b"C", "c", "search")), 5.0)
    request = pb.AttachUprobeRequest(service="payments", function="validate_card")
    agents = router.targets(request, lambda sid: pb.DebugSession())
    assert [a.agent_id for a in agents] == ["a", "b"]
    assert re.fullmatch(r"dbg-[0-9a-f]{12}", request.session_id)
    # ListFunctions asks one of them; --agent narrows an attach to one.
    assert len(router.targets(pb.ListFunctionsRequest(service="payments"), lambda sid: pb.DebugSession())) == 1
    narrowed = router.targets(pb.AttachUprobeRequest(service="payments", agent_id="b"), lambda sid: pb.DebugSession())
    assert [a.agent_id for a in narrowed] == ["b"]


def test_what_cannot_be_routed_is_refused_naming_what_can() -> None:
    router = Router(directory((b"A", "a", "payments"), (b"C", "c", "search")), 5.0)
    with pytest.raises(NotFound, match=r"service 'nope' not found \(known services: payments, search\)"):
        router.targets(pb.AttachUprobeRequest(service="nope"), lambda sid: pb.DebugSession())
    with pytest.raises(NotFound, match=r"no agent 'z' is connected \(known agents: a, c\)"):
        router.targets(pb.AttachUprobeRequest(service="payments", agent_id="z"), lambda sid: pb.DebugSession())
    with pytest.raises(NotFound, match=r"service 'payments' does not run on agent 'c' \(it runs on: a\)"):
        router.targets(pb.AttachUprobeRequest(service="payments", agent_id="c"), lambda sid: pb.DebugSession())
    # A detach goes to the parts still running on connected agents; none connected is UNAVAILABLE.
    session = a_session(("a", "active"), ("gone", "active"), ("c", "expired"))
    detach = pb.DetachUprobeRequest(session_id="dbg-1")
    assert [a.agent_id for a in router.targets(detach, lambda sid: session)] == ["a"]
    with pytest.raises(Unavailable, match=r"agent 'gone' of session dbg-1 is not connected"):
        router.targets(detach, lambda sid: a_session(("gone", "active")))


def test_only_the_link_a_request_went_to_may_answer_it() -> None:
    agents = directory((b"A", "a", "payments"), (b"B", "b", "payments"))
    router = Router(agents, 5.0)
    a = agents.by_id("a")
    assert a is not None
    gather = Gather((b"client",), b"r1", "ListFunctions", pb.ListFunctionsRequest(), ROOT, ["a"])
    sent = router.send(a, "ListFunctions", pb.ListFunctionsRequest(service="payments"), 10.0, gather)
    request = wire.decode(sent.frames)
    assert sent.socket == "backend" and request.envelope == (b"A",) and len(request.request_id) == 16
    assert a.last_sent == 10.0

    def reply_from(link: bytes) -> wire.Frame:
        return wire.decode(wire.encode_reply(request.request_id, pb.ListFunctionsResponse(), (link,)))

    assert router.answered(reply_from(b"B")) == (None, "foreign")
    assert router.foreign_sender(reply_from(b"B")) == ("uid:0 on agent b", "a")
    pending, why = router.answered(reply_from(b"A"))
    assert pending is not None and pending.gather is gather and why == ""
    assert router.answered(reply_from(b"A")) == (None, "late")  # once only


def test_requests_past_their_deadline_or_on_a_gone_link_are_taken_off() -> None:
    agents = directory((b"A", "a", "payments"), (b"B", "b", "payments"))
    router = Router(agents, 5.0)
    a, b = agents.by_id("a"), agents.by_id("b")
    assert a is not None and b is not None
    router.send(a, "Ping", pb.PingRequest(), 0.0, None)
    held = router.send(a, "QueryUprobeEvents", pb.QueryUprobeEventsRequest(), 0.0, None, held=0.5)
    router.send(b, "Ping", pb.PingRequest(), 1.0, None)
    assert [p.method for p in router.overdue(5.2)] == ["Ping"]  # a's Ping; the held pull has 0.5 s more
    assert [p.method for p in router.overdue(5.6)] == ["QueryUprobeEvents"]
    assert router.take(held.request_id) is None
    router.send(a, "DetachUprobe", pb.DetachUprobeRequest(session_id="dbg-1"), 6.0, None)
    assert router.detach_out("dbg-1", b"A") and not router.detach_out("dbg-1", b"B")
    assert [p.agent_id for p in router.on_link(b"B")] == ["b"] and [p.agent_id for p in router.on_link(b"A")] == ["a"]
    assert router.pending == {}


def test_a_question_waits_for_a_pull_sent_after_it_and_back_or_for_its_deadline() -> None:
    streams = Streams()
    key_a, key_b = ("dbg-1", "a"), ("dbg-1", "b")
    q = FreshQuery((b"c",), b"r", pb.QueryUprobeEventsRequest(session_id="dbg-1"), ROOT, 2.0, {key_a, key_b})
    streams.ask(q)
    running = {key_a, key_b}
    assert streams.due(0.1, lambda sid: running) == []
    streams.pull_back(key_a)  # a pull that was out before the question does not count
    assert streams.due(0.2, lambda sid: running) == []
    streams.pull_sent(key_a)
    streams.pull_back(key_a)
    assert streams.due(0.3, lambda sid: running) == []  # b not yet
    running = {key_a}  # b's part ended meanwhile: nothing to wait for there
    assert streams.due(0.4, lambda sid: running) == [q] and streams.fresh == []

    late = FreshQuery((b"c",), b"r2", pb.QueryUprobeEventsRequest(session_id="dbg-1"), ROOT, 2.0, {key_a})
    streams.ask(late)
    assert streams.due(1.9, lambda sid: {key_a}) == [] and streams.due(2.0, lambda sid: {key_a}) == [late]


def test_a_held_follower_gets_a_ticket_and_a_full_session_gets_none() -> None:
    streams = Streams()
    answered: list[int] = []
    for i in range(64):
        assert streams.hold("dbg-1", 1000, 0.0, lambda n=i: answered.append(n)) is not None  # type: ignore[misc]
    assert streams.hold("dbg-1", 1000, 0.0, lambda: answered.append(-1)) is None
    assert len(streams.tickets) == 64
    streams.followers.wake("dbg-1")
    streams.followers.expire(0.0)
    assert sorted(answered) == list(range(64))


def test_one_allow_list_refuses_before_reading_the_body() -> None:
    seen: list[object] = []

    def ping(request: pb.PingRequest, peer: Peer) -> str:
        seen.append(request)
        return "pong"

    methods: AllowList[str] = AllowList({"Ping": ping, "Shutdown": lambda r, p: "no"}, ["Ping"], where="by the colony")
    assert "Ping" in methods and "Shutdown" not in methods
    with pytest.raises(Exception, match=r"method 'Shutdown' is not served by the colony"):
        methods.call("Shutdown", b"", ROOT)
    with pytest.raises(Exception, match="not a valid"):
        methods.call("Ping", b"\xff\xff", ROOT)
    assert methods.counters["bad_requests"] == 1 and seen == []
    assert methods.call("Ping", pb.PingRequest().SerializeToString(), ROOT) == "pong" and len(seen) == 1
    with pytest.raises(ValueError, match="no handler for allowed methods"):
        AllowList({}, ["Ping"])
