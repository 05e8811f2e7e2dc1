"""Nobody the fabric has not authenticated speaks for an agent: who may
announce an agent id, whose replies count, whose audit rows are written,
and how a flood of rows is folded. Pure decisions first, then the broker
with fake links, then a real unprivileged user against real daemons."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coral.colonyd.broker import Broker, Outgoing
from coral.colonyd.store import ColonyStore
from coral.colonyd.trust import AuditFolder, agent_refusal
from coral.daemon import wire
from coral.daemon.client import Client
from coral.daemon.config import Config
from coral.daemon.errors import InvalidArgument
from coral.daemon.server import Peer
from coral.proto import coral_pb2 as pb
from tests.harness import (
    REPO,
    CoralEnv,
    NativeService,
    as_unit,
    coralctl,
    running,
    start_agent,
    start_attach,
    start_colony,
)
from tests.test_native_e2e import wait_for_service

ROOT = Peer(uid=0, gid=0, pid=10)
MEMBER = Peer(uid=1500, gid=1500, pid=11)
PEOPLE = {0: ("root", {"root"}), 1500: ("mallory", {"coral"}), 998: ("coral-agent", {"coral"})}


def identify(uid: int) -> tuple[str, set[str]]:
    return PEOPLE[uid]


# ---------------------------------------------------------------- decisions


def test_only_the_agents_user_may_speak_for_an_agent_on_ipc() -> None:
    assert agent_refusal(ROOT, "web-1", ("root",), None, identify) is None
    assert agent_refusal(Peer(uid=998), "web-1", ("coral-agent",), None, identify) is None  # by name
    assert agent_refusal(Peer(uid=998), "web-1", ("998",), None, identify) is None  # by uid
    assert agent_refusal(MEMBER, "web-1", ("root",), None, identify) == (
        "uid 1500 may not speak for agent web-1: agents run as root ([colony] agent_users)"
    )
    assert agent_refusal(Peer(), "web-1", ("root",), None, identify) == (
        "an unidentified peer may not speak for agent web-1: its credentials are unknown"
    )


def test_on_tcp_an_agents_id_is_its_keys_name() -> None:
    assert agent_refusal(Peer(key="web-1"), "web-1", ("root",), None, identify) is None
    assert agent_refusal(Peer(key="web-2"), "web-1", ("root",), None, identify) == (
        "key:web-2 may not speak for agent web-1: on tcp an agent's id is its key's name"
    )


def test_a_live_agent_id_is_taken_over_only_by_its_own_identity() -> None:
    assert agent_refusal(ROOT, "web-1", ("root",), "uid:0", identify) is None  # a reconnect
    assert agent_refusal(Peer(key="web-1"), "web-1", ("root",), "uid:0", identify) == (
        "key:web-1 may not speak for agent web-1: it is connected as uid 0"
    )
    assert agent_refusal(ROOT, "web-1", ("root",), "key:web-1", identify) == (
        "uid 0 may not speak for agent web-1: it is connected as key:web-1"
    )


def test_a_flood_of_rows_is_folded_into_one_that_says_how_many() -> None:
    folder = AuditFolder(burst=3, window=60.0)
    key = ("uid:1500", "ListServices", "OK")
    assert [folder.admit(key, t * 0.01) for t in range(10)] == [True] * 3 + [False] * 7
    assert folder.admit(("uid:1501", "ListServices", "OK"), 0.2)  # someone else is not folded with it
    assert folder.closed(59.0) == []  # the window is still open
    assert folder.closed(60.5) == [(key, 7, 60.0)]
    assert folder.admit(key, 61.0)  # a new window
    assert folder.closed(200.0) == [] and folder.windows == {}  # nothing folded: nothing to say
    for t in range(5):
        folder.admit(key, 300.0 + t)
    assert folder.closed(310.0, everything=True) == [(key, 2, 10.0)]  # at shutdown, the window so far
    assert folder.total_folded == 9


# ----------------------------------------------------- the broker, fake links


def hello(agent_id: str, pid: int = 7) -> pb.AgentHello:
    return pb.AgentHello(agent_id=agent_id, services=[pb.ServiceInstance(service="payments", pid=pid, agent_id=agent_id)])


def a_broker(tmp_path: Path) -> Broker:
    return Broker(Config(), ColonyStore(tmp_path / "colony.duckdb"))


def to_backend(out: list[Outgoing]) -> list[wire.Frame]:
    return [wire.decode(m.frames) for m in out if m.socket == "backend"]


def rows(broker: Broker) -> list[tuple[str, str, str, str]]:
    broker.audit.flush()
    return [(r.who, r.method, r.outcome, r.detail) for r in broker.store.audit_rows(0, 10_000)[0]]


def list_functions(broker: Broker) -> wire.Frame:
    request = wire.decode(wire.encode_request(b"r1", "ListFunctions", pb.ListFunctionsRequest(service="payments"), (b"client",)))
    (sent,) = to_backend(broker.handle_request(request, ROOT, 0.0))
    return sent


def test_a_member_announcing_a_live_agents_id_is_refused_and_routing_stays(tmp_path: Path) -> None:
    broker = a_broker(tmp_path)
    broker.agent_ready(b"real", hello("web-1"), ROOT, 0.0)
    assert broker.agent_ready(b"evil", hello("web-1", pid=1), MEMBER, 0.1) == []
    assert [a.identity for a in broker.agents_for("payments")] == [b"real"]
    assert list_functions(broker).envelope == (b"real",)
    assert broker.counters["agents.refused"] == 1
    assert ("uid:1500", "READY", "PERMISSION_DENIED",
            "uid 1500 may not speak for agent web-1: agents run as root ([colony] agent_users)") in rows(broker)


def test_a_reconnect_of_the_same_identity_supersedes_and_answers_what_was_pending(tmp_path: Path) -> None:
    broker = a_broker(tmp_path)
    broker.agent_ready(b"old", hello("web-1"), ROOT, 0.0)
    sent = list_functions(broker)
    out = broker.agent_ready(b"new", hello("web-1"), ROOT, 1.0)
    (answer,) = [wire.decode(m.frames) for m in out if m.socket == "frontend"]
    assert (answer.name, wire.parse_body(pb.Error, answer.body).message) == (
        "UNAVAILABLE", "agent web-1 reconnected before answering ListFunctions")
    assert list(broker.agents.links) == [b"new"] and sent.request_id not in broker.pending
    # A link speaks for one agent id for its whole life.
    assert broker.agent_ready(b"new", hello("web-2"), ROOT, 1.1) == []
    assert broker.agent_by_id("web-2") is None


def test_a_reply_from_another_link_is_dropped_counted_and_audited(tmp_path: Path) -> None:
    broker = a_broker(tmp_path)
    broker.agent_ready(b"A", hello("a"), ROOT, 0.0)
    broker.agent_ready(b"B", hello("b"), ROOT, 0.0)
    sent = list_functions(broker)  # goes to the first agent of the service
    assert len(sent.request_id) == 16 and sent.request_id != list_functions(broker).request_id
    other = b"B" if sent.envelope == (b"A",) else b"A"
    forged = wire.decode(wire.encode_reply(sent.request_id, pb.ListFunctionsResponse(functions=["lie"]), (other,)))
    assert broker.handle_reply(forged, 0.1) == []
    assert broker.counters["replies.foreign"] == 1 and sent.request_id in broker.pending
    (row,) = [r for r in rows(broker) if r[1] == "REPLY"]
    assert row[2] == "PERMISSION_DENIED" and row[0].startswith("uid:0 on agent ")
    real = wire.decode(wire.encode_reply(sent.request_id, pb.ListFunctionsResponse(functions=["validate_card"]), sent.envelope))
    (answer,) = [wire.decode(m.frames) for m in broker.handle_reply(real, 0.2)]
    assert list(wire.parse_body(pb.ListFunctionsResponse, answer.body).functions) == ["validate_card"]


def test_an_agents_audit_row_gets_the_colonys_time_and_the_proven_agent_id(tmp_path: Path) -> None:
    broker = a_broker(tmp_path)
    broker.agent_ready(b"A", hello("a"), ROOT, 0.0)
    forged = pb.AuditEntry(timestamp_unix_ns=1, who="uid:0 on agent z", method="Shutdown", outcome="OK", detail="x" * 9000)
    broker.record_agent_audit(b"A", forged)
    broker.record_agent_audit(b"nobody", forged)  # not a known agent: nothing is written
    broker.audit.flush()
    (row,) = broker.store.audit_rows(0, 10)[0]
    assert row.ts_ns > 1_700_000_000 * 10**9 and row.who == "uid:0 on agent z on agent a"
    assert (row.method, len(row.detail)) == ("?", 500)


def test_ten_thousand_refusals_from_one_peer_are_100_rows_and_one_that_counts_the_rest(tmp_path: Path) -> None:
    broker = a_broker(tmp_path)
    for i in range(10_000):
        broker.agent_ready(f"e{i}".encode(), hello("web-1"), MEMBER, 0.0)
    assert broker.counters["agents.refused"] == 10_000
    broker.audit.flush(final=True)
    written = rows(broker)
    assert len(written) == 101 and written[-1][3].startswith("… and 9,900 more in ")


# ------------------------------------- a real member of group coral, real daemons

IMPOSTOR = r"""
import sys, zmq
from coral.daemon import wire
from coral.proto import coral_pb2 as pb
endpoint, agent_id = sys.argv[1:3]
s = zmq.Context().socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 2000)
s.connect(endpoint)
s.send_multipart(wire.encode_ready(pb.AgentHello(agent_id=agent_id, services=[
    pb.ServiceInstance(service="payments", pid=1, agent_id=agent_id)])))
s.send_multipart(wire.encode_audit(pb.AuditEntry(timestamp_unix_ns=1, who="uid:0", method="AttachUprobe",
                                                  outcome="OK", detail="forged by an impostor")))
for i in range(2000):  # guesses at the colony's request ids, old style and new
    s.send_multipart(wire.encode_reply(f"c{i}".encode(), pb.AttachUprobeResponse()))
heard = s.poll(10_000)
print(wire.decode(s.recv_multipart()).command.name if heard else "nothing")
"""


def test_a_member_of_group_coral_cannot_pose_as_the_agent(coral_env: CoralEnv, bpf: None, payments_binary: Path,
                                                           member: pwd.struct_passwd,
                                                           colony_user: pwd.struct_passwd) -> None:
    coral_env.open_to_members()  # the member reaches the sockets, as an operator would
    with running(coral_env, payments_binary, colony_user) as service:  # the colony confined as its unit
        wait_for_service(coral_env, "payments")
        attach, session = start_attach(coral_env, "payments", "validate_card", "--duration", "3s", "--no-save")
        ping = json.loads(coralctl(coral_env, "--local", "--output", "json", "ping").stdout)
        impostor = subprocess.run(
            [sys.executable, "-c", IMPOSTOR, coral_env.endpoint("colony/colony-backend.sock"), ping["agent_id"]],
            env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=60,
            user=member.pw_uid, group=member.pw_gid, extra_groups=["coral"], cwd="/",
        )
        assert impostor.stdout.strip() == "DISCONNECT", impostor.stderr  # refused: the colony does not know it
        assert service.call(20).startswith("done 20 ")
        attach.wait(30)
        events = coralctl(coral_env, "--output", "json", "debug", "events", session["session_id"])
        calls = [json.loads(line) for line in events.stdout.splitlines()]
        summary = calls.pop()
        assert (summary["status"], summary["calls"], summary["lost"]) == ("expired", 20, {}), summary
        assert len(calls) == 20 and {c["pid"] for c in calls} == {service.child_pid}
        listed = [json.loads(line) for line in coralctl(coral_env, "--output", "json", "services").stdout.splitlines()]
        assert [(s["agent_id"], s["pid"]) for s in listed] == [(ping["agent_id"], service.child_pid)]
        audit = [json.loads(line) for line in coralctl(coral_env, "--output", "json", "audit").stdout.splitlines()]
        (refused,) = [e for e in audit if e["method"] == "READY"]
        assert (refused["who"], refused["outcome"], refused["detail"]) == (
            f"uid:{member.pw_uid}",
            "PERMISSION_DENIED",
            f"uid {member.pw_uid} may not speak for agent {ping['agent_id']}: agents run as root ([colony] agent_users)",
        )
        assert not [e for e in audit if "forged" in str(e["detail"])]
        counters = json.loads(coralctl(coral_env, "--output", "json", "ping").stdout)["counters"]
        assert counters["agents.refused"] == 1 and counters.get("replies.foreign", 0) == 0


PLAIN_SERVICE = r"""
import sys, time
import coral.sdk
coral.sdk.init(service="plain")
print("up", flush=True)
sys.stdin.read()  # until SIGTERM: no handler of its own, as most services
"""


def test_procs_is_closed_to_outsiders_and_stale_sockets_go(coral_env: CoralEnv, colony: object, agent: object) -> None:
    procs = coral_env.runtime_dir / "procs"
    st = procs.stat()
    assert (st.st_mode & 0o7777, grp.getgrgid(st.st_gid).gr_name) == (0o1770, "coral")
    for d in (coral_env.root, coral_env.runtime_dir):
        os.chmod(d, 0o755)
    squat = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
                            "touch", str(procs / "4000000.sock")], capture_output=True, text=True)
    assert squat.returncode != 0 and "Permission denied" in squat.stderr
    # The agent never connects where a registration says, unless it is in procs/.
    with Client(coral_env.endpoint("agent.sock"), 10) as c, pytest.raises(InvalidArgument) as refused:
        c.call("RegisterProcess", pb.RegisterProcessRequest(
            service="x", pid=os.getpid(), executable=sys.executable, address=coral_env.endpoint("colony/colony.sock")))
    assert refused.value.message.startswith(f"address must be ipc://{procs}/NAME.sock")
    # A Python service killed by SIGTERM runs no cleanup: the agent removes its socket.
    service = subprocess.Popen([sys.executable, "-c", PLAIN_SERVICE], env=coral_env.env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None and service.stdout.readline() == "up\n"
        wait_for_service(coral_env, "plain")
        (sock,) = procs.glob(f"{service.pid}*.sock")
        service.terminate()
        assert service.wait(10) == -signal.SIGTERM
        assert sock.exists()  # nothing in the process removed it
        wait_until_gone(coral_env, "plain", sock)
    finally:
        service.kill()
        service.wait()


def wait_until_gone(env: CoralEnv, service: str, sock: Path, deadline_s: float = 10.0) -> None:
    """Ask the agent until it no longer lists the service and has removed its
    socket (it looks for exited processes twice a second); each ask is a
    round trip, no sleeping."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        out = coralctl(env, "--local", "--output", "json", "services")
        if not any(json.loads(line)["service"] == service for line in out.stdout.splitlines()) and not sock.exists():
            return
    raise AssertionError(f"the agent still lists {service}, or {sock} is still there")


HOLDER = r"""
import resource, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)  # and say nothing: an idle connection
    held.append(s)
print("held", len(held), flush=True)
sys.stdin.read()
"""
IDLE = 10_000
CAP = 2048  # the default [limits] max_connections_per_uid


def agent_id(env: CoralEnv) -> str:
    return str(json.loads(coralctl(env, "--local", "--output", "json", "ping").stdout)["agent_id"])


def test_ten_thousand_idle_connections_to_each_socket_harm_no_session(
    coral_env: CoralEnv, bpf: None, payments_binary: Path, member: pwd.struct_passwd, colony_user: pwd.struct_passwd
) -> None:
    """The daemons start with systemd's usual soft limit of 1024 descriptors
    (the hard one above it), as a unit without LimitNOFILE= would give them;
    a member holds 10,000 idle connections to the colony's socket and
    10,000 to the agent's while the operator's session runs. Past the
    member's 2,048 ([limits] max_connections_per_uid) each is cut as soon as
    it is accepted, and the cut is audited in one row per socket."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard >= IDLE + 1000, f"this test needs a hard descriptor limit of at least {IDLE + 1000}, not {hard}"
    low = ("prlimit", f"--nofile=1024:{hard}", "--")
    coral_env.open_to_members()
    with contextlib.ExitStack() as stack:
        colony = start_colony(coral_env, wrap=as_unit("coral-colonyd.service", coral_env, colony_user, f"1024:{hard}"))
        stack.callback(colony.stop)
        agent = start_agent(coral_env, wrap=low)
        stack.callback(agent.stop)
        service = NativeService(coral_env, payments_binary)
        stack.callback(service.stop)
        wait_for_service(coral_env, "payments")
        # Long enough for the connections to be made and cut however loaded the machine; detached below.
        attach, session = start_attach(coral_env, "payments", "validate_card", "--duration", "5m", "--no-save")
        holders = []
        for sock in ("colony/colony.sock", "agent.sock"):
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(coral_env.runtime_dir / sock), str(IDLE)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, user=member.pw_uid, group=member.pw_gid, extra_groups=["coral"])
            stack.callback(holder.wait)
            stack.callback(holder.kill)
            holders.append(holder)
        for holder in holders:
            assert holder.stdout is not None and holder.stdout.readline() == f"held {IDLE}\n"
        cut = {}
        for where in ((), ("--local",)):
            for _ in range(100):  # each ask is a round trip while the daemon works through the cuts
                ping = json.loads(coralctl(coral_env, *where, "--output", "json", "ping").stdout)
                cut[where] = ping["counters"]["connections.cut"]
                if cut[where] >= IDLE - CAP:
                    break
        assert cut == {(): IDLE - CAP, ("--local",): IDLE - CAP}, cut
        for daemon in (colony, agent):
            assert len(os.listdir(f"/proc/{daemon.pid}/fd")) < CAP + 200  # the member's 2,048 and the daemon's own
        audit = coralctl(coral_env, "--output", "json", "audit", "--max", "10000").stdout.splitlines()
        connects = [r for r in map(json.loads, audit) if r.get("method") == "CONNECT"]
        who = f"uid:{member.pw_uid}"
        assert sorted(r["who"] for r in connects) == [who, f"{who} on agent {agent_id(coral_env)}"], connects
        assert all(r["outcome"] == "LIMIT_EXCEEDED" and "connection(s) past uid" in r["detail"] for r in connects)
        assert service.call(20).startswith("done 20 ")
        assert coralctl(coral_env, "debug", "detach", session["session_id"]).returncode == 0
        attach.wait(30)
        events = coralctl(coral_env, "--output", "json", "debug", "events", session["session_id"])
        summary = json.loads(events.stdout.splitlines()[-1])
        assert (summary["status"], summary["calls"], summary["lost"]) == ("detached", 20, {}), summary
        assert colony.proc.poll() is None and agent.proc.poll() is None


# ------------------------------------------------------------ service names

OWNERS: dict[str, tuple[str, ...]] = {"vault": ("root", "@vaulters")}


def test_who_may_register_a_service_name() -> None:
    from coral.agentd.registry import owner_refusal

    assert owner_refusal("vault", 0, OWNERS, None, identify) == ""  # root may always
    assert owner_refusal("vault", 998, {"vault": ("coral-agent",)}, None, identify) == ""  # by name
    assert owner_refusal("vault", 1500, {"vault": ("1500",)}, None, identify) == ""  # by uid
    assert owner_refusal("vault", 1500, {"vault": ("@coral",)}, None, identify) == ""  # by group
    assert owner_refusal("vault", 1500, OWNERS, None, identify) == (
        "uid 1500 may not register service 'vault': [services] vault admits root, @vaulters")
    assert owner_refusal("web", 1500, OWNERS, None, identify) == ""  # not configured: the first comes first
    assert owner_refusal("web", 1500, OWNERS, 1500, identify) == ""  # more instances of its own
    assert owner_refusal("web", 1500, OWNERS, 0, identify) == (
        "service 'web' is registered by uid 0; only that uid may add instances while it runs "
        "(name who may register it in [services])")


REGISTRAR = r"""
import os, sys
from pathlib import Path
import zmq
from coral.daemon.client import Client
from coral.daemon.errors import CoralError
from coral.daemon.runtime import bind_process_socket
from coral.proto import coral_pb2 as pb
agent, procs = sys.argv[1:3]
rep = zmq.Context.instance().socket(zmq.REP)
rep.setsockopt(zmq.LINGER, 0)
address = bind_process_socket(rep, Path(procs), os.getpid())
for service in sys.argv[3:]:
    try:
        Client(agent, 10).call("RegisterProcess", pb.RegisterProcessRequest(
            service=service, pid=os.getpid(), executable=sys.executable, address=address, kind="python"))
        print(service, "OK", flush=True)
    except CoralError as exc:
        print(service, exc.code, exc.message, flush=True)
print("done", flush=True)
sys.stdin.read()  # registered until the test is done looking
"""


def test_a_member_cannot_take_a_configured_name_nor_one_another_uid_runs(
    coral_env: CoralEnv, bpf: None, payments_binary: Path, member: pwd.struct_passwd, colony_user: pwd.struct_passwd
) -> None:
    coral_env.open_to_members('[services]\nvault = ["root"]\n')
    with running(coral_env, payments_binary, colony_user) as payments:  # root runs payments: its uid holds the name
        wait_for_service(coral_env, "payments")
        registrar = subprocess.Popen(
            [sys.executable, "-c", REGISTRAR, coral_env.endpoint("agent.sock"), str(coral_env.runtime_dir / "procs"),
             "vault", "payments", "mine", "vault"],
            env={**coral_env.env, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            user=member.pw_uid, group=member.pw_gid, extra_groups=["coral"], cwd="/",
        )
        try:
            assert registrar.stdout is not None
            said = [registrar.stdout.readline().strip() for _ in range(5)]
            uid = member.pw_uid
            refused_vault = f"vault PERMISSION_DENIED uid {uid} may not register service 'vault': [services] vault admits root"
            assert said == [
                refused_vault,
                "payments PERMISSION_DENIED service 'payments' is registered by uid 0; only that uid may add instances "
                "while it runs (name who may register it in [services])",
                "mine OK",
                refused_vault,  # a refused re-registration keeps the one before
                "done",
            ]
            services = coralctl(coral_env, "--local", "--output", "json", "services").stdout.splitlines()
            listed = sorted((s["service"], s["pid"]) for s in map(json.loads, services))
            assert listed == [("mine", registrar.pid), ("payments", payments.child_pid)]
        finally:
            registrar.kill()
            registrar.wait()
        attach, session = start_attach(coral_env, "payments", "validate_card", "--duration", "2s", "--no-save")
        assert payments.call(10).startswith("done 10 ")
        attach.wait(30)
        events = coralctl(coral_env, "--output", "json", "debug", "events", session["session_id"])
        summary = json.loads(events.stdout.splitlines()[-1])
        assert (summary["status"], summary["calls"]) == ("expired", 10), summary
        warning = f"service 'mine' is not in [services]: uid {uid} registered it first"
        assert warning in (coral_env.root / "agentd.log").read_text()


def test_no_peer_can_grow_the_audit_table_by_varying_what_it_sends(tmp_path: Path) -> None:
    """Unknown method names become '?', an agent's report is folded per
    agent, and only a session that really started or ended is never folded
    (a detach of an ended session is an ordinary row)."""
    broker = a_broker(tmp_path)
    broker.agent_ready(b"A", hello("a"), ROOT, 0.0)
    for i in range(1000):
        request = wire.decode(wire.encode_request(b"r", f"Nope{i}", pb.PingRequest(), (b"client",)))
        broker.handle_request(request, MEMBER, 0.0)
        broker.record_agent_audit(b"A", pb.AuditEntry(who=f"uid:{i}", method="DetachUprobe", outcome="OK"))
    broker.audit.flush(final=True)
    written = rows(broker)
    assert len(written) == 2 * 101, len(written)
    assert {(w, m) for w, m, _, _ in written} >= {("uid:1500", "?")}
    assert sum(d.startswith("… and 900 more in ") for _, _, _, d in written) == 2


def test_a_descriptor_is_judged_only_if_it_is_still_a_connection_to_the_capped_socket(tmp_path: Path) -> None:
    """The monitor's event may be read after libzmq closed the descriptor
    and the number went to a file, or to the daemon's own connection
    elsewhere: neither is counted, let alone cut."""
    import socket

    from coral.daemon.connections import peer_uid

    path = str(tmp_path / "capped.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    accepted, _ = listener.accept()
    elsewhere, _ = socket.socketpair()
    with open(tmp_path / "file", "w") as f:
        assert peer_uid(accepted.fileno(), path) == (os.getuid(), os.getpid())
        assert peer_uid(client.fileno(), path) is None  # our own outgoing connection
        assert peer_uid(elsewhere.fileno(), path) is None
        assert peer_uid(f.fileno(), path) is None
        assert peer_uid(9999, path) is None  # closed
    for s in (listener, client, accepted, elsewhere):
        s.close()
