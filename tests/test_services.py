"""What an agent tells the colony about its registered processes stays
under the message cap however many there are: READY in pages, then only
what changed (SERVICES), and ListServices in pages. First the agent's real
link against a real ROUTER, then real daemons with a small cap."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from coral.agentd.colony_link import PAGE_BYTES, ColonyLink
from coral.colonyd import agents as colony_agents
from coral.colonyd.broker import Broker
from coral.colonyd.store import ColonyStore
from coral.daemon import wire
from coral.daemon.config import Config
from coral.daemon.errors import InvalidArgument
from coral.daemon.paging import services_page
from coral.daemon.server import Dispatcher, Peer
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, coralctl, start_agent, start_colony

CAP = 4 * 1024 * 1024  # the default limits.max_message_bytes
ROOT = Peer(uid=0, gid=0, pid=10)


def longest(pid: int, agent_id: str = "web-1") -> pb.ServiceInstance:
    """An instance with every field at its bound (docs/protocol.md)."""
    return pb.ServiceInstance(service=f"{pid:08d}" + "s" * 192, pid=pid, executable="/" + "e" * 4095, kind="python",
                              agent_id=agent_id, registered_unix_ns=2**62, sdk_version="v" * 64, runtime="r" * 64)


class Link:
    """The agent's ColonyLink connected to a ROUTER this test reads."""

    def __init__(self, instances: list[pb.ServiceInstance]) -> None:
        self.instances = instances
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.bind("inproc://colony")
        hello = lambda: pb.AgentHello(agent_id="web-1", services=self.instances)  # noqa: E731
        self.link = ColonyLink(self.context, "inproc://colony", hello, Dispatcher({}, ()), 1.0, 3, CAP)

    def messages(self) -> list[list[bytes]]:
        out = []
        while self.router.poll(200):
            out.append(self.router.recv_multipart())
        return out

    def close(self) -> None:
        self.link.close()
        self.router.close(linger=0)
        self.context.term()


def feed(broker: Broker, messages: list[list[bytes]]) -> None:
    """What coral/colonyd/main.py does with READY and SERVICES."""
    for frames in messages:
        frame = wire.decode(frames)
        if frame.command == wire.Command.READY:
            broker.agent_ready(frame.envelope[0], wire.parse_body(pb.AgentHello, frame.body), ROOT, 0.0)
        elif frame.command == wire.Command.SERVICES:
            assert broker.agent_services(frame.envelope[0], wire.parse_body(pb.ServicesChanged, frame.body), 0.0)


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    return Broker(Config(), ColonyStore(tmp_path / "colony.duckdb"))


def test_ten_thousand_of_the_longest_registrations_reach_the_colony_under_the_cap(broker: Broker) -> None:
    link = Link([longest(pid) for pid in range(1, 10_001)])
    try:
        link.link.connect(0.0)
        messages = link.messages()
        sizes = [sum(map(len, m)) for m in messages]
        commands = [wire.decode(m).command for m in messages]
        assert commands[0] == wire.Command.READY and set(commands[1:]) == {wire.Command.SERVICES}
        assert max(sizes) <= PAGE_BYTES + 1024 < CAP, max(sizes)
        assert sum(sizes) > 40_000_000  # 45 MB in all: one READY could never have carried it
        feed(broker, messages)
        assert sorted(s.pid for s in broker.services()) == list(range(1, 10_001))
        assert len(broker.agents_for(longest(77).service)) == 1
    finally:
        link.close()


def test_one_more_registration_costs_one_small_message_however_many_there_are(broker: Broker) -> None:
    sizes = []
    for registered in (10, 10_000):
        link = Link([longest(pid) for pid in range(1, registered + 1)])
        try:
            link.link.connect(0.0)
            feed(broker, link.messages())
            link.link.announce(pb.ServicesChanged(added=[longest(99_999)], removed=[3]), 1.0)
            (message,) = link.messages()
            assert wire.decode(message).command == wire.Command.SERVICES
            sizes.append(sum(map(len, message)))
            feed(broker, [message])
            pids = {s.pid for s in broker.services()}
            assert 99_999 in pids and 3 not in pids and len(pids) == registered
        finally:
            link.close()
    assert sizes[0] == sizes[1] < 5_000, sizes


def test_a_services_message_the_link_could_not_queue_makes_it_send_everything_again(broker: Broker) -> None:
    link = Link([longest(pid) for pid in range(1, 4)])
    try:
        link.link.connect(0.0)
        feed(broker, link.messages())
        real_send = link.link._send
        link.link._send = lambda frames, now: False  # type: ignore[method-assign]  # the queue to the colony is full
        link.instances.append(longest(4))
        link.link.announce(pb.ServicesChanged(added=[longest(4)]), 1.0)
        assert link.link.resync
        link.link._send = real_send  # type: ignore[method-assign]
        link.instances.append(longest(5))
        link.link.announce(pb.ServicesChanged(added=[longest(5)]), 2.0)  # only 5 changed since, but 4 was lost
        messages = link.messages()
        assert [wire.decode(m).command for m in messages] == [wire.Command.READY]
        feed(broker, messages)
        assert sorted(s.pid for s in broker.services()) == [1, 2, 3, 4, 5] and not link.link.resync
    finally:
        link.close()


def test_services_from_a_link_the_colony_does_not_know_are_refused(broker: Broker) -> None:
    assert not broker.agent_services(b"stranger", pb.ServicesChanged(added=[longest(1)]), 0.0)
    assert broker.services() == []


def test_the_colony_holds_a_bounded_number_of_instances_per_agent(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(colony_agents, "MAX_AGENT_SERVICES", 5)
    broker.agent_ready(b"link", pb.AgentHello(agent_id="web-1", services=[longest(p) for p in range(1, 4)]), ROOT, 0.0)
    assert broker.agent_services(b"link", pb.ServicesChanged(added=[longest(p) for p in range(4, 10)]), 0.0)
    assert len(broker.services()) == 5 and broker.counters["services.refused"] == 4
    assert broker.agent_services(b"link", pb.ServicesChanged(added=[longest(1)], removed=[2]), 0.0)  # replace, remove
    assert broker.agent_services(b"link", pb.ServicesChanged(added=[longest(6)]), 0.0)  # room again
    assert sorted(s.pid for s in broker.services()) == [1, 3, 4, 5, 6]


def test_an_agent_cannot_list_instances_under_another_agents_id(broker: Broker) -> None:
    broker.agent_ready(b"link", pb.AgentHello(agent_id="web-1"), ROOT, 0.0)
    broker.agent_services(b"link", pb.ServicesChanged(added=[longest(1, agent_id="web-2")]), 0.0)
    assert [s.agent_id for s in broker.services()] == ["web-1"]


def test_list_services_answers_in_pages_that_together_hold_every_instance_once() -> None:
    instances = [longest(pid, agent_id=f"web-{pid % 3}") for pid in range(1, 10_001)]
    seen, after, pages = [], "", 0
    while True:
        page = services_page(instances, after, CAP // 4)
        assert page.ByteSize() <= CAP // 4
        seen += [(s.agent_id, s.pid) for s in page.services]
        pages += 1
        if not page.next:
            break
        after = page.next
    assert seen == sorted((s.agent_id, s.pid) for s in instances) and pages > 40
    assert services_page([], "", CAP).services == []
    for bad in ("nonsense", "x:web-1", "1" * 400 + ":a"):
        with pytest.raises(InvalidArgument, match="after must be the `next` of a ListServices page"):
            services_page(instances, bad, CAP)


# ---------------------------------------------------------------- real daemons

REGISTRANT = r"""
import os, signal, socket, subprocess, sys
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb

runtime, exe, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
path = f"{runtime}/procs/{os.getpid()}-many.sock"
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
children = [subprocess.Popen([exe, "3600"]) for _ in range(count)]
agent = Client(f"ipc://{runtime}/agent.sock", 10.0)
for i, child in enumerate(children):  # a parent may register its children, as coral-run does
    agent.call("RegisterProcess", pb.RegisterProcessRequest(
        service=f"svc-{i:03d}-" + "x" * 180, pid=child.pid, address=f"ipc://{path}", kind="native"))
print("registered", flush=True)
for line in sys.stdin:
    for child in children[: int(line)]:
        child.kill()
        child.wait()
    print("killed", flush=True)
for child in children:
    child.kill()
    child.wait()
"""
COUNT = 60


def listed(env: CoralEnv, *where: str) -> set[str]:
    out = coralctl(env, *where, "--output", "json", "services")
    assert out.returncode == 0, out.stderr
    return {json.loads(line)["service"] for line in out.stdout.splitlines()}


def wait_listed(env: CoralEnv, count: int, *where: str) -> set[str]:
    for _ in range(200):  # each ask is a round trip; the agent announces within 0.1 s, prunes every 0.5 s
        names = listed(env, *where)
        if len(names) == count:
            return names
    raise AssertionError(f"listed {len(names)} services, not {count}")


def test_sixty_long_registrations_pass_a_64_kib_cap_in_pages(coral_env: CoralEnv, bpf: None) -> None:
    """With limits.max_message_bytes at its minimum, 60 registrations of
    long names (about 42 KB) take several READY/SERVICES pages and several
    ListServices pages, on the colony and on the agent; processes that exit
    leave the colony's list by SERVICES, and a restarted colony gets the
    whole list again."""
    env = coral_env.with_config("[limits]\nmax_message_bytes = 65536\n")
    deep = coral_env.root / ("d" * 200) / ("e" * 200)
    deep.mkdir(parents=True)
    sleep = deep / "sleep"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", sleep)
    colony = start_colony(env)
    agent = start_agent(env)
    registrant = subprocess.Popen([sys.executable, "-c", REGISTRANT, str(env.runtime_dir), str(sleep), str(COUNT)],
                                  env=env.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  start_new_session=True)
    try:
        assert registrant.stdout is not None and registrant.stdin is not None
        assert registrant.stdout.readline() == "registered\n"
        names = wait_listed(env, COUNT)
        assert names == {f"svc-{i:03d}-" + "x" * 180 for i in range(COUNT)}
        assert listed(env, "--local") == names
        in_ready = [int(line.split("(")[1].split()[0]) for line in colony.log_path.read_text().splitlines()
                    if "services in READY" in line]
        assert in_ready and all(n < COUNT for n in in_ready), in_ready  # the rest came as SERVICES
        one = json.loads(coralctl(env, "--output", "json", "services").stdout.splitlines()[0])
        assert one["executable"] == str(sleep) and len(str(sleep)) > 400
        registrant.stdin.write("10\n")
        registrant.stdin.flush()
        assert registrant.stdout.readline() == "killed\n"
        left = wait_listed(env, COUNT - 10)
        colony.stop()
        colony = start_colony(env)
        assert wait_listed(env, COUNT - 10) == left  # the agent heard DISCONNECT and sent everything again
        ping = json.loads(coralctl(env, "--output", "json", "ping").stdout)
        assert ping["counters"].get("services.refused", 0) == 0
    finally:
        if registrant.stdin is not None:
            registrant.stdin.close()  # end of input: it kills its children and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            registrant.wait(10)
        with contextlib.suppress(ProcessLookupError):  # its children, even if it died before it could
            os.killpg(registrant.pid, signal.SIGKILL)
        registrant.wait()
        agent.stop()
        colony.stop()


# ------------------------------------------------------------ pruning


def test_a_prune_costs_what_exited_not_what_is_registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """300 real processes registered. Their exits come from pidfds: a prune
    looks at the 3 that exited and SWEEP others (for an exec), not at all
    300; a process that execs another program is found within one round of
    sweeps; a process just killed is not listed even before a prune."""
    import socket as sockets

    from coral.agentd import registry as reg_module
    from coral.agentd.registry import ProcessRegistry, Registration

    monkeypatch.setattr(reg_module, "SWEEP", 10)
    path = tmp_path / "many.sock"
    listener = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    listener.bind(str(path))
    children = [subprocess.Popen(["sleep", "60"]) for _ in range(299)]
    children.append(subprocess.Popen(["sh", "-c", "read line; exec sleep 60"], stdin=subprocess.PIPE))
    registry = ProcessRegistry(tmp_path)
    looked: list[int] = []
    real_loss = registry.loss

    def counted(reg: Registration) -> str:
        looked.append(reg.pid)
        return real_loss(reg)

    registry.loss = counted  # type: ignore[method-assign]
    try:
        me = Peer(uid=0, gid=0, pid=os.getpid())  # their parent, as coral-run is
        for i, child in enumerate(children):
            registry.register(pb.RegisterProcessRequest(service=f"s{i}", pid=child.pid, address=f"ipc://{path}"), me)
        assert registry.prune_exited() == [] and len(looked) == 10
        for child in children[:3]:
            child.kill()
            child.wait()
        assert len(registry.live_instances()) == 297  # before any prune
        looked.clear()
        gone = registry.prune_exited()
        assert sorted(r.pid for r in gone) == sorted(c.pid for c in children[:3])
        assert len(looked) <= 3 + 10, len(looked)
        execs = children[-1]
        assert execs.stdin is not None
        execs.stdin.write(b"go\n")
        execs.stdin.close()
        end = time.monotonic() + 10
        while not os.readlink(f"/proc/{execs.pid}/exe").endswith("sleep"):  # the exec itself, then sweep
            assert time.monotonic() < end, "sh never ran exec"
        found = []
        for _ in range(30):  # one round: 297 / 10 prunes
            found += registry.prune_exited()
        assert [r.pid for r in found] == [execs.pid]
    finally:
        for child in children:
            child.kill()
            child.wait()
        registry.close()
        listener.close()
