"""`--print TEMPLATE`: one line per call, and only the values it names are
kept, by the agent, before anything is stored. Real daemons, real BPF, the
C demo under coral-run and the Python demo service."""

from __future__ import annotations

import re
import subprocess

from tests.harness import CoralEnv, NativeService, Process, coralctl, start_attach, tool
from tests.test_native_e2e import records, wait_for_service
from tests.test_python_e2e import PythonService

N = 12


def test_one_line_per_native_call_and_nothing_else_kept(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    wait_for_service(coral_env, "payments")
    attach = subprocess.Popen(
        [tool("coralctl"), "debug", "attach", "payments", "--function", "validate_card", "--duration", "3s",
         "--no-save", "--print", "charged {amount_cents} -> {ret} in {duration}"],
        env=coral_env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert attach.stdout is not None
    started = attach.stdout.readline()
    assert started.startswith("Debug session "), started
    assert "capturing amount_cents, ret" in attach.stdout.readline()
    assert payments.call(N) == f"done {N} declined 1"
    out, err = attach.communicate(timeout=60)
    assert attach.returncode == 0, err
    printed = [line for line in out.splitlines() if line.startswith("charged ")]
    assert len(printed) == N, out
    assert all(re.fullmatch(r"charged \d+ -> (0|-1) in \d+(\.\d+)?ms", line) for line in printed), printed
    assert [line.split()[3] for line in printed].count("-1") == 1  # the card ending in 7
    session_id = started.split()[2]

    # Stored as it was kept: the amount and the result; the card number was never kept, not even redacted.
    stored = [r for r in records(coralctl(coral_env, "--output", "json", "debug", "events", session_id).stdout)
              if r["kind"] == "call"]
    assert len(stored) == N
    assert all([a["name"] for a in c["args"]] == ["amount_cents"] for c in stored)
    assert all(c["return_value"]["value"] in ("0", "-1") for c in stored)


def test_json_calls_carry_the_printed_line(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    wait_for_service(coral_env, "payments")
    proc, first = start_attach(coral_env, "payments", "validate_card", "--duration", "2s", "--print", "{duration}")
    assert first["config"]["capture_only"] == [] and not first["config"]["capture_args"]
    assert payments.call(3) == "done 3 declined 0"
    out, _ = proc.communicate(timeout=60)
    calls = [r for r in records(out) if r["kind"] == "call"]
    assert len(calls) == 3 and all(re.fullmatch(r"\d+(\.\d+)?ms", c["line"]) for c in calls)
    assert all("args" not in c or c["args"] == [] for c in calls)


def test_a_template_that_names_a_secret_or_nothing_real_is_refused(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    wait_for_service(coral_env, "payments")
    secret = coralctl(coral_env, "debug", "attach", "payments", "--function", "validate_card", "--print",
                      "{card_number}")
    assert secret.returncode == 1
    assert "--print names 'card_number', which is redacted: its value is never shown" in secret.stderr
    unknown = coralctl(coral_env, "debug", "attach", "payments", "--function", "validate_card", "--print", "{amount}")
    assert unknown.returncode == 1
    assert "--print names 'amount'; the function's arguments are: card_number, amount_cents" in unknown.stderr
    both = coralctl(coral_env, "debug", "attach", "payments", "--function", "validate_card", "--print", "{ret}",
                    "--capture-args")
    assert both.returncode == 2 and "leave out --capture-args and --capture-return" in both.stderr
    field = coralctl(coral_env, "debug", "attach", "payments", "--function", "validate_card", "--print",
                     "x {order->cents}")
    assert field.returncode == 2
    assert "column 4: order->cents: name the argument (order) to print its fields" in field.stderr
    unclosed = coralctl(coral_env, "debug", "attach", "payments", "--function", "validate_card", "--print", "{ret")
    assert unclosed.returncode == 2 and "column 1: '{' is never closed" in unclosed.stderr


def test_a_python_function_printed_with_its_errors(coral_env: CoralEnv, colony: Process, agent: Process) -> None:
    service = PythonService(coral_env)
    try:
        wait_for_service(coral_env, "payments-api")
        proc = subprocess.Popen(
            [tool("coralctl"), "debug", "attach", "payments-api", "--function", "payments.validate_card",
             "--duration", "3s", "--no-save", "--print", "amount={amount} err={err}"],
            env=coral_env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("Debug session ")
        for i in range(6):
            service.charge("4111111111111117" if i == 2 else "4111111111111111", 100 + i)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        service.stop()
    printed = [line for line in out.splitlines() if line.startswith("amount=")]
    assert printed == [f"amount={100 + i} err=" + ("ValueError: card declined" if i == 2 else "nil") for i in range(6)]
