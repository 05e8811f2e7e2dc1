"""--errors-only on C++ and Rust: the calls that leave by an exception or a
panic (the kernel keeps their frames as it finds them dead), and in Rust the
calls that return Err (the kernel tests the Result's discriminant at the
return). Every other call is counted and filtered; the program runs on,
printing what it prints unprobed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from coral.agentd.sessions import UNWOUND_ERROR
from tests.harness import CoralEnv, NativeService, Process, coralctl, start_attach

CPP = r"""
// Each input line N: N calls of charge(); call i throws when i % 3 == 0 (the
// last call, i = N - 1, must not, so that every dead frame is found).
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

__attribute__((noinline)) long charge(long cents)
{
    if (cents < 0)
        throw std::invalid_argument("negative amount");
    return cents * 2;
}

int main()
{
    char line[64];
    setvbuf(stdout, nullptr, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        int n = atoi(line), caught = 0;
        long sum = 0;
        for (int i = 0; i < n; i++) {
            try {
                sum += charge(i % 3 == 0 ? -(i + 1) : i);
            } catch (const std::invalid_argument &) {
                caught++;
            }
        }
        printf("done %d caught %d sum %ld\n", n, caught, sum);
    }
    return 0;
}
"""
RUST = r"""
// Each input line N: N calls of charge(); call i panics (caught by
// catch_unwind) when i % 4 == 2, returns Err when i % 4 == 1.
use std::io::BufRead;
use std::panic;

#[no_mangle]
#[inline(never)]
pub fn charge(cents: i64) -> Result<i64, i64> {
    if cents < 0 {
        panic!("negative amount");
    }
    if cents % 4 == 1 {
        return Err(-cents);
    }
    Ok(cents * 2)
}

fn main() {
    panic::set_hook(Box::new(|_| {})); // the caught panics print nothing
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let n: i64 = line.unwrap().trim().parse().unwrap_or(0);
        let (mut caught, mut errs, mut sum) = (0, 0, 0i64);
        for i in 0..n {
            let v = if i % 4 == 2 { -(i + 1) } else { i };
            match panic::catch_unwind(|| charge(v)) {
                Ok(Ok(r)) => sum += r,
                Ok(Err(_)) => errs += 1,
                Err(_) => caught += 1,
            }
        }
        println!("done {} caught {} errs {} sum {}", n, caught, errs, sum);
    }
}
"""
CALLS = 20


def _attach_and_call(coral_env: CoralEnv, binary: Path, *flags: str) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                                              str, str]:
    expected = subprocess.run([str(binary)], input=f"{CALLS}\n", capture_output=True, text=True, check=True).stdout
    svc = NativeService(coral_env, binary, service="charges")
    try:
        attach, first = start_attach(coral_env, "charges", "charge", "--local", "--duration", "3s", "--no-save",
                                     "--errors-only", *flags)
        assert first["return_probe"] == "ret"
        got = svc.call(CALLS)
        out, _ = attach.communicate(timeout=60)
        assert svc.run.proc.poll() is None, "the program did not survive"
        calls = [json.loads(line) for line in out.splitlines() if '"kind":"call"' in line]
        return calls, json.loads(out.splitlines()[-1]), got, expected.strip()
    finally:
        svc.stop()


def _unwound(call: dict[str, Any]) -> bool:
    return str(call.get("return_value", {}).get("error_message", "")).startswith(UNWOUND_ERROR)


def test_cpp_errors_only_reports_exactly_the_calls_that_threw(coral_env: CoralEnv, agent: Process,
                                                              tmp_path: Path) -> None:
    """charge() at -O2 is called 20 times and throws 7 times: the session
    shows those 7 calls, each with its argument and ended by unwinding, and
    counts the 13 returns as filtered; nothing is lost as unwound."""
    (tmp_path / "charge.cpp").write_text(CPP)
    binary = tmp_path / "charge"
    subprocess.run(["g++", "-g", "-O2", "-Wall", "-o", str(binary), str(tmp_path / "charge.cpp")], check=True)
    calls, summary, got, expected = _attach_and_call(coral_env, binary, "--capture-args")
    assert got == expected and expected.startswith(f"done {CALLS} caught 7 "), (got, expected)
    assert len(calls) == 7 and all(_unwound(c) for c in calls), calls
    assert all(c["return_value"]["is_error"] for c in calls)
    thrown = sorted(int(c["args"][0]["value"]) for c in calls)
    assert thrown == sorted(-(i + 1) for i in range(CALLS) if i % 3 == 0), thrown
    assert (summary["status"], summary["calls"], summary["lost"]) == ("expired", CALLS - 7, {"filtered": CALLS - 7}), \
        summary


def test_rust_errors_only_reports_the_panics_and_the_err_returns(coral_env: CoralEnv, agent: Process,
                                                                 tmp_path: Path) -> None:
    """charge() returns Result<i64, i64>: of 20 calls, 5 panic (under
    catch_unwind) and 5 return Err; the session shows those 10, the panics
    ended by unwinding and the Errs with their value, and filters the 10 Oks."""
    (tmp_path / "charge.rs").write_text(RUST)
    binary = tmp_path / "charge"
    subprocess.run(["rustc", "-g", "-C", "opt-level=2", "-o", str(binary), str(tmp_path / "charge.rs")], check=True)
    calls, summary, got, expected = _attach_and_call(coral_env, binary, "--capture-args", "--capture-return")
    assert got == expected and expected.startswith(f"done {CALLS} caught 5 errs 5 "), (got, expected)
    panicked = sorted(int(c["args"][0]["value"]) for c in calls if _unwound(c))
    erred = sorted(c["return_value"]["value"] for c in calls if not _unwound(c))
    assert panicked == sorted(-(i + 1) for i in range(CALLS) if i % 4 == 2), calls
    assert erred == sorted(f"Err({-i})" for i in range(CALLS) if i % 4 == 1), calls
    assert all(c["return_value"]["is_error"] for c in calls)
    assert (summary["status"], summary["calls"], summary["lost"]) == ("expired", CALLS - 5, {"filtered": CALLS - 10}), \
        summary


@pytest.mark.parametrize("flags", [("--where", "cents > 0")])
def test_cpp_errors_only_with_where_is_refused_in_one_line(coral_env: CoralEnv, agent: Process, tmp_path: Path,
                                                           flags: tuple[str, ...]) -> None:
    (tmp_path / "charge.cpp").write_text(CPP)
    binary = tmp_path / "charge"
    subprocess.run(["g++", "-g", "-O2", "-o", str(binary), str(tmp_path / "charge.cpp")], check=True)
    svc = NativeService(coral_env, binary, service="charges")
    try:
        done = coralctl(coral_env, "debug", "attach", "charges", "--function", "charge", "--local", "--errors-only",
                        *flags)
        assert done.returncode == 1, done
        assert "--errors-only with --where is not supported for C++" in done.stderr, done.stderr
    finally:
        svc.stop()
