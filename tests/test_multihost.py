"""Three hosts in network namespaces, linked by veth pairs on private
addresses: a colony, and two agents each next to a C service, all over
tcp:// with CURVE. Agent A's link is cut mid-session: its probes still end
at expiry, the colony marks it lost, and it comes back when the link does;
agent B's session never notices. Keys not in the allow-lists are refused,
with a clear message and an audit row."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from coral.daemon import curve
from tests.harness import CoralEnv, NativeService, Process, kernel_probes, tool

FRONTEND_PORT, BACKEND_PORT = 7301, 7302
COLONY_A, HOST_A = "10.251.1.1", "10.251.1.2"  # the link colony <-> host A
COLONY_B, HOST_B = "10.251.2.1", "10.251.2.2"  # the link colony <-> host B
HEARTBEAT = 0.5  # seconds; with liveness 4, a silent peer is lost after 2 s
WAIT = 60.0  # upper bound for a state to be reached (never a threshold asserted)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    """One "machine": a network namespace, its own runtime/state directories and config."""

    name: str
    netns: str
    env: CoralEnv
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.env.root / "coral.toml"
        self.env.env["CORAL_CONFIG"] = str(self.config)

    @property
    def wrap(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.netns)

    def write_config(self, text: str) -> None:
        self.config.write_text(text)

    def start(self, name: str, program: str) -> Process:
        return Process(name, [*self.wrap, tool(program)], self.env)

    def coralctl(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**self.env.env, "CORAL_CONFIG": str(config or self.config)}
        return subprocess.run([*self.wrap, tool("coralctl"), *args], env=env, capture_output=True, text=True, timeout=60)

    def records(self, *args: str) -> list[dict[str, Any]]:
        r = self.coralctl("--output", "json", *args)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]


@dataclass
class Fabric:
    keys: Path
    colony_host: Host
    a: Host
    b: Host
    veth_a: str  # host A's end of its link to the colony
    colony: Process | None = None
    processes: list[Process] = field(default_factory=list)
    services: list[NativeService] = field(default_factory=list)

    def fingerprint(self, name: str) -> str:
        return curve.fingerprint(curve.load_key_pair(str(self.keys / f"{name}.key_secret"), "test").public)


def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Ask again (each check is a request to a daemon) until it answers what we wait for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)  # between two asks; not readiness: each ask checks the awaited state itself
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def agent_config(colony_ip: str, key: str, keys: Path, colony_key: str = "colony.key") -> str:
    return f"""
[agent]
id = "{key}"
colony_endpoint = "tcp://{colony_ip}:{BACKEND_PORT}"
key_file = "{keys / key}.key_secret"
colony_public_key_file = "{keys / colony_key}"
heartbeat_interval = {HEARTBEAT}
heartbeat_liveness = 4
"""


@pytest.fixture(scope="module")
def fabric(bpf: None, payments_binary: Path) -> Iterator[Fabric]:
    tag = secrets.token_hex(3)
    names = {h: f"coral-{tag}-{h}" for h in ("colony", "a", "b")}
    veths = {h: (f"cv{tag}{h[0]}0", f"cv{tag}{h[0]}1") for h in ("a", "b")}  # (colony end, host end)
    created: list[str] = []
    root = CoralEnv.create()
    hosts = {h: Host(h, names[h], CoralEnv.create()) for h in names}
    fab = Fabric(root.root / "keys", hosts["colony"], hosts["a"], hosts["b"], veths["a"][1])
    try:
        for ns in names.values():
            ip("netns", "add", ns)
            created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for h, (colony_ip, host_ip) in {"a": (COLONY_A, HOST_A), "b": (COLONY_B, HOST_B)}.items():
            near, far = veths[h]
            ip("link", "add", near, "netns", names["colony"], "type", "veth", "peer", "name", far, "netns", names[h])
            ip("-n", names["colony"], "addr", "add", f"{colony_ip}/24", "dev", near)
            ip("-n", names[h], "addr", "add", f"{host_ip}/24", "dev", far)
            ip("-n", names["colony"], "link", "set", near, "up")
            ip("-n", names[h], "link", "set", far, "up")
        for key in ("colony", "agent-a", "agent-b", "ops", "viewer", "rogue", "mallory"):
            curve.write_key_pair(fab.keys, key)
        for directory, admitted in (("agents", ("agent-a", "agent-b")), ("clients", ("ops", "viewer"))):
            (fab.keys / directory).mkdir()
            for key in admitted:
                (fab.keys / directory / f"{key}.key").write_bytes((fab.keys / f"{key}.key").read_bytes())
        fab.colony_host.write_config(f"""
[colony]
frontend_endpoint = "tcp://0.0.0.0:{FRONTEND_PORT}"
backend_endpoint = "tcp://0.0.0.0:{BACKEND_PORT}"
secret_key_file = "{fab.keys / "colony.key_secret"}"
agent_keys_dir = "{fab.keys / "agents"}"
client_keys_dir = "{fab.keys / "clients"}"
heartbeat_interval = {HEARTBEAT}
heartbeat_liveness = 4

[access]
list = ["@coral", "key:ops"]
attach = ["@coral", "key:ops"]
capture = ["@coral", "key:ops"]
""")
        client = f"""
[colony]
frontend_endpoint = "tcp://{{colony}}:{FRONTEND_PORT}"

[client]
key_file = "{fab.keys / "ops.key_secret"}"
colony_public_key_file = "{fab.keys / "colony.key"}"
"""
        fab.a.write_config(agent_config(COLONY_A, "agent-a", fab.keys) + client.format(colony=COLONY_A))
        fab.b.write_config(agent_config(COLONY_B, "agent-b", fab.keys) + client.format(colony=COLONY_B))
        fab.colony = fab.colony_host.start("colonyd", "coral-colonyd").wait_ready()
        for host in (fab.a, fab.b):
            fab.processes.append(host.start("agentd", "coral-agentd").wait_ready())
            fab.services.append(NativeService(host.env, payments_binary, f"payments-{host.name}", wrap=host.wrap))
        yield fab
    finally:
        for svc in fab.services:
            svc.stop()
        for proc in [*fab.processes, *([fab.colony] if fab.colony else [])]:
            proc.stop()
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes its veths with it
        for env in (root, *(h.env for h in hosts.values())):
            env.remove()


def services_of(host: Host) -> set[str]:
    return {s["service"] for s in host.records("services")}


def start_attach(host: Host, service: str, *flags: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [
            *host.wrap,
            tool("coralctl"),
            "--output",
            "json",
            "debug",
            "attach",
            service,
            "--function",
            "validate_card",
            "--no-save",
            *flags,
        ],
        env=host.env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first: dict[str, Any] = json.loads(proc.stdout.readline() or "{}")
    assert first.get("kind") == "session", proc.stderr.read() if proc.stderr else first
    return proc, first


def test_agent_cut_off_mid_session_ends_its_probes_and_comes_back(fabric: Fabric) -> None:
    svc_a, svc_b = fabric.services
    client = fabric.b  # coralctl runs on host B, which keeps its link
    wait_until(lambda: services_of(client) >= {"payments-a", "payments-b"}, "both services in the colony")
    attach_a, session_a = start_attach(client, "payments-a", "--duration", "6s")
    attach_b, session_b = start_attach(client, "payments-b", "--duration", "20s", "--capture-args")
    assert session_a["agent_id"] == "agent-a" and session_b["agent_id"] == "agent-b"
    assert svc_a.call(4) == "done 4 declined 0"
    assert svc_b.call(7).startswith("done 7")
    probe_a = f"/proc/{svc_a.child_pid}/exe"
    assert probe_a in kernel_probes()

    ip("-n", fabric.a.netns, "link", "set", fabric.veth_a, "down")  # the cable to host A is cut
    try:
        # The colony marks A lost: A's session is lost (not final), and A's service leaves the listing.
        colony_view = ("debug", "sessions", "--service", "payments-a")
        [lost] = wait_until(
            lambda: [s for s in client.records(*colony_view) if s["status"] != "active"], "the colony to give up on agent A"
        )
        assert (lost["session_id"], lost["status"], lost["status_reason"]) == (session_a["session_id"], "lost", "agent lost")
        assert "payments-a" not in services_of(client)
        attach_a.kill()  # its follow loop was answered UNAVAILABLE (agent lost); nothing more to see
        attach_a.wait()
        # Agent A, alone, still ends its session at expiry: no probe on that process remains.
        local_a = ("--local", "--output", "json", "debug", "sessions")
        wait_until(
            lambda: any(
                s["session_id"] == session_a["session_id"] and s["status"] == "expired" for s in fabric.a.records(*local_a)
            ),
            "agent A to expire its session on its own",
        )
        # The status is written when the session ends; its probes are removed by the agent's release thread
        # right after, so the kernel is asked again until they are gone.
        wait_until(lambda: probe_a not in kernel_probes(), "agent A's probes to leave the kernel")
    finally:  # the cable back, whatever happened: the module's other tests use it
        ip("-n", fabric.a.netns, "link", "set", fabric.veth_a, "up")
    wait_until(lambda: "payments-a" in services_of(client), "agent A to announce itself again")
    # The colony pulls A's part again from where it stopped: it ended on A's clock, with its 4 calls.
    [back] = wait_until(
        lambda: [s for s in client.records(*colony_view) if s["status"] == "expired"], "the colony to hear A's session again"
    )
    assert (back["session_id"], back["calls"], back["parts"][0]["complete"]) == (session_a["session_id"], 4, True), back

    # B never noticed: its session runs to expiry with exactly its calls.
    assert svc_b.call(3).startswith("done 3")
    out, _ = attach_b.communicate(timeout=WAIT)
    summary_b = json.loads(out.splitlines()[-1])
    assert (summary_b["status"], summary_b["calls"]) == ("expired", 10)
    assert f"/proc/{svc_b.child_pid}/exe" not in kernel_probes()
    audit = client.records("audit")
    assert {r["who"] for r in audit if r.get("method") == "AttachUprobe"} == {"key:ops"}


def audit_rows(fabric: Fabric, who: str) -> list[dict[str, Any]]:
    return [r for r in fabric.b.records("audit") if r["who"] == who]


def test_keys_not_in_the_allow_lists_are_refused_and_audited(fabric: Fabric) -> None:
    b, keys = fabric.b, fabric.keys
    endpoint = f"tcp://{COLONY_B}:{FRONTEND_PORT}"
    wait_until(lambda: services_of(b) >= {"payments-a", "payments-b"}, "both agents in the colony")
    colony = fabric.colony
    assert colony is not None

    # A client whose key is not in client_keys_dir: refused at the handshake, at once.
    wrong = b.coralctl("--key", str(keys / "mallory.key_secret"), "services")
    mallory = fabric.fingerprint("mallory")
    assert (wrong.returncode, wrong.stdout) == (3, "")
    assert wrong.stderr == (
        f"coralctl: cannot talk to the colony: {endpoint} refused this client's key {mallory}: "
        "its public key file is not in the colony's [colony] client_keys_dir\n"
    )
    [row] = wait_until(lambda: audit_rows(fabric, f"key:{mallory}"), "the refusal's audit row")
    assert (row["method"], row["outcome"]) == ("CONNECT", "DENIED")
    assert row["detail"] == f"frontend: from {HOST_B}: key {mallory} is not in {keys / 'clients'}"

    # A client that has the wrong public key for the colony: the colony cannot read its hello.
    bad_colony = b.coralctl("--colony-key", str(keys / "mallory.key"), "ping")
    assert (bad_colony.returncode, bad_colony.stderr) == (
        3,
        (
            f"coralctl: cannot talk to the colony: {endpoint} closed the connection during the CURVE handshake: "
            "is [client] colony_public_key_file (--colony-key) the colony's public key?\n"
        ),
    )

    [row] = wait_until(lambda: [r for r in audit_rows(fabric, "unknown") if r["method"] == "CONNECT"], "its audit row")
    assert row["outcome"] == "DENIED"
    assert row["detail"] == (
        "frontend: a CURVE hello that does not open with the colony's key was refused (the peer holds another colony key)"
    )

    assert (
        "WARNING coral.colonyd: refused a frontend connection: a CURVE hello that does not open with the colony's key "
        "was refused (the peer holds another colony key)"
    ) in colony.output()

    # A plaintext ZeroMQ client (say, an ops tool without keys) gets nothing. (The colony audits it
    # when it is the side that sees the mismatch first, which is a race; so that is not asserted.)
    plaintext = f"import zmq; s = zmq.Context().socket(zmq.DEALER); s.connect('{endpoint}'); s.send(b'hi'); print(s.poll(1000))"
    tool_run = subprocess.run([*b.wrap, sys.executable, "-c", plaintext], capture_output=True, text=True, timeout=30)
    assert tool_run.stdout.strip() == "0"  # no answer

    # A coralctl with no key at all never sends a byte in plaintext.
    no_key = b.env.root / "no-key.toml"
    no_key.write_text(f'[colony]\nfrontend_endpoint = "{endpoint}"\n')
    refused = b.coralctl("ping", config=no_key)
    assert (refused.returncode, refused.stderr) == (
        2,
        (
            f"coralctl: {no_key}: the colony endpoint is {endpoint} but [client] key_file is not set; "
            "Coral does not use plaintext TCP (make a key pair with: coralctl keys generate NAME)\n"
        ),
    )

    # An admitted key is known by its name; [access] decides what it may do.
    viewer = b.coralctl("--key", str(keys / "viewer.key_secret"), "services")
    assert (viewer.returncode, viewer.stderr) == (
        1,
        ("coralctl: key viewer may not list (needs [access] list, which admits @coral, key:ops)\n"),
    )
    [row] = audit_rows(fabric, "key:viewer")
    assert (row["method"], row["outcome"]) == ("ListServices", "PERMISSION_DENIED")

    assert (
        f"WARNING coral.colonyd: refused a frontend connection from {HOST_B}: key {mallory} is not in {keys / 'clients'}"
    ) in colony.output()

    # An agent holding the wrong public key for the colony: the colony cannot read its hello.
    with extra_agent(b.netns, agent_config(COLONY_B, "mallory", keys, colony_key="mallory.key")) as confused:
        wait_until(lambda: "during the CURVE handshake" in confused.output(), "the confused agent to log its failure")
        assert (
            f"ERROR coral.agentd.colony_link: the colony at tcp://{COLONY_B}:{BACKEND_PORT} closed the connection "
            "during the CURVE handshake: is [agent] colony_public_key_file the colony's public key?"
        ) in confused.output()

    # An agent whose key is not in agent_keys_dir never joins; it says why, and the colony audits it.
    with extra_agent(b.netns, agent_config(COLONY_B, "rogue", keys)) as rogue:
        fp = fabric.fingerprint("rogue")
        [row] = wait_until(lambda: audit_rows(fabric, f"key:{fp}"), "the rogue agent's refusal in the audit log")
        assert (row["method"], row["outcome"]) == ("CONNECT", "DENIED")
        assert row["detail"] == f"backend: from {HOST_B}: key {fp} is not in {keys / 'agents'}"
        wait_until(lambda: "refused this agent's key" in rogue.output(), "the rogue agent to log the refusal")
        assert (
            f"ERROR coral.agentd.colony_link: the colony at tcp://{COLONY_B}:{BACKEND_PORT} refused this agent's "
            f"key {fp}: add its public key file to the colony's [colony] agent_keys_dir"
        ) in rogue.output()
        assert b.records("ping")[0]["counters"]["agents"] == 2  # A and B only
        assert {s["agent_id"] for s in b.records("services")} == {"agent-a", "agent-b"}


@contextlib.contextmanager
def extra_agent(netns: str, config: str) -> Iterator[Process]:
    """One more agent, on its own directories, in a host's namespace."""
    host = Host("extra", netns, CoralEnv.create())
    host.write_config(config)
    agent = host.start("agentd", "coral-agentd").wait_ready()
    try:
        yield agent
    finally:
        agent.stop()
        host.env.remove()
