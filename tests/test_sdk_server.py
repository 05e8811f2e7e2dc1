"""The SDK in a running process, over its real socket: coral.sdk.init()
binds ipc://<runtime_dir>/procs/<pid>.sock and answers the process API;
a forked child gets its own; the example payments service opts in and,
with a real agent, registers and answers through it."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import pytest

import coral.sdk
from coral.daemon.client import Client
from coral.daemon.errors import InvalidArgument, NotFound
from coral.proto import coral_pb2 as pb
from coral.sdk.arming import ARMS
from coral.sdk.metadata import probe_site
from tests.harness import REPO, CoralEnv, Process, start_agent

MODULE = __name__
EXAMPLE = REPO / "examples" / "python" / "payments_service.py"


def settle(invoice: str, amount: int = 0, *, note: str = "") -> str:
    return f"{invoice}:{amount}"


class Ledger:
    def post(self, entry: str) -> None:
        pass


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private runtime dir (ipc paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="coral-sdk-", dir="/tmp") as root:
        monkeypatch.setenv("CORAL_RUNTIME_DIR", root)
        monkeypatch.setenv("CORAL_CONFIG", str(REPO / "etc" / "coral.toml"))
        yield Path(root)


@pytest.fixture
def sdk(runtime_dir: Path) -> Iterator[coral.sdk.Sdk]:
    started = coral.sdk.init(service="sdk-tests")
    assert started.wait_bound(10), "the SDK thread did not bind its socket"
    yield started
    coral.sdk.shutdown()


@pytest.fixture
def client(sdk: coral.sdk.Sdk) -> Iterator[Client]:
    with Client(sdk.address, timeout=10) as c:
        yield c


def call(client: Client, method: str, request: Any) -> Any:
    return cast(Any, client.call(method, request))


def functions_of_loaded_modules() -> dict[tuple[str, str], object]:
    out: dict[tuple[str, str], object] = {}
    for name, module in list(sys.modules.items()):
        if isinstance(module, types.ModuleType):
            for attr, value in list(vars(module).items()):
                if isinstance(value, types.FunctionType | type):
                    out[(name, attr)] = value
    return out


def test_init_returns_at_once_and_touches_no_function(runtime_dir: Path) -> None:
    before = functions_of_loaded_modules()
    started = coral.sdk.init(service="sdk-tests")
    try:
        assert started.wait_bound(10)
        assert coral.sdk.init(service="sdk-tests") is started  # a second init is harmless
        assert coral.sdk.init(service="another-name") is started
        with Client(started.address, timeout=10) as c:
            assert call(c, "Ping", pb.PingRequest()).pid == os.getpid()
        changed = [key for key, value in before.items() if vars(sys.modules[key[0]]).get(key[1]) is not value]
        assert changed == []
        assert started.address == f"ipc://{runtime_dir / 'procs' / f'{os.getpid()}.sock'}"
    finally:
        coral.sdk.shutdown()
    assert not (runtime_dir / "procs" / f"{os.getpid()}.sock").exists()
    assert coral.sdk.current() is None


def test_ping_says_who_answers(sdk: coral.sdk.Sdk, client: Client) -> None:
    pong = call(client, "Ping", pb.PingRequest())
    assert (pong.daemon, pong.version, pong.pid) == ("coral-sdk", coral.__version__, os.getpid())
    assert pong.counters["armed"] == 0 and pong.counters["semaphore"] == 0


def test_list_functions_by_glob(client: Client) -> None:
    listed = call(client, "ListFunctions", pb.ListFunctionsRequest(pattern="settle")).functions
    assert f"{MODULE}.settle" in listed
    listed = call(client, "ListFunctions", pb.ListFunctionsRequest(pattern=f"{MODULE}.Ledger.*")).functions
    assert list(listed) == [f"{MODULE}.Ledger.post"]
    everything = call(client, "ListFunctions", pb.ListFunctionsRequest(max_results=5))
    assert len(everything.functions) == 5 and everything.truncated
    assert not any(
        n.startswith("coral.") for n in call(client, "ListFunctions", pb.ListFunctionsRequest(pattern="coral.*")).functions
    )


def test_function_metadata_names_the_probe_site_and_semaphore(client: Client) -> None:
    meta = call(client, "GetFunctionMetadata", pb.GetFunctionMetadataRequest(function=f"{MODULE}.settle")).metadata
    site = probe_site()
    assert (meta.kind, meta.name, meta.pid) == ("python", f"{MODULE}.settle", os.getpid())
    assert (meta.binary_path, meta.address, meta.file_offset, meta.size) == (site.binary_path, site.address, site.file_offset, 6)
    assert meta.semaphore_offset == site.semaphore_offset
    assert meta.source_file == __file__ and meta.source_line == settle.__code__.co_firstlineno
    assert [(a.name, a.type) for a in meta.arguments] == [("invoice", "str"), ("amount", "int"), ("note", "str")]
    assert [r.type for r in meta.return_values] == ["str"]


def test_arm_and_disarm_over_the_socket(client: Client) -> None:
    original = settle
    armed = call(
        client,
        "ArmFunction",
        pb.ArmFunctionRequest(function=f"{MODULE}.settle", fn_id=41, config=pb.UprobeConfig(capture_args=True)),
    )
    assert armed.metadata.name == f"{MODULE}.settle" and armed.metadata.semaphore_offset == probe_site().semaphore_offset
    now = sys.modules[MODULE].settle
    assert now is not original and now.__wrapped__ is original and now("inv-1", 5) == "inv-1:5"
    assert ARMS.get(41) is not None and ARMS.get(41).probe.capture_return is False  # type: ignore[union-attr]
    assert call(client, "Ping", pb.PingRequest()).counters["armed"] == 1
    assert call(client, "DisarmFunction", pb.DisarmFunctionRequest(fn_id=41)).was_armed is True
    assert sys.modules[MODULE].settle is original
    assert call(client, "DisarmFunction", pb.DisarmFunctionRequest(fn_id=41)).was_armed is False


def test_errors_come_back_with_stable_codes_and_suggestions(client: Client) -> None:
    with pytest.raises(NotFound) as caught:
        client.call("GetFunctionMetadata", pb.GetFunctionMetadataRequest(function=f"{MODULE}.setle"))
    assert f"{MODULE}.settle" in caught.value.suggestions
    with pytest.raises(InvalidArgument, match="implemented in C"):
        client.call("ArmFunction", pb.ArmFunctionRequest(function="time.sleep", fn_id=1))
    with pytest.raises(InvalidArgument, match="function name is required"):
        client.call("ArmFunction", pb.ArmFunctionRequest(fn_id=1))
    # the socket keeps serving after errors
    assert call(client, "Ping", pb.PingRequest()).counters["errors.NOT_FOUND"] == 1


def test_shutdown_disarms_everything_and_init_works_again(runtime_dir: Path) -> None:
    first = coral.sdk.init(service="sdk-tests")
    assert first.wait_bound(10)
    ARMS.arm(f"{MODULE}.settle", 42)
    coral.sdk.shutdown()
    assert sys.modules[MODULE].settle is settle and ARMS.arms() == []
    second = coral.sdk.init(service="sdk-tests")
    try:
        assert second is not first and second.wait_bound(10)
        with Client(second.address, timeout=10) as c:
            assert call(c, "Ping", pb.PingRequest()).pid == os.getpid()
    finally:
        coral.sdk.shutdown()


# ------------------------------------------------------------------- fork

FORK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import coral.sdk
    from coral.sdk.arming import ARMS

    def target(x):
        return x

    def report(who, sdk):
        bound = sdk is not None and sdk.wait_bound(10)
        armed = type(sys.modules["__main__"].target).__name__ != "function"
        line = {"who": who, "pid": os.getpid(), "address": sdk.address if bound else "", "target_armed": armed}
        print(json.dumps(line), flush=True)

    parent = coral.sdk.init(service="fork-test")
    parent.wait_bound(10)
    ARMS.arm("__main__.target", 5)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        child = coral.sdk.current()
        report("child", child if child is not parent else None)
        os.read(r, 1)  # until the parent lets go
        sys.exit(0)
    os.close(r)
    report("parent", parent)
    sys.stdin.read()  # until the test is done
    os.close(w)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_a_forked_child_gets_its_own_socket_registration_and_no_arms(runtime_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", FORK_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    assert proc.stdin is not None
    try:
        stdout = Lines(proc.stdout, proc)
        lines = [json.loads(stdout.next()) for _ in range(2)]
        seen = {line["who"]: line for line in lines}
        parent, child = seen["parent"], seen["child"]
        assert parent["pid"] == proc.pid and child["pid"] != proc.pid
        assert (parent["target_armed"], child["target_armed"]) == (True, False)
        for who in (parent, child):
            assert who["address"] == f"ipc://{runtime_dir / 'procs' / str(who['pid'])}.sock"
            with Client(who["address"], timeout=10) as c:
                pong = call(c, "Ping", pb.PingRequest())
                assert (pong.pid, pong.counters["armed"]) == (who["pid"], 1 if who is parent else 0)
                assert "__main__.target" in call(c, "ListFunctions", pb.ListFunctionsRequest(pattern="target")).functions
        proc.stdin.close()
        assert proc.wait(30) == 0, proc.stderr.read().decode() if proc.stderr else ""
        assert sorted((runtime_dir / "procs").iterdir()) == []  # both cleaned up at exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Lines:
    """Lines a child writes to a pipe, read straight from the file
    descriptor: select() waits on the pipe (no sleep), and no line can hide
    in a buffer select() does not see. Fails with the child's stderr if it
    exits or says nothing in time."""

    def __init__(self, stream: IO[bytes] | None, proc: subprocess.Popen[bytes]) -> None:
        if stream is None:
            raise AssertionError("the child has no pipe to read")
        self.stream = stream
        self.proc = proc
        self.buffer = b""

    def next(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            ready = left > 0 and select.select([self.stream.fileno()], [], [], left)[0]
            chunk = os.read(self.stream.fileno(), 65536) if ready else b""
            if not chunk:
                self.proc.kill()
                self.proc.wait()
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr not in (None, self.stream) else ""
                raise AssertionError(
                    f"no line from pid {self.proc.pid} (exit {self.proc.returncode}); got {self.buffer!r}\n{err}"
                )
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace")


# --------------------------------------------------------- example service


class PaymentsService:
    """examples/python/payments_service.py on a free port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.log = Lines(self.proc.stderr, self.proc)
        self.port = int(Lines(self.proc.stdout, self.proc).next().split()[-1])

    def charge(self, card: str, amount: int) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/charge?card={card}&amount={amount}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        """Read the service's log until a line says ``text``."""
        seen: list[str] = []
        while True:
            try:
                line = self.log.next(timeout)
            except AssertionError as exc:
                log = "\n".join(seen)
                raise AssertionError(f"waiting for {text!r}; log so far:\n{log}\n{exc}") from None
            seen.append(line)
            if text in line:
                return

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def test_example_service_opts_in_and_can_be_armed_while_serving(runtime_dir: Path) -> None:
    service = PaymentsService(dict(os.environ))
    try:
        socket_path = runtime_dir / "procs" / f"{service.proc.pid}.sock"
        with Client(f"ipc://{socket_path}", timeout=10) as c:
            assert call(c, "Ping", pb.PingRequest()).pid == service.proc.pid
            assert list(call(c, "ListFunctions", pb.ListFunctionsRequest(pattern="validate_*")).functions) == [
                "payments.validate_card"
            ]
            meta = call(c, "ArmFunction", pb.ArmFunctionRequest(function="payments.validate_card", fn_id=1)).metadata
            assert [a.name for a in meta.arguments] == ["card", "amount"] and meta.source_file.endswith("payments.py")
            status, body = service.charge("4111111111111111", 1250)
            assert (status, body["approved"], body["card"], body["amount"]) == (200, True, "****1111", 1250)
            assert service.charge("4111111111111117", 1250) == (402, {"error": "card declined"})
            assert call(c, "DisarmFunction", pb.DisarmFunctionRequest(fn_id=1)).was_armed
        assert service.stop() == 0
        assert not socket_path.exists()
    finally:
        service.stop()


def test_example_service_registers_with_a_real_agent_and_answers_through_it(coral_env: CoralEnv, agent: Process) -> None:
    service = PaymentsService(coral_env.env)
    try:
        service.wait_for_log("registered service 'payments-api'")
        with Client(coral_env.endpoint("agent.sock"), timeout=10) as c:
            (instance,) = [s for s in call(c, "ListServices", pb.ListServicesRequest()).services if s.service == "payments-api"]
            assert (instance.pid, instance.kind, instance.sdk_version) == (service.proc.pid, "python", coral.__version__)
            assert instance.runtime.startswith("CPython 3.")
            listed = call(c, "ListFunctions", pb.ListFunctionsRequest(service="payments-api", pattern="validate_*"))
            assert list(listed.functions) == ["payments.validate_card"]
            assert service.stop() == 0
            assert [s for s in call(c, "ListServices", pb.ListServicesRequest()).services if s.service == "payments-api"] == []
    finally:
        service.stop()


def test_functions_armed_for_an_agent_that_restarted_are_disarmed(coral_env: CoralEnv, agent: Process) -> None:
    service = PaymentsService(coral_env.env)
    try:
        service.wait_for_log("registered service 'payments-api'")
        socket = f"ipc://{coral_env.runtime_dir / 'procs' / f'{service.proc.pid}.sock'}"
        with Client(socket, timeout=10) as c:
            call(c, "ArmFunction", pb.ArmFunctionRequest(function="payments.validate_card", fn_id=1))
            assert call(c, "Ping", pb.PingRequest()).counters["armed"] == 1
            agent.stop()
            restarted = start_agent(coral_env)
            try:
                service.wait_for_log("disarmed 1 functions armed before")
                assert call(c, "Ping", pb.PingRequest()).counters["armed"] == 0
                assert service.charge("4111111111111111", 100)[0] == 200
            finally:
                restarted.stop()
        assert service.stop() == 0
    finally:
        service.stop()
