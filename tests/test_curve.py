"""CURVE's pure parts (key files, allow-lists, the ZAP decision, the refusal
throttle, key rules in [access], config checks), and the daemons' and
coralctl's one-line refusals of tcp:// without keys. The real thing, over
veth links between network namespaces, is in test_multihost.py."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import zmq
import zmq.auth

from coral.daemon import curve
from coral.daemon.access import check
from coral.daemon.config import AccessConfig, ConfigError, parse_config
from coral.daemon.errors import PermissionDenied
from coral.daemon.server import Peer
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, Process, tool


def test_generated_key_files_are_private_and_readable_as_certificates(tmp_path: Path) -> None:
    public_path, secret_path, public = curve.write_key_pair(tmp_path / "keys", "web-1")
    assert (public_path.name, secret_path.name) == ("web-1.key", "web-1.key_secret")
    assert stat.S_IMODE(os.stat(public_path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600
    assert zmq.auth.load_certificate(public_path) == (public, None)
    pub, secret = zmq.auth.load_certificate(secret_path)
    assert pub == public and secret is not None and zmq.curve_public(secret) == public
    with pytest.raises(ValueError) as exc:
        curve.write_key_pair(tmp_path / "keys", "web-1")
    assert str(exc.value) == f"{public_path} already exists; remove it or choose another name"
    with pytest.raises(ValueError) as exc:
        curve.write_key_pair(tmp_path / "keys", "../etc")
    assert str(exc.value) == (
        "key name '../etc' must be 1 to 64 letters, digits, '.', '_' or '-' (not starting with one of those)"
    )


def test_coralctl_keys_generate_says_where_and_speaks_json(tmp_path: Path) -> None:
    env = {**os.environ, "CORAL_CONFIG": str(tmp_path / "absent" / "coral.toml")}  # needs no configuration and no daemon
    r = subprocess.run(
        [tool("coralctl"), "--output", "json", "keys", "generate", "alice", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["public_key_file"] == str(tmp_path / "alice.key")
    assert record["secret_key_file"] == str(tmp_path / "alice.key_secret")
    assert record["fingerprint"] == curve.fingerprint(record["public_key"].encode())
    text = subprocess.run(
        [tool("coralctl"), "keys", "generate", "colony", "--dir", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert text.returncode == 0 and f"secret  {tmp_path / 'colony.key_secret'}  (0600)" in text.stdout
    again = subprocess.run(
        [tool("coralctl"), "keys", "generate", "alice", "--dir", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert (again.returncode, again.stderr) == (
        1,
        f"coralctl: {tmp_path / 'alice.key'} already exists; remove it or choose another name\n",
    )
    odd = subprocess.run(
        [tool("coralctl"), "keys", "generate", "x/y", "--dir", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert (odd.returncode, odd.stderr) == (
        1,
        "coralctl: key name 'x/y' must be 1 to 64 letters, digits, '.', '_' or '-' (not starting with one of those)\n",
    )


def zap_request(domain: str, public: bytes, mechanism: bytes = b"CURVE") -> list[bytes]:
    return [b"1.0", b"7", domain.encode(), b"10.251.9.9", b"", mechanism, zmq.utils.z85.decode(public)]


def test_zap_admits_only_keys_of_the_domains_allow_list(tmp_path: Path) -> None:
    _, _, alice = curve.write_key_pair(tmp_path / "clients", "alice")
    _, _, agent = curve.write_key_pair(tmp_path / "agents", "web-1")
    (tmp_path / "clients" / "alice.key_secret").unlink()  # an allow-list holds public keys only
    allow = {curve.FRONTEND: curve.AllowList(tmp_path / "clients"), curve.BACKEND: curve.AllowList(tmp_path / "agents")}

    request = curve.parse_zap(zap_request("frontend", alice))
    assert (request.request_id, request.address, request.public_key) == (b"7", "10.251.9.9", alice)
    admitted = curve.decide(request, allow)
    assert (admitted.status, admitted.user_id, admitted.who) == ("200", "alice", "key:alice")
    assert curve.zap_reply(b"7", admitted) == [b"1.0", b"7", b"200", b"OK", b"alice", b""]

    # An agent's key is no client's key, and the other way round.
    refused = curve.decide(curve.parse_zap(zap_request("frontend", agent)), allow)
    assert (refused.status, refused.user_id, refused.who) == ("400", "", f"key:{curve.fingerprint(agent)}")
    assert refused.text == f"key {curve.fingerprint(agent)} is not in {tmp_path / 'clients'}"
    assert curve.decide(curve.parse_zap(zap_request("backend", agent)), allow).user_id == "web-1"
    assert curve.decide(curve.parse_zap(zap_request("backend", alice)), allow).status == "400"
    assert curve.decide(curve.parse_zap(zap_request("other", alice)), allow).status == "400"
    # Removing the file revokes the key for the next connection.
    (tmp_path / "clients" / "alice.key").unlink()
    assert curve.decide(curve.parse_zap(zap_request("frontend", alice)), allow).status == "400"
    for bad in (
        [b"1.0", b"7"],
        [b"2.0", b"7", b"d", b"a", b"", b"CURVE", b"x" * 32],
        [b"1.0", b"7", b"d", b"a", b"", b"CURVE", b"short"],
    ):
        with pytest.raises(ValueError):
            curve.parse_zap(bad)


def test_a_refused_peer_is_audited_once_a_minute_not_at_every_retry() -> None:
    throttle = curve.DenialThrottle(window=60.0)
    assert throttle.should_audit("frontend", "key:ab", "10.0.0.1", now=100.0)
    assert not throttle.should_audit("frontend", "key:ab", "10.0.0.1", now=100.1)
    assert throttle.should_audit("frontend", "key:ab", "10.0.0.2", now=100.2)  # another host
    assert throttle.should_audit("backend", "key:ab", "10.0.0.1", now=100.3)  # another socket
    assert throttle.should_audit("frontend", "key:ab", "10.0.0.1", now=160.1)


def attach(capture: bool) -> pb.AttachUprobeRequest:
    return pb.AttachUprobeRequest(service="s", function="f", config=pb.UprobeConfig(capture_args=capture))


def test_access_rules_name_keys() -> None:
    policy = AccessConfig(list=("@coral", "key:*"), attach=("key:ops", "key:dev"), capture=("key:ops",))
    check(policy, Peer(key="viewer"), "ListServices", pb.ListServicesRequest())  # key:* lists
    check(policy, Peer(key="ops"), "AttachUprobe", attach(True))
    check(policy, Peer(key="dev"), "AttachUprobe", attach(False))
    with pytest.raises(PermissionDenied) as exc:
        check(policy, Peer(key="dev"), "AttachUprobe", attach(True))
    assert exc.value.message == "key dev may not capture (needs [access] capture, which admits key:ops)"
    with pytest.raises(PermissionDenied):
        check(policy, Peer(key="viewer"), "AttachUprobe", attach(False))
    # A key named like the colony gains nothing: only the agent's own colony link is trusted.
    with pytest.raises(PermissionDenied):
        check(AccessConfig(), Peer(key="colony"), "ListServices", pb.ListServicesRequest())
    check(AccessConfig(), Peer(key="colony", trusted=True), "AttachUprobe", attach(True))


def test_tcp_without_keys_is_a_config_error_never_plaintext(tmp_path: Path) -> None:
    src = tmp_path / "c.toml"
    ipc_only = parse_config({}, str(src))
    assert curve.colony_keys(ipc_only) is None and curve.agent_keys(ipc_only) is None
    tcp = parse_config(
        {"colony": {"frontend_endpoint": "tcp://0.0.0.0:7301"}, "agent": {"colony_endpoint": "tcp://10.0.0.1:7302"}}, str(src)
    )
    with pytest.raises(ConfigError) as exc:
        curve.colony_keys(tcp)
    assert str(exc.value) == (
        f"{src}: [colony] frontend_endpoint is tcp://0.0.0.0:7301 but [colony] secret_key_file "
        "is not set; Coral does not use plaintext TCP (make it with: coralctl keys generate colony)"
    )
    with pytest.raises(ConfigError) as exc:
        curve.agent_keys(tcp)
    assert str(exc.value) == (
        f"{src}: [agent] colony_endpoint is tcp://10.0.0.1:7302 but [agent] key_file is not set; "
        "Coral does not use plaintext TCP (make a key pair with: coralctl keys generate AGENT)"
    )
    _, secret, _ = curve.write_key_pair(tmp_path, "colony")
    half = parse_config({"colony": {"backend_endpoint": "tcp://0.0.0.0:7302", "secret_key_file": str(secret)}}, str(src))
    with pytest.raises(ConfigError) as exc:
        curve.colony_keys(half)
    assert str(exc.value) == (
        f"{src}: [colony] backend_endpoint is tcp://0.0.0.0:7302 but [colony] agent_keys_dir is "
        "not set; Coral does not use plaintext TCP (a directory of the public .key files it admits)"
    )
    no_dir = parse_config(
        {
            "colony": {
                "backend_endpoint": "tcp://0.0.0.0:7302",
                "secret_key_file": str(secret),
                "agent_keys_dir": str(tmp_path / "nope"),
            }
        },
        str(src),
    )
    with pytest.raises(ConfigError) as exc:
        curve.colony_keys(no_dir)
    assert str(exc.value) == f"{src}: [colony] agent_keys_dir {tmp_path / 'nope'}: no such directory"
    missing = parse_config(
        {
            "agent": {
                "colony_endpoint": "tcp://10.0.0.1:7302",
                "key_file": str(tmp_path / "x"),
                "colony_public_key_file": str(tmp_path / "colony.key"),
            }
        },
        str(src),
    )
    with pytest.raises(ConfigError) as exc:
        curve.agent_keys(missing)
    assert str(exc.value) == f"{src}: [agent] key_file {tmp_path / 'x'}: cannot read a CURVE key: no such file"
    public_only = parse_config(
        {
            "agent": {
                "colony_endpoint": "tcp://10.0.0.1:7302",
                "key_file": str(tmp_path / "colony.key"),
                "colony_public_key_file": str(tmp_path / "colony.key"),
            }
        },
        str(src),
    )
    with pytest.raises(ConfigError) as exc:
        curve.agent_keys(public_only)
    assert str(exc.value) == (
        f"{src}: [agent] key_file {tmp_path / 'colony.key'}: this is a public key; give the NAME.key_secret file"
    )
    with pytest.raises(ConfigError) as exc:
        parse_config({"colony": {"frontend_endpoint": "ws://0.0.0.0:7301"}}, str(src))
    assert str(exc.value) == (
        f"{src}: [colony] frontend_endpoint: only ipc:// and tcp:// (with CURVE) are supported, got 'ws://0.0.0.0:7301'"
    )


@pytest.mark.system  # starts the colony, or waits out handshakes
def test_colony_refuses_to_serve_tcp_without_its_key(tmp_path: Path) -> None:
    env = CoralEnv.create()
    try:
        conf = env.root / "tcp.toml"
        conf.write_text('[colony]\nfrontend_endpoint = "tcp://127.0.0.1:7399"\n')
        env.env["CORAL_CONFIG"] = str(conf)
        colony = Process("colonyd", [tool("coral-colonyd")], env)
        assert colony.proc.wait(30) == 1
        assert colony.output() == (
            f"coral-colonyd: {conf}: [colony] frontend_endpoint is tcp://127.0.0.1:7399 but "
            "[colony] secret_key_file is not set; Coral does not use plaintext TCP "
            "(make it with: coralctl keys generate colony)\n"
        )
        colony.stop()
    finally:
        env.remove()


def test_agent_refuses_to_connect_over_tcp_without_its_key(bpf: None) -> None:
    env = CoralEnv.create()
    try:
        conf = env.root / "tcp.toml"
        conf.write_text('[agent]\ncolony_endpoint = "tcp://127.0.0.1:7398"\n')
        env.env["CORAL_CONFIG"] = str(conf)
        agent = Process("agentd", [tool("coral-agentd")], env)
        assert agent.proc.wait(30) == 1
        assert agent.output() == (
            f"coral-agentd: {conf}: [agent] colony_endpoint is tcp://127.0.0.1:7398 but "
            "[agent] key_file is not set; Coral does not use plaintext TCP "
            "(make a key pair with: coralctl keys generate AGENT)\n"
        )
        agent.stop()
    finally:
        env.remove()


def test_handshake_outcomes_from_monitor_events() -> None:
    watch = curve.HandshakeWatch()
    assert watch.see(zmq.EVENT_DISCONNECTED) == ""  # not connected yet: nothing to say
    assert watch.see(zmq.EVENT_CONNECTED) == ""
    assert watch.see(zmq.EVENT_HANDSHAKE_FAILED_AUTH) == "refused"
    assert watch.see(zmq.EVENT_DISCONNECTED) == "closed"
    assert curve.HandshakeWatch().see(zmq.EVENT_HANDSHAKE_SUCCEEDED) == "ok"


def test_handshake_failures_the_colony_audits_without_a_key() -> None:
    assert curve.handshake_failure(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) == (
        "a connection without CURVE (plaintext) was refused"
    )
    assert curve.handshake_failure(zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC) == (
        "a CURVE hello that does not open with the colony's key was refused (the peer holds another colony key)"
    )


def test_more_missing_or_bad_keys(tmp_path: Path) -> None:
    src = str(tmp_path / "c.toml")
    _, secret, _ = curve.write_key_pair(tmp_path, "me")
    agent = parse_config({"agent": {"colony_endpoint": "tcp://10.0.0.1:7302", "key_file": str(secret)}}, src)
    with pytest.raises(ConfigError) as exc:
        curve.agent_keys(agent)
    assert str(exc.value) == (
        f"{src}: [agent] colony_endpoint is tcp://10.0.0.1:7302 but [agent] colony_public_key_file is not set; "
        "Coral does not use plaintext TCP (copy the colony's colony.key here)"
    )
    client = parse_config({"client": {"key_file": str(secret)}}, src)
    with pytest.raises(ConfigError) as exc:
        curve.client_keys(client, "tcp://10.0.0.1:7301")
    assert str(exc.value) == (
        f"{src}: the colony endpoint is tcp://10.0.0.1:7301 but [client] colony_public_key_file is not set; "
        "Coral does not use plaintext TCP (copy the colony's colony.key here)"
    )
    assert curve.client_keys(client, "ipc:///run/coral/colony/colony.sock") is None
    empty, short = tmp_path / "empty.key", tmp_path / "short.key"
    empty.write_text("# nothing\n")
    short.write_text('curve\n    public-key = "abc"\n')
    for path, reason in ((empty, f"No public key found in {empty}"), (short, "not a 40-character Z85 key")):
        with pytest.raises(ConfigError) as exc:
            curve.client_keys(client, "tcp://10.0.0.1:7301", colony_key_file=str(path))
        assert str(exc.value) == f"{src}: [client] colony_public_key_file {path}: cannot read a CURVE key: {reason}"


@pytest.mark.system  # starts the colony, or waits out handshakes
def test_coralctl_says_why_no_handshake_happened(tmp_path: Path) -> None:
    """Nothing listening, or something that is not a colony: coralctl says so
    within its timeout instead of waiting for a reply that cannot come."""
    for name in ("me", "colony"):
        curve.write_key_pair(tmp_path, name)
    keys = ("--key", str(tmp_path / "me.key_secret"), "--colony-key", str(tmp_path / "colony.key"))  # 15 s to reply
    config = tmp_path / "coral.toml"
    config.write_text("")  # the defaults, whatever /etc/coral/coral.toml says
    env = {**os.environ, "CORAL_CONFIG": str(config)}
    mute = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks
    closed = socket.socket()  # bound, never listening: the port stays ours, and a connection to it is refused
    try:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        for port, cause in (
            (closed_port, "nothing accepted the connection; is coral-colonyd running there, and the port open?"),
            (
                mute.getsockname()[1],
                "the connection opened but nothing answered the handshake; is that the colony's frontend port?",
            ),
        ):
            endpoint = f"tcp://127.0.0.1:{port}"
            r = subprocess.run(
                [tool("coralctl"), "--endpoint", endpoint, *keys, "ping"], capture_output=True, text=True, env=env, timeout=30
            )
            assert (r.returncode, r.stderr) == (
                3,
                f"coralctl: cannot talk to the colony: no CURVE handshake with {endpoint} within 5s: {cause}\n",
            )
    finally:
        closed.close()
        mute.close()
