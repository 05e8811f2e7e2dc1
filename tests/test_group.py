"""Several functions in one attach (`--function` repeated, or a pattern):
a session each, exact per function against the target's own counts, a row
each in the summary, and the nested calls among them as trees per thread.
Real daemons and BPF, a C target under coral-run and a Python one with the
SDK, both built or written here."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coral.ctl import group
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, Process, build_go, coralctl, tool
from tests.test_native_e2e import wait_for_service

CHECKOUT_C = r"""
#include <stdio.h>
#include <stdlib.h>
static volatile long sink;
__attribute__((noinline)) long lookup(long id) { sink += id; return id * 7; }
__attribute__((noinline)) int validate(long id) { return lookup(id) % 5 != 0; }
__attribute__((noinline)) long fee(long cents) { sink += cents; return cents / 100; }
__attribute__((noinline)) long charge(long cents) { return cents + fee(cents) + fee(cents / 2); }
__attribute__((noinline)) long handle(long id) { return validate(id) ? charge(id * 100) : -1; }
int main(void) {
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        long n = atol(line), declined = 0;
        for (long i = 1; i <= n; i++)
            declined += handle(i) < 0;
        printf("done %ld declined %ld\n", n, declined);
        fflush(stdout);
    }
    return 0;
}
"""

CHECKOUT_PY = """
import sys
import coral.sdk

def lookup(i):
    return i * 7

def validate(i):
    return lookup(i) % 5 != 0

def fee(cents):
    return cents // 100

def charge(cents):
    return cents + fee(cents) + fee(cents // 2)

def handle(i):
    return charge(i * 100) if validate(i) else -1

coral.sdk.init(service="checkout-py").wait_bound()
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    declined = sum(handle(i) < 0 for i in range(1, n + 1))
    print(f"done {n} declined {declined}", flush=True)
"""

CHECKOUT_CPP = r"""
#include <cstdio>
#include <cstdlib>
#include <string>
namespace shop {
static volatile long sink;
__attribute__((noinline)) long lookup(long id) { sink += id; return id * 7; }
__attribute__((noinline)) bool validate(long id) { return lookup(id) % 5 != 0; }
__attribute__((noinline)) long fee(long cents) { sink += cents; return cents / 100; }
__attribute__((noinline)) long charge(long cents) { return cents + fee(cents) + fee(cents / 2); }
__attribute__((noinline)) long handle(long id) { return validate(id) ? charge(id * 100) : -1; }
}
int main() {
    char line[64];
    while (std::fgets(line, sizeof line, stdin)) {
        long n = std::atol(line), declined = 0;
        for (long i = 1; i <= n; i++)
            declined += shop::handle(i) < 0;
        std::printf("done %ld declined %ld\n", n, declined);
        std::fflush(stdout);
    }
}
"""

CHECKOUT_GO = r"""
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

var sink int

//go:noinline
func lookup(id int) int { sink += id; return id * 7 }

//go:noinline
func validate(id int) bool { return lookup(id)%5 != 0 }

//go:noinline
func fee(cents int) int { sink += cents; return cents / 100 }

//go:noinline
func charge(cents int) int { return cents + fee(cents) + fee(cents/2) }

//go:noinline
func handle(id int) int {
	if validate(id) {
		return charge(id * 100)
	}
	return -1
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		n, _ := strconv.Atoi(strings.TrimSpace(in.Text()))
		declined := 0
		for i := 1; i <= n; i++ {
			if handle(i) < 0 {
				declined++
			}
		}
		fmt.Printf("done %d declined %d\n", n, declined)
	}
}
"""

FUNCTIONS = ("handle", "validate", "lookup", "charge", "fee")


def attach_many(env: CoralEnv, service: str, functions: list[str], call: Any, n: int, *extra: str) -> list[dict]:
    """`coralctl --output json debug attach` with these --function values,
    the target making n checkouts once every session has started."""
    argv = [tool("coralctl"), "--output", "json", "debug", "attach", service, "--duration", "4s", *extra]
    for f in functions:
        argv += ["--function", f]
    proc = subprocess.Popen(argv, env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    started = [json.loads(proc.stdout.readline()) for _ in range(5)]
    assert [s["kind"] for s in started] == ["session"] * 5, started
    assert call(n) == f"done {n} declined {n // 5}"
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return started + [json.loads(line) for line in out.splitlines()]


def check_exact(records: list[dict], n: int, prefix: str = "", trees: bool = True) -> None:
    """Per function, against the target's own counts: n checkouts, n/5 declined."""
    expected = {"handle": n, "validate": n, "lookup": n, "charge": n - n // 5, "fee": 2 * (n - n // 5)}
    summaries = {r["function"].removeprefix(prefix): r for r in records if r["kind"] == "summary"}
    assert {f: s["calls"] for f, s in summaries.items()} == expected, summaries
    calls = [r for r in records if r["kind"] == "call"]
    assert {f: sum(c["function"].removeprefix(prefix) == f for c in calls) for f in expected} == expected
    assert len({r["session_id"] for r in records if r["kind"] == "session"}) == 5
    if not trees:
        return
    # One tree in every 10 outermost calls (handle's), each with what handle called under it.
    shown = [r for r in records if r["kind"] == "tree"]
    assert len(shown) == n // 10 and all(t["function"].removeprefix(prefix) == "handle" for t in shown), len(shown)
    for t in shown:
        under = [c["function"].removeprefix(prefix) for c in t["calls"]]
        assert under in (["validate"], ["validate", "charge"]), under
        validate = t["calls"][0]
        assert [c["function"].removeprefix(prefix) for c in validate["calls"]] == ["lookup"]
        if len(t["calls"]) == 2:
            assert [c["function"].removeprefix(prefix) for c in t["calls"][1]["calls"]] == ["fee", "fee"]


def native_checkout(env: CoralEnv, binary: Path, service: str) -> tuple[Process, Any]:
    """The target under coral-run, and a function making n checkouts through it."""
    target = Process(f"run-{service}", [tool("coral-run"), "--service", service, "--", str(binary)], env,
                     stdin=subprocess.PIPE).wait_ready()

    def call(n: int) -> str:
        assert target.proc.stdin is not None and target.proc.stdout is not None
        target.proc.stdin.write(f"{n}\n".encode())
        target.proc.stdin.flush()
        return target.proc.stdout.readline().decode().strip()

    return target, call


def test_five_c_functions_exact_per_function_with_their_trees(coral_env: CoralEnv, colony: Process, agent: Process,
                                                             tmp_path: Path) -> None:
    source = tmp_path / "checkout.c"
    source.write_text(CHECKOUT_C)
    binary = tmp_path / "checkout"
    subprocess.run(["gcc", "-g", "-O0", "-o", str(binary), str(source)], check=True)
    target, call = native_checkout(coral_env, binary, "checkout")
    try:
        wait_for_service(coral_env, "checkout")
        records = attach_many(coral_env, "checkout", ["handle", "validate", "lookup", "charge", "fee"], call, 200)
        check_exact(records, 200)

        # The same five by a pattern and a name, in text: a row per function, the slowest trees.
        argv = [tool("coralctl"), "debug", "attach", "checkout", "--duration", "3s",
                "--function", "handle", "--function", "[vlcf][aeho]*"]
        proc = subprocess.Popen(argv, env=coral_env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("Debug sessions started on checkout, one per function")
        ids, listed = zip(*(proc.stdout.readline().split()[:2] for _ in range(5)), strict=True)
        assert listed[0] == "handle" and sorted(listed[1:]) == ["charge", "fee", "lookup", "validate"], listed
        assert proc.stdout.readline().startswith("Duration: 3.00s. Ctrl-C detaches them all.")
        assert call(50) == "done 50 declined 10"
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        table = out[out.index("FUNCTION"):].splitlines()
        rows = {line.split()[0]: line.split()[1] for line in table[1:6]}
        assert rows == {"handle": "50", "validate": "50", "lookup": "50", "charge": "40", "fee": "80"}, out
        assert "Nested calls: 5 of 50 outermost calls sampled" in out
        assert "└─ lookup" in out and "├─ fee" in out
        assert out.splitlines()[0].split()[1] in FUNCTIONS, out  # each call names its function
        # Saved a file per session, each reopened alone.
        assert out.splitlines()[-1].endswith("a file per session (coralctl debug show SESSION)"), out
        shown = coralctl(coral_env, "--output", "json", "debug", "show", ids[0])
        assert [json.loads(line)["calls"] for line in shown.stdout.splitlines() if '"summary"' in line] == [50]

        # Bounds, each one line.
        many = coralctl(coral_env, "debug", "attach", "checkout", *(a for i in range(17) for a in ("--function", f"f{i}")))
        assert many.returncode == 1 and "17 functions asked for; at most 16 in one attach" in many.stderr, many.stderr
        none = coralctl(coral_env, "debug", "attach", "checkout", "--function", "handle", "--function", "zz*")
        assert none.returncode == 1 and "--function 'zz*' matches no function of 'checkout'" in none.stderr
        # A refused start ends the ones already started: nothing is left running.
        bad = coralctl(coral_env, "debug", "attach", "checkout", "--function", "handle", "--function", "nosuch")
        assert bad.returncode == 1 and "function 'nosuch' not found" in bad.stderr
        active = coralctl(coral_env, "--output", "json", "debug", "sessions", "--active")
        assert active.stdout.strip() == "", active.stdout
    finally:
        if target.proc.stdin:
            target.proc.stdin.close()
        target.stop()


def test_five_cpp_functions_exact_per_function_with_their_trees(coral_env: CoralEnv, colony: Process, agent: Process,
                                                               tmp_path: Path) -> None:
    source = tmp_path / "checkout.cpp"
    source.write_text(CHECKOUT_CPP)
    binary = tmp_path / "checkout-cpp"
    subprocess.run(["g++", "-g", "-O0", "-o", str(binary), str(source)], check=True)
    target, call = native_checkout(coral_env, binary, "checkout-cpp")
    try:
        wait_for_service(coral_env, "checkout-cpp")
        records = attach_many(coral_env, "checkout-cpp", [f"shop::{f}" for f in FUNCTIONS], call, 100)
        check_exact(records, 100, prefix="shop::")
    finally:
        if target.proc.stdin:
            target.proc.stdin.close()
        target.stop()


def test_five_go_functions_exact_per_function(coral_env: CoralEnv, colony: Process, agent: Process, go: str,
                                              tmp_path: Path) -> None:
    """Exact per function. Nested calls are found by thread, and a goroutine
    may move to another thread between two calls: its trees are not checked."""
    binary = build_go(go, CHECKOUT_GO, tmp_path, "checkout-go")
    target, call = native_checkout(coral_env, binary, "checkout-go")
    try:
        wait_for_service(coral_env, "checkout-go")
        records = attach_many(coral_env, "checkout-go", [f"main.{f}" for f in FUNCTIONS], call, 100)
        check_exact(records, 100, prefix="main.", trees=False)
    finally:
        if target.proc.stdin:
            target.proc.stdin.close()
        target.stop()


def test_five_python_functions_exact_per_function_with_their_trees(coral_env: CoralEnv, colony: Process,
                                                                  agent: Process) -> None:
    service = subprocess.Popen([sys.executable, "-c", CHECKOUT_PY], env=coral_env.env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert service.stdin is not None and service.stdout is not None

    def call(n: int) -> str:
        assert service.stdin is not None and service.stdout is not None
        service.stdin.write(f"{n}\n")
        service.stdin.flush()
        return service.stdout.readline().strip()

    try:
        assert service.stdout.readline().strip() == "ready"
        wait_for_service(coral_env, "checkout-py")
        records = attach_many(coral_env, "checkout-py", [f"__main__.{f}" for f in FUNCTIONS], call, 300)
        check_exact(records, 300, prefix="__main__.")
    finally:
        service.stdin.close()
        service.wait(10)


def node(function: str, start: int, end: int, tid: int = 1) -> pb.Call:
    return pb.Call(function=function, pid=1, tid=tid, start_unix_ns=start, end_unix_ns=end, duration_ns=end - start)


@pytest.mark.fast
def test_calls_nest_by_thread_and_time() -> None:
    calls = [node("fee", 30, 40), node("handle", 0, 100), node("charge", 20, 90), node("fee", 50, 60),
             node("validate", 5, 15), node("handle", 200, 300), node("handle", 0, 50, tid=2), node("fee", 10, 20, tid=2)]
    roots = group.forest(calls)
    shape = [(r.call.function, r.call.tid, [(c.call.function, [g.call.function for g in c.children]) for c in r.children])
             for r in roots]
    assert shape == [("handle", 1, [("validate", []), ("charge", ["fee", "fee"])]), ("handle", 2, [("fee", [])]),
                     ("handle", 1, [])]
    assert [r.call.start_unix_ns for r in group.sampled_trees(roots, 2)] == [0]  # the third has nothing nested
    lines = group.tree_lines(roots[0])
    assert lines[1:] == ["├─ validate 10ns", "└─ charge 70ns", "   ├─ fee 10ns", "   └─ fee 10ns"], lines
    # Recursion nests in itself; a call that begins with another is outside it when it ends later.
    deep = group.forest([node("f", 0, 10), node("f", 0, 9), node("f", 1, 8)])
    assert group.count(deep) == 3 and len(deep) == 1 and deep[0].children[0].children[0].call.end_unix_ns == 8
    assert group.tree_lines(deep[0], limit=1)[-1] == "… 1 more nested calls"


@pytest.mark.fast
def test_patterns_expand_through_the_listing() -> None:
    names = ["main", "pay_fee", "pay_tax", "operator*", "operator*=", "main.(*Server).Handle", "main.Sum[int]",
             *(f"f{i}" for i in range(17))]

    def call(method: str, request: Any) -> pb.ListFunctionsResponse:
        assert method == "ListFunctions" and request.max_results in (1, 17)
        found = [n for n in names if fnmatch.fnmatchcase(n, request.pattern)]
        return pb.ListFunctionsResponse(functions=found[:request.max_results], truncated=len(found) > request.max_results)

    assert group.resolve(call, "svc", ["main", "pay*", "pay_fee"]) == ["main", "pay_fee", "pay_tax"]
    # A name with * or ? that is listed as written is that function alone; brackets are never a pattern.
    assert group.resolve(call, "svc", ["operator*"]) == ["operator*"]
    assert group.resolve(call, "svc", ["main.(*Server).Handle"]) == ["main.(*Server).Handle"]
    assert group.resolve(call, "svc", ["main.Sum[int]", "pay_?ax"]) == ["main.Sum[int]", "pay_tax"]
    with pytest.raises(Exception, match="matches no function"):
        group.resolve(call, "svc", ["zz*"])
    with pytest.raises(Exception, match="matches more than 16 functions of 'svc'"):
        group.resolve(call, "svc", ["f*"])
    assert group.is_pattern("a.*") and not group.is_pattern("pay::fee") and not group.is_pattern("main.Sum[int]")
    assert group.literal("main.(*S)[0]?") == "main.([*]S)[[]0][?]"


@pytest.mark.parametrize("functions", [["charge", "refund"], ["pay_*"]])
def test_count_by_with_several_functions_is_refused_before_anything_is_asked(functions: list[str]) -> None:
    """--count-by counts one function's calls by one key: with several
    functions (or a pattern) coralctl refuses it itself, as a usage error;
    the endpoint named does not exist, so nothing was asked of a daemon."""
    argv = [tool("coralctl"), "--endpoint", "ipc:///nonexistent/coral.sock", "debug", "attach", "svc",
            *(x for f in functions for x in ("--function", f)), "--count-by", "ret"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr.strip()) == (
        2, "coralctl debug attach: error: --count-by counts one function's calls; name one --function")
