"""Go done right: no uretprobes (they crash Go when goroutine stacks move);
a probe on every RET, calls paired by goroutine. Thousands of goroutines
whose stacks grow while the probe is attached: nothing crashes, every call
is counted, durations are sane, arguments come from Go's register ABI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.harness import REPO, CoralEnv, Process, build_go, coralctl, go_build, kernel_probes, tool

GOROUTINES = 4000
DEPTH = 6  # validate recurses: 7 probed calls per goroutine, 512-byte frames


@pytest.fixture
def go_binary(go: str, tmp_path: Path) -> Path:
    return go_build(go, REPO / "examples" / "go" / "payments.go", tmp_path / "payments", tmp_path)


def test_go_function_under_thousands_of_growing_goroutines(
    coral_env: CoralEnv, full_speed_agent: Process, go_binary: Path
) -> None:
    run = Process("run-go", [tool("coral-run"), "--service", "gopay", "--", str(go_binary), str(DEPTH)], coral_env,
                  stdin=subprocess.PIPE).wait_ready()
    try:
        attach = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "gopay",
                                   "--function", "main.validate", "--duration", "8s", "--capture-args",
                                   "--capture-return"], env=coral_env.env, stdout=subprocess.PIPE, text=True)
        assert attach.stdout is not None and run.proc.stdin is not None and run.proc.stdout is not None
        session = json.loads(attach.stdout.readline())
        assert session["kind"] == "session"
        # Entry plus one probe per RET instruction, and no uretprobe anywhere.
        (child,) = session["pids"]
        ours = [line for line in kernel_probes().splitlines() if f"/proc/{child}/exe" in line]
        assert session["probes"] >= 2 and len(ours) == session["probes"]
        assert not any("uretprobe" in line for line in ours)

        run.proc.stdin.write(f"{GOROUTINES}\n".encode())
        run.proc.stdin.flush()
        assert run.proc.stdout.readline().decode().strip() == f"done {GOROUTINES}"
        out, _ = attach.communicate(timeout=60)
        lines = [json.loads(line) for line in out.splitlines()]
        calls = GOROUTINES * (DEPTH + 1)
        summary = lines[-1]
        assert summary["calls"] == calls, summary
        stored = [e for e in lines if e.get("kind") == "call"]
        assert len(stored) + summary["lost"].get("ringbuf_full", 0) == calls
        assert all(0 < e["duration_ns"] < 5_000_000_000 for e in stored)
        assert {a["name"] for a in stored[0]["args"]} == {"card", "amount", "deep"}
        # Each call has its arguments and its result: the innermost call
        # (deep=0) returns (amount, nil), or (-1, error) above 1000.
        innermost = [c for c in stored if c["args"][2]["value"] == "0"]
        assert innermost
        for ret in innermost:
            amount = int(ret["args"][1]["value"])
            value, err = ret["return_value"]["value"].split(", ")
            assert ret["return_value"]["type"] == "int, error"
            if amount > 1000:
                assert value == "-1" and err != "nil" and ret["return_value"]["is_error"]
            else:
                assert (value, err) == (str(amount), "nil") and not ret["return_value"]["is_error"]
        assert run.proc.poll() is None  # the Go program is alive
        got = coralctl(coral_env, "--local", "ping", "--output", "json")
        counters = json.loads(got.stdout)["counters"]
        assert counters.get("kernel.unpaired_returns", 0) == 0 and counters.get("kernel.stack_full", 0) == 0
    finally:
        if run.proc.stdin:
            run.proc.stdin.close()  # the program exits at end of input, and coral-run with it
        assert run.proc.wait(30) == 0
        run.stop()


VALUES = r"""
// Each input line N: N calls of charge() with a string, a byte slice and a pointer.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

type Card struct {
	Number string
	Cents  int
}

//go:noinline
func charge(name string, data []byte, c *Card, n int) (int, error) {
	return n + len(name) + len(data) + c.Cents, nil
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	card := &Card{"4111", 5}
	for in.Scan() {
		n, _ := strconv.Atoi(strings.TrimSpace(in.Text()))
		sum := 0
		for i := 0; i < n; i++ {
			v, _ := charge("alice", []byte("xy"), card, i)
			sum += v
		}
		fmt.Printf("done %d sum %d\n", n, sum)
	}
}
"""


def test_go_strings_slices_and_pointers_are_shown_by_their_go_types(coral_env: CoralEnv, agent: Process,
                                                                     go: str, tmp_path: Path) -> None:
    """DWARF names a Go string `string` and a slice `[]uint8` (structure
    types), a pointer `*main.Card`: they are placed in Go's registers and
    shown as values, not `(not captured)`."""
    binary = build_go(go, VALUES, tmp_path, "values")
    run = Process("run-values", [tool("coral-run"), "--service", "govalues", "--", str(binary)], coral_env,
                  stdin=subprocess.PIPE).wait_ready()
    try:
        attach = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "govalues",
                                   "--function", "main.charge", "--duration", "2s", "--capture-args",
                                   "--capture-return"], env=coral_env.env, stdout=subprocess.PIPE, text=True)
        assert attach.stdout is not None and run.proc.stdin is not None and run.proc.stdout is not None
        assert json.loads(attach.stdout.readline())["kind"] == "session"
        run.proc.stdin.write(b"3\n")
        run.proc.stdin.flush()
        assert run.proc.stdout.readline().decode().strip() == "done 3 sum 39"
        out, _ = attach.communicate(timeout=30)
        calls = [json.loads(line) for line in out.splitlines() if '"kind":"call"' in line]
        assert len(calls) == 3
        args = {a["name"]: (a["type"], a["value"]) for a in calls[2]["args"]}
        assert args["name"] == ("string", "'alice'")
        assert args["data"] == ("[]uint8", "[]uint8 len=2 cap=2 b'xy'")
        assert args["c"][0] == "*main.Card" and args["c"][1].startswith("0x")
        assert args["n"] == ("int", "(not captured)")  # the seventh register: six are copied (native-targets.md)
        assert calls[2]["return_value"]["value"] == "14, nil"
    finally:
        run.stop()
