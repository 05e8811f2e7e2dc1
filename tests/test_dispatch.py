"""The one dispatcher (coral/daemon/server.py): a handler may answer now or
later (a Later), and either way the peer gets exactly one reply and the
outcome is told once, when the answer is known. Pure logic, no sockets."""

from __future__ import annotations

from coral.daemon import wire
from coral.daemon.errors import Unavailable
from coral.daemon.server import Dispatcher, Later, Peer
from coral.proto import coral_pb2 as pb


def test_a_later_answer_is_sent_once_when_it_resolves() -> None:
    pending: list[Later] = []

    def ping(req: pb.PingRequest, peer: Peer) -> Later:
        pending.append(Later())
        return pending[-1]

    told: list[tuple[str, str]] = []
    dispatcher = Dispatcher({"Ping": ping}, ["Ping"], outcome=lambda m, b, p, outcome, d: told.append((m, outcome)))
    sent: list[list[bytes]] = []
    for request_id in (b"a", b"b"):
        dispatcher.handle(wire.Frame((b"peer",), wire.Command.REQUEST, request_id, "Ping", b""), Peer(), sent.append)
    assert sent == [] and told == []
    pending[1].resolve(Unavailable("process 7 did not answer"))
    pending[0].resolve(pb.PingResponse(daemon="coral-agentd"))
    pending[0].resolve(pb.PingResponse(daemon="twice"))  # the first answer stands
    replies = [wire.decode(frames) for frames in sent]
    assert [(r.envelope, r.request_id, r.name) for r in replies] == [((b"peer",), b"b", "UNAVAILABLE"),
                                                                     ((b"peer",), b"a", "OK")]
    assert pb.PingResponse.FromString(replies[1].body).daemon == "coral-agentd"
    assert told == [("Ping", "UNAVAILABLE"), ("Ping", "OK")]
    assert dispatcher.counters["deferred"] == 2


def test_a_later_resolved_before_it_is_waited_for_is_sent_at_once() -> None:
    def ping(req: pb.PingRequest, peer: Peer) -> Later:
        later = Later()
        later.resolve(pb.PingResponse(daemon="now"))
        return later

    sent: list[list[bytes]] = []
    Dispatcher({"Ping": ping}, ["Ping"]).handle(wire.Frame((), wire.Command.REQUEST, b"x", "Ping", b""), Peer(), sent.append)
    assert len(sent) == 1 and pb.PingResponse.FromString(wire.decode(sent[0]).body).daemon == "now"
