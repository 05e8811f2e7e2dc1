"""The Python SDK end to end: a real HTTP service that called
coral.sdk.init(), debugged through colony and agent with real BPF on the
SDK's probe site. Every call seen with its arguments, return value or
exception, and duration; the service's answers unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.harness import REPO, CoralEnv, Process, kernel_probes, start_agent, start_colony, tool
from tests.test_native_e2e import records, wait_for_service

N = 20


class PythonService:
    def __init__(self, env: CoralEnv) -> None:
        self.proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "python" / "payments_service.py"),
                                      "--port", "0"], env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once the server accepts connections
        assert line.startswith("listening on "), line
        self.port = int(line.split()[2])

    def charge(self, card: str, amount: int) -> tuple[int, dict[str, object]]:
        url = f"http://127.0.0.1:{self.port}/charge?card={card}&amount={amount}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def service(coral_env: CoralEnv, colony: Process, agent: Process) -> Iterator[PythonService]:
    svc = PythonService(coral_env)
    yield svc
    svc.stop()


def attach(env: CoralEnv, function: str, duration: str = "3s") -> subprocess.Popen[str]:
    p = subprocess.Popen([tool("coralctl"), "--output", "json", "debug", "attach", "payments-api", "--function", function,
                          "--duration", duration, "--capture-args", "--capture-return"],
                         env=env.env, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    first = json.loads(p.stdout.readline())
    assert first["kind"] == "session" and first["probes"] == 1 and first["return_probe"] == "python", first
    return p


def test_debug_validate_card_in_a_running_python_service(coral_env: CoralEnv, service: PythonService) -> None:
    wait_for_service(coral_env, "payments-api")
    unarmed = [service.charge("4111111111111111", 500 + i) for i in range(3)]
    session = attach(coral_env, "payments.validate_card")
    answers = [service.charge("4111111111111111" if i % 4 else "4111111111111117", 500 + i) for i in range(N)]
    out, _ = session.communicate(timeout=60)
    lines = records(out)
    calls = [e for e in lines if e["kind"] == "call"]
    assert len(calls) == N and lines[-1]["calls"] == N and lines[-1]["lost"] == {}

    declined = [i for i in range(N) if i % 4 == 0]
    for i, (call, (status, body)) in enumerate(zip(calls, answers, strict=True)):
        entry = ret = call  # its arguments and its result, in one line
        # The card number is redacted by name (and by its look); the amount is shown.
        assert entry["args"] == [{"name": "card", "type": "", "value": "<redacted>"},
                                 {"name": "amount", "type": "", "value": str(500 + i)}]
        assert ret["duration_ns"] >= 2_000_000  # validate_card waits 2 ms for "the card network"
        if i in declined:
            assert status == 402 and body == {"error": "card declined"}
            assert ret["return_value"]["is_error"] and ret["return_value"]["error_message"] == "ValueError: card declined"
        else:
            assert status == 200 and body["approved"] is True and body["amount"] == 500 + i
            assert not ret["return_value"]["is_error"] and f"'amount': {500 + i}" in ret["return_value"]["value"]
    # Behaviour unchanged while armed, and after.
    assert unarmed[0] == service.charge("4111111111111111", 500)
    assert all(f"/proc/{service.proc.pid}/" not in line for line in kernel_probes().splitlines())


def test_a_stdlib_function_in_the_same_service(coral_env: CoralEnv, service: PythonService) -> None:
    wait_for_service(coral_env, "payments-api")
    session = attach(coral_env, "json.dumps")
    for i in range(5):
        assert service.charge("4111111111111111", 700 + i)[0] == 200
    out, _ = session.communicate(timeout=60)
    lines = records(out)
    returns = [e for e in lines if e.get("kind") == "call"]
    assert lines[-1]["calls"] >= 5  # the handler serialises each answer with json.dumps
    assert any('"amount": 704' in r["return_value"]["value"] for r in returns)


def test_unknown_python_function_names_the_closest(coral_env: CoralEnv, service: PythonService) -> None:
    wait_for_service(coral_env, "payments-api")
    out = subprocess.run([tool("coralctl"), "debug", "attach", "payments-api", "--function", "payments.validate_crd"],
                         env=coral_env.env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "payments.validate_card" in out.stderr, out.stderr


def test_two_sessions_on_one_python_function_both_see_every_call(coral_env: CoralEnv, service: PythonService) -> None:
    wait_for_service(coral_env, "payments-api")
    long = attach(coral_env, "payments.validate_card", duration="4s")
    short = attach(coral_env, "payments.validate_card", duration="1s")
    for i in range(5):
        assert service.charge("4111111111111111", 800 + i)[0] == 200
    out, _ = short.communicate(timeout=30)
    assert records(out)[-1]["calls"] == 5
    # The short session has ended; the function stays armed for the long one.
    for i in range(5):
        assert service.charge("4111111111111111", 900 + i)[0] == 200
    out, _ = long.communicate(timeout=30)
    summary = records(out)[-1]
    assert summary["calls"] == 10 and summary["lost"] == {}


def test_one_session_sees_every_python_process_of_the_service(coral_env: CoralEnv, service: PythonService) -> None:
    second = PythonService(coral_env)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # both instances registered
            listed = records(subprocess.run([tool("coralctl"), "--output", "json", "services"], env=coral_env.env,
                                            capture_output=True, text=True, timeout=30).stdout)
            if sum(s["service"] == "payments-api" for s in listed) == 2:
                break
        session = subprocess.Popen([tool("coralctl"), "--output", "json", "debug", "attach", "payments-api",
                                    "--function", "payments.validate_card", "--duration", "3s"],
                                   env=coral_env.env, stdout=subprocess.PIPE, text=True)
        assert session.stdout is not None
        first = json.loads(session.stdout.readline())
        assert first["probes"] == 2 and sorted(first["pids"]) == sorted([service.proc.pid, second.proc.pid])
        for i in range(3):
            assert service.charge("4111111111111111", 100 + i)[0] == 200
            assert second.charge("4111111111111111", 200 + i)[0] == 200
        out, _ = session.communicate(timeout=60)
    finally:
        second.stop()
    calls = [r for r in records(out) if r["kind"] == "call"]
    assert sorted(c["pid"] for c in calls) == sorted([service.proc.pid] * 3 + [second.proc.pid] * 3)
    assert records(out)[-1]["calls"] == 6


ZLIB_SERVICE = """
import sys, zlib
import coral.sdk
coral.sdk.init(service="zsvc")
coral.sdk.current().wait_bound()
print("ready", flush=True)
for line in sys.stdin:
    for i in range(int(line)):
        zlib.crc32(b"coral %d" % i)
    print("done", flush=True)
"""


def test_a_native_function_of_a_shared_object_in_a_python_service(coral_env: CoralEnv, colony: Process,
                                                                   agent: Process) -> None:
    svc = subprocess.Popen([sys.executable, "-c", ZLIB_SERVICE], env=coral_env.env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    assert svc.stdin is not None and svc.stdout is not None
    try:
        assert svc.stdout.readline().strip() == "ready"
        wait_for_service(coral_env, "zsvc")
        listed = subprocess.run([tool("coralctl"), "functions", "zsvc", "--pattern", "libz.so*:crc32"], env=coral_env.env,
                                capture_output=True, text=True, timeout=30)
        assert listed.stdout.split() == ["libz.so.1.2.13:crc32"] or "crc32" in listed.stdout, listed
        p = subprocess.Popen([tool("coralctl"), "--output", "json", "debug", "attach", "zsvc", "--function",
                              "libz.so.1:crc32", "--duration", "2s"], env=coral_env.env, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        first = json.loads(p.stdout.readline())
        assert first["kind"] == "session" and first["probes"] == 2  # entry + uretprobe, in the mapped libz
        svc.stdin.write("7\n")
        svc.stdin.flush()
        assert svc.stdout.readline().strip() == "done"
        out, _ = p.communicate(timeout=30)
        assert records(out)[-1]["calls"] == 7
    finally:
        svc.stdin.close()
        svc.wait(10)


RULES_IN_THE_PROCESS = """
import coral.sdk
from coral.sdk.arming import ARMS
sdk = coral.sdk.init(service="rules-check")
sdk.wait_registered(10)  # the SDK's thread registers in the background
print(" ".join(ARMS.settings.redact_patterns))
"""


def test_the_sdk_redacts_the_names_the_agent_is_configured_with(coral_env: CoralEnv) -> None:
    """The agent's [sdk] redact_patterns list `amount`; the service's
    environment names another coral.toml, which does not (and which the SDK
    does not read). The names come with the registration's reply, so the
    value never leaves the process."""
    from coral.redact import DEFAULT_NAMES

    names = ", ".join(f'"{n}"' for n in (*DEFAULT_NAMES, "amount"))
    operator = coral_env.with_config(f"[sdk]\nredact_patterns = [{names}]\n")
    colony = start_colony(operator)
    agent = start_agent(operator)
    svc = PythonService(coral_env)  # the shipped etc/coral.toml: amount is not secret there
    try:
        wait_for_service(operator, "payments-api")
        session = attach(operator, "payments.validate_card")
        for i in range(3):
            assert svc.charge("4111111111111111", 500 + i)[0] == 200
        out, _ = session.communicate(timeout=60)
        entries = [e for e in records(out) if e["kind"] == "call"]
        assert [e["args"] for e in entries] == [[{"name": "card", "type": "", "value": "<redacted>"},
                                                 {"name": "amount", "type": "", "value": "<redacted>"}]] * 3
        # And in the process itself, before anything leaves it:
        check = subprocess.run([sys.executable, "-c", RULES_IN_THE_PROCESS], env=coral_env.env, capture_output=True,
                               text=True, timeout=30)
        assert check.stdout.split() == [*DEFAULT_NAMES, "amount"], check.stderr
    finally:
        svc.stop()
        agent.stop()
        colony.stop()
