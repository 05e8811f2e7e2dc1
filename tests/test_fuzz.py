"""Fuzz every decoder that reads from a socket: the frame codec, each
method's protobuf body through the dispatcher, and registration. Zero
crashes (only the documented errors), every bad input counted. 100,000
cases per decoder when CORAL_FUZZ_CASES is unset in CI; fewer locally."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coral.colonyd.broker import Broker
from coral.colonyd.store import ColonyStore
from coral.daemon import wire
from coral.daemon.config import parse_config
from coral.daemon.errors import CoralError
from coral.daemon.methods import AGENT_LOCAL_METHODS, METHODS
from coral.daemon.server import Dispatcher, Peer
from coral.proto import coral_pb2 as pb

CASES = int(os.environ.get("CORAL_FUZZ_CASES", "100000" if os.environ.get("CI") else "5000"))
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

frame_bytes = st.binary(max_size=80)
# Frames that look like ours more often than chance would give.
near_frames = st.lists(st.one_of(frame_bytes, st.sampled_from([b"", wire.HEADER, b"\x01", b"\x02", b"\x03", b"\x04",
                                                                b"\x06", b"id", b"Ping", b"AttachUprobe"])), max_size=8)


@FUZZ
@given(near_frames)
def test_frame_decoder_raises_only_frame_error(frames: list[bytes]) -> None:
    try:
        frame = wire.decode(frames)
    except wire.FrameError as exc:
        assert exc.reason and len(exc.request_id) <= wire.MAX_REQUEST_ID
        return
    assert frame.command in wire.Command


def _dispatcher() -> Dispatcher:
    def answer(request: object, peer: Peer) -> pb.PingResponse:
        return pb.PingResponse()

    return Dispatcher({name: answer for name in AGENT_LOCAL_METHODS}, AGENT_LOCAL_METHODS)


DISPATCHER = _dispatcher()


@FUZZ
@given(st.sampled_from([*sorted(METHODS), "Nope", ""]), st.binary(max_size=200))
def test_every_method_body_is_parsed_or_refused_never_crashes(method: str, body: bytes) -> None:
    before = sum(DISPATCHER.counters.values())
    replies: list[list[bytes]] = []
    DISPATCHER.handle(wire.Frame((), wire.Command.REQUEST, b"id", method, body), Peer(), replies.append)
    assert len(replies) == 1
    reply = wire.decode(replies[0])
    assert reply.command == wire.Command.REPLY and reply.request_id == b"id"
    if reply.name != wire.STATUS_OK:
        assert reply.name in {"BAD_REQUEST", "UNKNOWN_METHOD"}
        assert pb.Error.FromString(reply.body).message
    assert sum(DISPATCHER.counters.values()) > before  # every request counted


@FUZZ
@given(st.binary(max_size=300))
def test_registration_bodies_never_crash_the_registry(body: bytes) -> None:
    from coral.agentd.registry import ProcessRegistry

    registry = ProcessRegistry(Path("/run/coral/procs"))
    try:
        request = wire.parse_body(pb.RegisterProcessRequest, body)
        registry.register(request, Peer(uid=0, gid=0, pid=os.getpid()))
    except CoralError as exc:
        assert exc.code in {"BAD_REQUEST", "INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED"}


AGENT = b"fuzz-link"  # the ROUTER identity of the agent's link


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One colony broker for every case, its database in pytest's temporary
    directory (made when the test runs, not when the module is collected)."""
    store = ColonyStore(tmp_path_factory.mktemp("fuzz-colony") / "colony.duckdb")
    b = Broker(parse_config({}, "fuzz"), store)
    b.agent_ready(AGENT, pb.AgentHello(agent_id="fuzz"), Peer(uid=0, gid=0, pid=os.getpid()), 0.0)
    assert b.agents.get(AGENT) is not None  # a known agent's link: its rows are recorded, not ignored
    yield b
    store.close()


RECORDED: list[int] = []


@FUZZ
@given(body=st.binary(max_size=300))
def test_agent_audit_bodies_are_recorded_or_refused(broker: Broker, body: bytes) -> None:
    """The colony backend's AUDIT body (docs/protocol.md)."""
    from coral.daemon.errors import BadRequest

    try:
        entry = wire.parse_body(pb.AuditEntry, body)
    except BadRequest:
        return
    broker.record_agent_audit(AGENT, entry)
    RECORDED.append(1)
    if len(RECORDED) % 1000 == 0:  # written in batches, as the colony does
        broker.audit.flush()

