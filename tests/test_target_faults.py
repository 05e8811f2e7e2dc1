"""The probed process crashes, execs another program, or is restarted under
the same service, mid-session. Real processes, real BPF: the session ends
with the reason, its events are kept, nothing of it stays in the kernel, and
the agent serves on."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import CoralEnv, NativeService, Process, build_c, coralctl, kernel_probes, start_attach

SOURCE = r"""
/* Each input line: a number N makes N calls of validate_card and prints
 * "done N declined D"; "crash" dereferences NULL; "exec" becomes /bin/cat. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) int validate_card(long card, int amount)
{
    return card % 10 == 7 || amount > 100000 ? -1 : 0;
}

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "crash", 5) == 0)
            *(volatile int *)0 = 1;
        if (strncmp(line, "exec", 4) == 0) {
            execl("/bin/cat", "cat", (char *)NULL);
            return 127;
        }
        int n = atoi(line), declined = 0;
        for (int i = 0; i < n; i++)
            declined += validate_card(4000123412341000L + i, 500 + i) != 0;
        printf("done %d declined %d\n", n, declined);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def shifty_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("shifty") / "shifty.c"
    src.write_text(SOURCE)
    return build_c(src, src.with_suffix(""))


@pytest.fixture
def shifty(coral_env: CoralEnv, agent: Process, shifty_binary: Path) -> Iterator[NativeService]:
    svc = NativeService(coral_env, shifty_binary, service="shifty")
    yield svc
    svc.stop()


def send(svc: NativeService, line: str) -> None:
    stdin = svc.run.proc.stdin
    assert stdin is not None
    stdin.write(f"{line}\n".encode())
    stdin.flush()


def returns_stored(env: CoralEnv, session_id: str) -> int:
    events = coralctl(env, "--local", "--output", "json", "debug", "events", session_id)
    return sum(1 for line in events.stdout.splitlines() if '"kind":"call"' in line)


def test_target_crashes_mid_session(coral_env: CoralEnv, shifty: NativeService) -> None:
    attach, first = start_attach(coral_env, "shifty", "validate_card", "--local", "--duration", "5m", "--no-save")
    assert shifty.call(3) == "done 3 declined 0"
    child = shifty.child_pid
    send(shifty, "crash")
    assert shifty.run.proc.wait(30) == 128 + signal.SIGSEGV  # coral-run exits with the child's status
    out, _ = attach.communicate(timeout=30)
    summary = json.loads(out.splitlines()[-1])
    assert (summary["status"], summary["status_reason"], summary["calls"]) == ("failed", "target exited", 3)
    assert f"/proc/{child}/exe" not in kernel_probes()
    assert returns_stored(coral_env, first["session_id"]) == 3
    assert coralctl(coral_env, "--local", "ping").returncode == 0


def test_target_execs_another_program_mid_session(coral_env: CoralEnv, shifty: NativeService) -> None:
    attach, first = start_attach(coral_env, "shifty", "validate_card", "--local", "--duration", "5m", "--no-save")
    assert shifty.call(2) == "done 2 declined 0"
    child = shifty.child_pid
    send(shifty, "exec")
    # The same pid now runs /bin/cat: the function the session watched is gone from it.
    out, _ = attach.communicate(timeout=30)
    summary = json.loads(out.splitlines()[-1])
    assert (summary["status"], summary["status_reason"], summary["calls"]) == ("failed", "target ran exec", 2)
    assert f"/proc/{child}/exe" not in kernel_probes()
    assert shifty.call(1) == "1"  # cat echoes: the process itself is untouched
    assert returns_stored(coral_env, first["session_id"]) == 2
    services = coralctl(coral_env, "--local", "--output", "json", "services")
    assert "shifty" not in services.stdout  # it no longer runs what was registered


def test_service_restarted_a_new_session_finds_the_new_pid(
    coral_env: CoralEnv, agent: Process, shifty_binary: Path
) -> None:
    old = NativeService(coral_env, shifty_binary, service="shifty")
    attach, _ = start_attach(coral_env, "shifty", "validate_card", "--local", "--duration", "5m", "--no-save")
    assert old.call(2) == "done 2 declined 0"
    old_pid = old.child_pid
    assert old.stop() == 0
    attach.communicate(timeout=30)
    new = NativeService(coral_env, shifty_binary, service="shifty")
    try:
        attach, first = start_attach(coral_env, "shifty", "validate_card", "--local", "--duration", "5m", "--no-save")
        assert first["pids"] == [new.child_pid]
        assert f"/proc/{old_pid}/exe" not in kernel_probes()
        assert f"/proc/{new.child_pid}/exe" in kernel_probes()
        assert new.call(4) == "done 4 declined 0"
        coralctl(coral_env, "--local", "debug", "detach", first["session_id"])
        out, _ = attach.communicate(timeout=30)
        assert json.loads(out.splitlines()[-1])["calls"] == 4
    finally:
        new.stop()


def test_a_hung_instance_is_left_out_and_named_while_the_others_are_probed(
    coral_env: CoralEnv, bpf: None, payments_binary: Path
) -> None:
    """Two instances of one service; the second's coral-run is stopped
    (SIGSTOP), so it answers nothing. The session runs on the first, with
    every one of its calls, and says which instance it left out."""
    import os

    from tests.harness import running

    with running(coral_env, payments_binary) as first:
        second = NativeService(coral_env, payments_binary, name="run-payments-2")
        try:
            for _ in range(200):  # each ask is a round trip; the agent announces within 0.1 s
                out = coralctl(coral_env, "--output", "json", "services").stdout.splitlines()
                if len(out) == 2:
                    break
            assert len(out) == 2, out
            os.kill(second.run.pid, signal.SIGSTOP)
            try:
                attach, session = start_attach(coral_env, "payments", "validate_card", "--duration", "3s", "--no-save")
                assert session["pids"] == [first.child_pid], session
                assert session["unanswered"] == [
                    f"process {second.child_pid} of service 'payments' did not answer at "
                    f"ipc://{coral_env.runtime_dir}/procs/{second.child_pid}.sock"], session
                assert first.call(10).startswith("done 10 ")
                out_text, _ = attach.communicate(timeout=60)
            finally:
                os.kill(second.run.pid, signal.SIGCONT)
            summary = json.loads(out_text.splitlines()[-1])
            assert (summary["status"], summary["calls"], summary["lost"]) == ("expired", 10, {}), summary
            assert summary["unanswered"] == session["unanswered"]
            text = coralctl(coral_env, "debug", "events", session["session_id"]).stdout
            assert f"Not probed:   process {second.child_pid} of service 'payments' did not answer" in text, text
        finally:
            second.stop()


def test_a_stream_of_questions_about_a_hung_process_costs_the_agent_one_timeout(
    coral_env: CoralEnv, bpf: None, payments_binary: Path
) -> None:
    """A second service's coral-run is stopped (SIGSTOP); 10 questions
    about it in a row. The agent waits for it once, then answers at once
    until the cooldown has passed, while a session on the other service
    runs to its expiry with every call."""
    import os

    from coral.daemon.client import Client
    from coral.daemon.errors import Unavailable
    from coral.proto import coral_pb2 as pb
    from tests.harness import running

    with running(coral_env, payments_binary) as payments:
        stuck = NativeService(coral_env, payments_binary, service="stuck", name="run-stuck")
        try:
            os.kill(stuck.run.pid, signal.SIGSTOP)
            attach, _ = start_attach(coral_env, "payments", "validate_card", "--local", "--duration", "3s",
                                     "--no-save")
            answers = []
            with Client(coral_env.endpoint("agent.sock"), 10) as agent:  # one after another, as fast as it answers
                for _ in range(10):
                    with pytest.raises(Unavailable) as refused:
                        agent.call("ListFunctions", pb.ListFunctionsRequest(service="stuck"))
                    answers.append(refused.value.message)
            assert payments.call(10).startswith("done 10 ")
            out, _ = attach.communicate(timeout=60)
            os.kill(stuck.run.pid, signal.SIGCONT)
            assert all("did not answer at" in a for a in answers), answers
            assert sum("not asked again for" in a for a in answers) == 9, answers
            counters = json.loads(coralctl(coral_env, "--local", "--output", "json", "ping").stdout)["counters"]
            assert (counters["process_asks.timed_out"], counters["process_asks.refused"]) == (1, 9), counters
            summary = json.loads(out.splitlines()[-1])
            assert (summary["status"], summary["calls"], summary["lost"]) == ("expired", 10, {}), summary
            assert f"/proc/{payments.child_pid}/exe" not in kernel_probes()
        finally:
            os.kill(stuck.run.pid, signal.SIGCONT)
            stuck.stop()


def test_hung_processes_delay_no_other_request_and_no_expiry(
    coral_env: CoralEnv, bpf: None, payments_binary: Path
) -> None:
    """Three services whose coral-run is stopped (SIGSTOP), and questions
    about them all along, through the colony and on the agent's own socket.
    While the first questions wait on their deadline the agent answers a
    Ping, a registration and its heartbeat; a 5 s session on another service
    ends within 1 s of its expiry with every call, and no probe of it is left."""
    import os
    import sys
    import threading

    import zmq

    from coral.daemon import wire
    from coral.daemon.client import Client
    from coral.proto import coral_pb2 as pb
    from tests.harness import running

    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with running(coral_env, payments_binary) as payments, contextlib.ExitStack() as stack:
        for i in range(3):
            svc = NativeService(coral_env, payments_binary, service=f"stuck-{i}", name=f"run-stuck-{i}")
            stack.callback(svc.stop)
            stack.callback(os.kill, svc.run.pid, signal.SIGCONT)
            os.kill(svc.run.pid, signal.SIGSTOP)
        waiting: zmq.Socket[bytes] = context.socket(zmq.DEALER)  # three questions, not read until the end
        stack.callback(waiting.close, 0)
        waiting.connect(coral_env.endpoint("agent.sock"))
        for i in range(3):
            waiting.send_multipart(wire.encode_request(f"q{i}".encode(), "ListFunctions",
                                                       pb.ListFunctionsRequest(service=f"stuck-{i}")))
        own: zmq.Socket[bytes] = context.socket(zmq.REP)  # this test registers itself as a process
        stack.callback(own.close, 0)
        address = f"ipc://{coral_env.runtime_dir}/procs/{os.getpid()}.sock"
        own.bind(address)
        with Client(coral_env.endpoint("agent.sock"), 10) as agent:
            assert agent.call("Ping", pb.PingRequest()).daemon == "coral-agentd"  # type: ignore[attr-defined]
            reg = agent.call("RegisterProcess", pb.RegisterProcessRequest(
                service="late", pid=os.getpid(), executable=sys.executable, address=address, kind="native"))
            registration_id = reg.registration_id  # type: ignore[attr-defined]
            beat = agent.call("ProcessHeartbeat", pb.ProcessHeartbeatRequest(registration_id=registration_id))
            assert beat.known  # type: ignore[attr-defined]
            assert not waiting.poll(0), "the questions about hung processes were answered before these"
            agent.call("UnregisterProcess", pb.UnregisterProcessRequest(registration_id=registration_id))

        done = threading.Event()

        def ask_about_the_hung_ones() -> None:
            while not done.is_set():
                for i in range(3):
                    coralctl(coral_env, "functions", f"stuck-{i}", timeout=30)

        asker = threading.Thread(target=ask_about_the_hung_ones)
        asker.start()
        try:
            attach, _ = start_attach(coral_env, "payments", "validate_card", "--duration", "5s", "--no-save")
            assert payments.call(10).startswith("done 10 ")
            out, _ = attach.communicate(timeout=60)
        finally:
            done.set()
            asker.join(timeout=60)
        summary = json.loads(out.splitlines()[-1])
        assert (summary["status"], summary["calls"], summary["lost"]) == ("expired", 10, {}), summary
        sessions = coralctl(coral_env, "--local", "--output", "json", "debug", "sessions").stdout.splitlines()
        ended = next(s for s in map(json.loads, sessions) if s["session_id"] == summary["session_id"])
        assert 0 <= ended["ended_unix_ns"] - ended["expires_unix_ns"] <= 1_000_000_000, ended
        assert f"/proc/{payments.child_pid}/" not in kernel_probes()
        answers = [wire.decode(waiting.recv_multipart()) for _ in range(3) if waiting.poll(5000)]
        assert sorted(a.name for a in answers) == ["UNAVAILABLE"] * 3, answers
