"""Hostile but well-formed requests, against real daemons: each is refused
with a clear error, leaves an audit row in the colony, and harms nothing.

A registrant controls the metadata it answers, so the hostile registrant
here is the test process itself: it registers its own pid (which the
agent allows) and serves crafted GetFunctionMetadata answers."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest
import zmq

from coral.daemon import wire
from coral.daemon.client import Client
from coral.daemon.errors import NotFound, PermissionDenied
from coral.daemon.methods import PROCESS_METHODS
from coral.daemon.runtime import bind_socket
from coral.daemon.server import Dispatcher, Peer, serve_rep_once
from coral.elfinfo import ElfFunctions
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, NativeService, Process, coralctl, kernel_probes

ME = os.getpid()
PYTHON = os.readlink("/proc/self/exe")


def a_function_of_python() -> tuple[str, int]:
    """A function of this interpreter's executable and its file offset."""
    elf = ElfFunctions.load(PYTHON)
    name = next(n for n in ("PyObject_Repr", "Py_Initialize", *sorted(elf.symbols)) if n in elf.symbols)
    return name, elf.file_offset(elf.symbols[name][0])


@dataclass
class HostileRegistrant:
    """Registers this very process under `service` and answers metadata
    from `answers` (function name -> what it claims)."""

    env: CoralEnv
    answers: dict[str, pb.FunctionMetadata]
    service: str = "evil"
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.address = f"ipc://{self.env.runtime_dir / 'procs' / f'{ME}.sock'}"
        self._context = zmq.Context()
        self._rep = self._context.socket(zmq.REP)
        bind_socket(self._rep, self.address)
        handlers = {
            "Ping": lambda r, p: pb.PingResponse(daemon="hostile"),
            "ListFunctions": lambda r, p: pb.ListFunctionsResponse(functions=list(self.answers)),
            "GetFunctionMetadata": self._metadata,
        }
        self._dispatcher = Dispatcher(handlers, PROCESS_METHODS)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        with Client(self.env.endpoint("agent.sock"), 10) as c:
            c.call(
                "RegisterProcess",
                pb.RegisterProcessRequest(service=self.service, pid=ME, executable=PYTHON, address=self.address, kind="native"),
            )

    def _metadata(self, req: pb.GetFunctionMetadataRequest, peer: Peer) -> pb.GetFunctionMetadataResponse:
        if req.function not in self.answers:
            raise NotFound(f"no {req.function}")
        return pb.GetFunctionMetadataResponse(metadata=self.answers[req.function])

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self._rep.poll(100):
                serve_rep_once(self._rep, self._dispatcher)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._rep.close(linger=0)
        self._context.term()


@pytest.fixture
def hostile(coral_env: CoralEnv, colony: Process, agent: Process) -> Iterator[HostileRegistrant]:
    name, offset = a_function_of_python()
    answers = {
        "outside": pb.FunctionMetadata(
            kind="native", name="outside", binary_path="/etc/shadow", file_offset=0x1000, size=16, pid=ME
        ),
        "traversal": pb.FunctionMetadata(
            kind="native",
            name="traversal",
            file_offset=offset,
            size=16,
            pid=ME,
            binary_path=f"{os.path.dirname(PYTHON)}/../../etc/shadow",
        ),
        "otherpid": pb.FunctionMetadata(kind="native", name="otherpid", binary_path=PYTHON, file_offset=offset, size=16, pid=1),
        "midinsn": pb.FunctionMetadata(kind="native", name=name, binary_path=PYTHON, file_offset=offset + 1, size=16, pid=ME),
        "nocode": pb.FunctionMetadata(kind="native", name="nocode", binary_path=PYTHON, file_offset=0x7FFF_0000, size=16, pid=ME),
    }
    registrant = HostileRegistrant(coral_env, answers)
    yield registrant
    registrant.close()


def audit(env: CoralEnv) -> list[dict[str, object]]:
    out = coralctl(env, "--output", "json", "audit", "--max", "10000")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_crafted_metadata_is_refused_and_audited(coral_env: CoralEnv, hostile: HostileRegistrant) -> None:
    from tests.test_native_e2e import wait_for_service

    wait_for_service(coral_env, "evil")
    shadow = f"{os.path.dirname(PYTHON)}/../../etc/shadow"
    cases = {
        "outside": "/etc/shadow is not mapped in process {pid}",
        "traversal": f"{shadow} is not mapped in process {{pid}}",
        "otherpid": "metadata names pid 1, registered process is {pid}",
        "midinsn": "is not the start of a function in its symbol table; only a function's first instruction is probed",
        "nocode": "offset 0x7fff0000 of /proc/{pid}/exe is not in an executable mapping of process {pid}",
    }
    for function, message in cases.items():
        out = coralctl(coral_env, "debug", "attach", "evil", "--function", function, "--duration", "1s")
        assert out.returncode == 1 and message.format(pid=ME) in out.stderr, (function, out.stderr)
    assert f"/proc/{ME}/" not in kernel_probes()  # nothing was attached
    refused = {e["function"]: e for e in audit(coral_env) if e["method"] == "AttachUprobe"}
    for function, message in cases.items():
        assert refused[function]["outcome"] == "PERMISSION_DENIED"
        assert message.format(pid=ME) in str(refused[function]["detail"])
    assert coralctl(coral_env, "ping").returncode == 0 and coralctl(coral_env, "--local", "ping").returncode == 0


def test_a_probe_on_a_process_that_did_not_register_is_refused_and_audited(
    coral_env: CoralEnv, colony: Process, agent: Process
) -> None:
    out = coralctl(coral_env, "debug", "attach", "ghost", "--function", "f", "--duration", "1s")
    assert out.returncode == 1 and out.stderr.strip().startswith("coralctl: service 'ghost' not found")
    (row,) = [e for e in audit(coral_env) if e["method"] == "AttachUprobe"]
    assert (row["service"], row["outcome"]) == ("ghost", "NOT_FOUND")


def test_oversize_bounds_are_refused_and_audited(coral_env: CoralEnv, payments: NativeService) -> None:
    from tests.test_native_e2e import wait_for_service

    wait_for_service(coral_env, "payments")
    cases = [
        (["--duration", "11m"], "coralctl: duration 660s exceeds the maximum of 600s; ask for 600s or less"),
        (
            ["--max-events", "100001"],
            "coralctl: max_events 100001 exceeds this agent's limit of 100000 "
            "([sessions] max_events_per_session); ask for 100000 or less",
        ),
    ]
    for flags, message in cases:
        out = coralctl(coral_env, "debug", "attach", "payments", "--function", "validate_card", *flags)
        assert (out.returncode, out.stderr.strip()) == (1, message)
    rows = [e for e in audit(coral_env) if e["method"] == "AttachUprobe"]
    assert [r["outcome"] for r in rows] == ["INVALID_ARGUMENT", "INVALID_ARGUMENT"]
    assert "exceeds the maximum of 600s" in str(rows[0]["detail"]) and "max_events 100001" in str(rows[1]["detail"])


PIPELINED = 5_000


def test_a_client_that_reads_late_gets_every_reply(coral_env: CoralEnv, colony: Process) -> None:
    """A client pipelines 5,000 requests and reads nothing until the colony
    has answered them all: every reply waits in the colony's queue for it
    (the queue's size is set before the socket binds, or libzmq ignores it)."""
    s: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 1)  # this client queues almost nothing itself
    s.connect(coral_env.endpoint("colony/colony.sock"))
    try:
        for i in range(PIPELINED):
            s.send_multipart(wire.encode_request(f"p{i}".encode(), "Ping", pb.PingRequest()))
        with Client(coral_env.endpoint("colony/colony.sock"), 30) as c:  # another client watches the colony's request count
            asked = 0
            while True:
                counters = cast(pb.PingResponse, c.call("Ping", pb.PingRequest())).counters
                asked += 1
                if counters["requests"] >= PIPELINED + asked:
                    break
        assert counters.get("unroutable.frontend", 0) == 0, dict(counters)
        ids: list[bytes] = []
        while len(ids) < PIPELINED:
            assert s.poll(10_000), f"got {len(ids)} of {PIPELINED} replies"
            ids.append(wire.decode(s.recv_multipart()).request_id)
    finally:
        s.close()
    assert ids == [f"p{i}".encode() for i in range(PIPELINED)]


SESSIONS = 10_000


def test_ten_thousand_sessions_at_once(coral_env: CoralEnv, agent: Process, payments: NativeService) -> None:
    """Pipelined on one DEALER: the agent's slots run out, every other
    request is refused with LIMIT_EXCEEDED and audited, nothing leaks."""
    from tests.test_native_e2e import wait_for_service

    wait_for_service(coral_env, "payments")
    request = pb.AttachUprobeRequest(service="payments", function="validate_card", duration_ms=600_000)
    with Client(coral_env.endpoint("colony/colony.sock"), 30) as c:  # one session first: the agent's link to the process opens
        first = c.call("AttachUprobe", request).session.session_id  # type: ignore[attr-defined]
        c.call("DetachUprobe", pb.DetachUprobeRequest(session_id=first))
    fds_before = len(os.listdir(f"/proc/{agent.pid}/fd"))
    flood_started = time.time_ns()
    s: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    s.connect(coral_env.endpoint("colony/colony.sock"))
    try:
        for i in range(SESSIONS):
            s.send_multipart(wire.encode_request(f"r{i}".encode(), "AttachUprobe", request))
        replies: dict[str, list[str]] = {}
        while sum(len(v) for v in replies.values()) < SESSIONS:
            assert s.poll(60_000), f"replies stopped after {sum(len(v) for v in replies.values())}"
            frame = wire.decode(s.recv_multipart())
            body = (
                pb.AttachUprobeResponse.FromString(frame.body).session.session_id
                if frame.name == "OK"
                else pb.Error.FromString(frame.body).message
            )
            replies.setdefault(frame.name, []).append(body)
    finally:
        s.close()
    ok = replies.get("OK", [])
    assert len(ok) == 64, {k: (len(v), v[:1]) for k, v in replies.items()}
    refused = {k: v for k, v in replies.items() if k != "OK"}
    assert sum(len(v) for v in refused.values()) == SESSIONS - 64
    assert set(refused) <= {"LIMIT_EXCEEDED", "UNAVAILABLE"}, {k: v[:1] for k, v in refused.items()}
    assert any("already runs 64 sessions (limit 64)" in m for m in refused.get("LIMIT_EXCEEDED", []))
    # Every request is audited: each session that started has its row, and the
    # refusals are 100 rows per outcome, the rest counted (docs/protocol.md, "Audit floods").
    with Client(coral_env.endpoint("colony/colony.sock"), 30) as c:
        listed = c.call("ListAudit", pb.ListAuditRequest(since_unix_ns=flood_started, max_entries=10_000))
        folded = cast(pb.PingResponse, c.call("Ping", pb.PingRequest())).counters["audit.folded"]
    log = cast(pb.ListAuditResponse, listed).entries
    attaches = [e for e in log if e.method == "AttachUprobe"]
    assert sum(e.outcome == "OK" for e in attaches) == 64
    assert len(attaches) + folded == SESSIONS and len(attaches) <= 64 + 100 * len(refused)
    assert payments.call(3) == "done 3 declined 0"
    # Detach them all: no probe, no file descriptor left behind.
    for sid in ok:
        assert coralctl(coral_env, "debug", "detach", sid).returncode == 0
    assert f"/proc/{payments.child_pid}/" not in kernel_probes()
    with Client(coral_env.endpoint("agent.sock"), 10) as c:
        counters = c.call("Ping", pb.PingRequest()).counters  # type: ignore[attr-defined]
    assert (counters["sessions.active"], counters["kernel.attached_probes"]) == (0, 0)
    # A leak per request would be thousands; ZeroMQ and DuckDB may hold one or two more than before.
    assert len(os.listdir(f"/proc/{agent.pid}/fd")) <= fds_before + 2


def test_refusals_on_the_agents_local_socket_reach_the_colonys_audit_log(coral_env: CoralEnv, hostile: HostileRegistrant) -> None:
    from tests.test_native_e2e import wait_for_service

    wait_for_service(coral_env, "evil")
    someone_else = pb.RegisterProcessRequest(
        service="evil2",
        pid=1,
        executable="/sbin/init",
        kind="native",
        address=f"ipc://{coral_env.runtime_dir / 'procs' / '1.sock'}",
    )
    with Client(coral_env.endpoint("agent.sock"), 10) as c, pytest.raises(PermissionDenied) as refused:
        c.call("RegisterProcess", someone_else)
    assert refused.value.message == f"process {ME} may not register process 1 (only itself or its child)"
    local = coralctl(coral_env, "--local", "debug", "attach", "evil", "--function", "midinsn", "--duration", "1s")
    assert local.returncode == 1 and "is not the start of a function" in local.stderr
    # The agent sends its audit rows on its colony link ahead of any later
    # reply, so once a request routed through that agent is answered, they are in.
    assert coralctl(coral_env, "functions", "evil").returncode == 0
    rows = {e["method"]: e for e in audit(coral_env) if " on agent " in str(e["who"])}
    register, attach = rows["RegisterProcess"], rows["AttachUprobe"]
    assert (register["outcome"], register["service"], register["peer_pid"]) == ("PERMISSION_DENIED", "evil2", ME)
    assert register["detail"] == f"process {ME} may not register process 1 (only itself or its child)"
    assert str(register["who"]).startswith("uid:0 on agent ")
    assert (attach["outcome"], attach["function"]) == ("PERMISSION_DENIED", "midinsn")
