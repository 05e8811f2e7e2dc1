"""What the SDK needs before it reaches the agent (its runtime directory),
and what it takes from the agent's reply: no coral.toml of its own
(docs/sdk-guide.md, "What the SDK takes from the agent")."""

from __future__ import annotations

import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

import coral.sdk
from coral.daemon import wire
from coral.proto import coral_pb2 as pb
from coral.sdk import locate as locate_module
from coral.sdk.locate import DEFAULT_RUNTIME_DIR, LocationError, locate
from coral.sdk.registration import AgentRegistration, agent_message_limit


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORAL_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("CORAL_CONFIG", raising=False)


def test_the_environment_wins_then_the_argument_then_the_default(no_env: None, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    assert locate().runtime_dir == Path(DEFAULT_RUNTIME_DIR)
    assert locate().agent_endpoint == "ipc:///run/coral/agent.sock"
    assert locate(runtime_dir="/srv/coral").process_socket_dir == Path("/srv/coral/procs")
    monkeypatch.setenv("CORAL_RUNTIME_DIR", str(tmp_path))
    assert locate(runtime_dir="/srv/coral", config_path="/nonexistent.toml").runtime_dir == tmp_path


def test_coral_config_is_not_the_sdks(no_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "coral.toml"
    config.write_text('[paths]\nruntime_dir = "/elsewhere"\n')
    monkeypatch.setenv("CORAL_CONFIG", str(config))
    assert locate().runtime_dir == Path(DEFAULT_RUNTIME_DIR)


def test_a_deprecated_config_path_gives_its_runtime_dir_only(no_env: None, tmp_path: Path) -> None:
    config = tmp_path / "coral.toml"
    config.write_text('[paths]\nruntime_dir = "/elsewhere"\n[sdk]\nredact_patterns = ["amount"]\n')
    assert locate(config_path=str(config)).runtime_dir == Path("/elsewhere")
    config.write_text("[sessions]\nmax_duration = 60\n")
    assert locate(config_path=str(config)).runtime_dir == Path(DEFAULT_RUNTIME_DIR)


@pytest.mark.parametrize(("text", "message"), [
    (None, "no such configuration file"),
    ("[paths\n", "not valid TOML"),
    ("[paths]\nruntime_dir = 5\n", "[paths] runtime_dir: expected a non-empty string"),
])
def test_a_config_path_that_cannot_be_read_says_why_in_one_line(no_env: None, tmp_path: Path, text: str | None,
                                                                message: str) -> None:
    config = tmp_path / "coral.toml"
    if text is not None:
        config.write_text(text)
    with pytest.raises(LocationError, match=r"^" + str(config) + ": ") as caught:
        locate(config_path=str(config))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_on_python_3_10_config_path_is_refused_naming_what_to_use(no_env: None, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "coral.toml"
    config.write_text('[paths]\nruntime_dir = "/elsewhere"\n')
    monkeypatch.setattr(locate_module, "sys", types.SimpleNamespace(version_info=(3, 10, 13)))
    with pytest.raises(LocationError, match="config_path needs Python 3.11 or later .tomllib.; pass runtime_dir= "
                                            r"or set \$CORAL_RUNTIME_DIR instead"):
        locate(config_path=str(config))


def test_init_with_config_path_warns_that_it_is_deprecated(no_env: None) -> None:
    with tempfile.TemporaryDirectory(prefix="coral-sdk-", dir="/tmp") as root:
        config = Path(root) / "coral.toml"
        config.write_text(f'[paths]\nruntime_dir = "{root}"\n')
        try:
            with pytest.warns(DeprecationWarning, match=r"config_path=\.\.\.\) is deprecated"):
                sdk = coral.sdk.init(service="locate-tests", config_path=str(config))
            assert sdk.wait_bound(10)
            assert sdk.address == f"ipc://{root}/procs/{sdk.pid}.sock"
        finally:
            coral.sdk.shutdown()


def test_the_agents_message_cap_is_taken_within_bounds() -> None:
    assert agent_message_limit(0) == 0  # an older agent: the SDK keeps its own
    assert agent_message_limit(65535) == 0  # below the floor coral.toml allows
    assert agent_message_limit(65536) == 65536
    assert agent_message_limit(8 * 1024 * 1024) == 8 * 1024 * 1024


@pytest.fixture
def fake_agent() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    """A ROUTER where the agent's socket would be: the test answers for it."""
    context = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="coral-sdk-", dir="/tmp") as root:
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        endpoint = f"ipc://{root}/agent.sock"
        router.bind(endpoint)
        yield router, endpoint
        router.close()
    context.term()


def _next_request(router: zmq.Socket[bytes]) -> tuple[tuple[bytes, ...], wire.Frame]:
    assert router.poll(5000), "no request from the registration"
    frame = wire.decode(router.recv_multipart())
    return frame.envelope, frame


def test_registration_takes_the_agents_settings_and_unregisters_on_its_own_socket(
        fake_agent: tuple[zmq.Socket[bytes], str]) -> None:
    router, endpoint = fake_agent
    context = zmq.Context()
    reg = AgentRegistration(endpoint, pb.RegisterProcessRequest(service="s", pid=1), context)
    try:
        reg.tick(time.monotonic())
        envelope, frame = _next_request(router)
        assert frame.name == "RegisterProcess"
        reply = pb.RegisterProcessResponse(registration_id="r1", heartbeat_interval_ms=500, redact_names=["amount"],
                                           max_message_bytes=1 << 20)
        router.send_multipart(wire.encode_reply(frame.request_id, reply, envelope))
        assert reg.socket is not None and reg.socket.poll(5000)
        assert reg.receive(time.monotonic())
        assert (reg.registration_id, reg.redact_names, reg.max_message_bytes) == ("r1", ("amount",), 1 << 20)

        reg.unregister(timeout=0.2)  # nobody answers: bounded, and it still goes
        envelope, frame = _next_request(router)
        assert frame.name == "UnregisterProcess"
        assert wire.parse_body(pb.UnregisterProcessRequest, frame.body).registration_id == "r1"
        assert reg.socket is None and not reg.registered
    finally:
        reg.unregister()
        context.destroy(linger=0)
