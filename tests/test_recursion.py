"""Recursion is counted exactly at any depth up to [sessions]
max_call_depth (64 by default) per thread or goroutine; deeper entries are
counted by cause (`too_deep`), never lost silently. Each thread's stack
holds its top 8 frames itself; deeper ones are spilled to a table shared
by all threads and taken back as the calls above them return, so kernel
memory follows the depth really in use. Calls unwound out of deep
recursion (longjmp, a C++ exception) are each counted as unwound, and the
frames of a thread that ends deep are deleted once it is gone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import CoralEnv, NativeService, Process, build_go, coralctl, start_attach, tool

SOURCE = r"""
// Each input line "WHAT N": fib N; descend N (recursion N deep: N + 1
// calls); jump N (longjmp out of the bottom of descend N); exit N (a
// thread ends, without unwinding, at the bottom of descend N); throw N
// (C++ only: an exception out of the bottom of descend N).
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifdef __cplusplus
#include <stdexcept>
extern "C" {
#endif

static jmp_buf out;
static long calls;
static int mode; /* at the bottom: 0 return, 1 longjmp, 2 end the thread, 3 throw */

__attribute__((noinline)) long fib(long n)
{
    calls++;
    if (n < 2)
        return n;
    long a = fib(n - 1), b = fib(n - 2);
    __asm__ volatile("" : "+r"(a), "+r"(b)); /* no accumulator loop at -O2: every call is a call */
    return a + b;
}

__attribute__((noinline)) long descend(long n)
{
    calls++;
    if (n == 0) {
        if (mode == 1)
            longjmp(out, 1);
        if (mode == 2)
            syscall(SYS_exit, 0);
#ifdef __cplusplus
        if (mode == 3)
            throw std::runtime_error("bottom");
#endif
        return 0;
    }
    long r = descend(n - 1);
    __asm__ volatile("" : "+r"(r)); /* as in fib */
    return r + 1;
}

static void *deep_thread(void *arg)
{
    descend((long)arg);
    return NULL;
}

#ifdef __cplusplus
}
#endif

int main(void)
{
    char line[64], what[16];
    long n;
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%15s %ld", what, &n) != 2) {
            puts("?");
            continue;
        }
        volatile long r = 0;
        calls = 0;
        mode = 0;
        if (!strcmp(what, "fib")) {
            r = fib(n);
        } else if (!strcmp(what, "descend")) {
            r = descend(n);
        } else if (!strcmp(what, "jump")) {
            mode = 1;
            if (!setjmp(out))
                descend(n);
            r = -1;
        } else if (!strcmp(what, "exit")) {
            pthread_t t;
            mode = 2;
            pthread_create(&t, NULL, deep_thread, (void *)n);
            pthread_join(t, NULL);
            r = -1;
#ifdef __cplusplus
        } else if (!strcmp(what, "throw")) {
            mode = 3;
            try {
                descend(n);
            } catch (const std::exception &) {
                r = -1;
            }
#endif
        }
        printf("%s %ld = %ld calls %ld\n", what, n, (long)r, calls);
    }
    return 0;
}
"""

BUILDS = {"c -O0": ["gcc", "-x", "c", "-O0"], "c++ -O2": ["g++", "-x", "c++", "-O2"]}


@pytest.fixture(scope="module", params=list(BUILDS))
def deep(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The program built one way, and the return mechanism it gets: C keeps
    the uretprobe, C++ (a personality routine) is probed at its RETs."""
    work = tmp_path_factory.mktemp("deep")
    (work / "deep.c").write_text(SOURCE)
    out = work / "deep"
    subprocess.run([*BUILDS[request.param], "-g", "-Wall", "-pthread", "-o", str(out), str(work / "deep.c")],
                   check=True)
    return out, "uretprobe" if request.param.startswith("c ") else "ret"


def unprobed(binary: Path, lines: list[str]) -> list[str]:
    got = subprocess.run([str(binary)], input="".join(f"{line}\n" for line in lines), capture_output=True, text=True,
                         check=True)
    return got.stdout.splitlines()


def finish(attach: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = attach.communicate(timeout=60)
    summary: dict[str, Any] = json.loads(out.splitlines()[-1])
    assert summary["kind"] == "summary", summary
    return summary


def kernel_counters(env: CoralEnv) -> dict[str, int]:
    got = coralctl(env, "--local", "ping", "--output", "json")
    assert got.returncode == 0, got.stderr
    counters: dict[str, int] = json.loads(got.stdout)["counters"]
    return counters


def test_recursion_is_counted_exactly_up_to_the_tracked_depth(
    coral_env: CoralEnv, agent: Process, deep: tuple[Path, str]
) -> None:
    """fib(15) is 1,973 calls at most 15 deep; descend(40) three times and
    descend(63) once are 187 calls, the deepest 64 open at once: every one
    is counted, none lost, none unpaired."""
    binary, mechanism = deep
    work = ["fib 15", "descend 40", "descend 40", "descend 40", "descend 63"]
    expected = unprobed(binary, work)
    assert expected[0] == "fib 15 = 610 calls 1973", expected
    svc = NativeService(coral_env, binary, service="deep")
    try:
        sessions = [start_attach(coral_env, "deep", name, "--local", "--duration", "4s", "--no-save")
                    for name in ("fib", "descend")]
        assert [first["return_probe"] for _, first in sessions] == [mechanism, mechanism]
        assert [svc.call(line) for line in work] == expected
        fib, descend = (finish(attach) for attach, _ in sessions)
        assert (fib["status"], fib["calls"], fib["lost"]) == ("expired", 1973, {}), fib
        assert (descend["status"], descend["calls"], descend["lost"]) == ("expired", 3 * 41 + 64, {}), descend
        counters = kernel_counters(coral_env)
        assert counters.get("kernel.unpaired_returns", 0) == 0 and counters.get("kernel.stack_full", 0) == 0, counters
        assert counters.get("kernel.deep_frames_in_use", 0) == 0, counters  # every spilled frame taken back
        assert svc.run.proc.poll() is None
    finally:
        svc.stop()


def test_calls_deeper_than_the_tracked_depth_are_counted_and_named(
    coral_env: CoralEnv, agent: Process, deep: tuple[Path, str]
) -> None:
    """descend(100) is 101 calls, 101 deep: the outer 64 are calls of the
    session, the 37 below them are `too_deep`, in the summary's lost and
    in the words of coralctl's summary."""
    binary, _ = deep
    svc = NativeService(coral_env, binary, service="deep")
    try:
        attach, first = start_attach(coral_env, "deep", "descend", "--local", "--duration", "3s", "--no-save")
        assert svc.call("descend 100") == "descend 100 = 100 calls 101"
        summary = finish(attach)
        assert (summary["calls"], summary["lost"]) == (64, {"too_deep": 37}), summary
        shown = coralctl(coral_env, "--local", "debug", "events", first["session_id"])
        assert shown.returncode == 0, shown.stderr
        assert "37 entered deeper than the calls tracked per thread ([sessions] max_call_depth)" in shown.stdout, \
            shown.stdout
    finally:
        svc.stop()


def test_unwinding_out_of_deep_recursion_counts_every_frame(
    coral_env: CoralEnv, agent: Process, deep: tuple[Path, str]
) -> None:
    """longjmp (C) or an exception (C++) out of the bottom of descend(40)
    leaves 41 calls without a return: each is counted as unwound, spilled
    frames included, and the program prints what it prints unprobed."""
    binary, mechanism = deep
    work = ["throw 40" if mechanism == "ret" else "jump 40", "descend 3"]
    expected = unprobed(binary, work)
    svc = NativeService(coral_env, binary, service="deep")
    try:
        attach, _ = start_attach(coral_env, "deep", "descend", "--local", "--duration", "3s", "--no-save")
        assert [svc.call(line) for line in work] == expected
        summary = finish(attach)
        assert (summary["calls"], summary["lost"]) == (4, {"unwound": 41}), summary
        assert kernel_counters(coral_env).get("kernel.deep_frames_in_use", 0) == 0
        assert svc.run.proc.poll() is None, "the program did not survive"
    finally:
        svc.stop()


def test_the_frames_of_a_thread_that_ends_deep_are_deleted(
    coral_env: CoralEnv, agent: Process, deep: tuple[Path, str]
) -> None:
    """A thread that ends 21 calls deep (SYS_exit: nothing unwinds) leaves
    its 21 frames, 13 of them spilled; once its session ends, the agent
    deletes the spilled ones of threads that are gone."""
    binary, _ = deep
    svc = NativeService(coral_env, binary, service="deep")
    try:
        attach, _ = start_attach(coral_env, "deep", "descend", "--local", "--duration", "2s", "--no-save")
        assert svc.call("exit 20") == "exit 20 = -1 calls 21"
        assert kernel_counters(coral_env).get("kernel.deep_frames_in_use", 0) == 21 - 8
        summary = finish(attach)
        assert summary["calls"] == 0, summary
        assert kernel_counters(coral_env).get("kernel.deep_frames_in_use", 0) == 0
    finally:
        svc.stop()


GO = r"""
// Each input line N: N goroutines, each recursing DEPTH deep (DEPTH + 1 calls of descend).
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

const DEPTH = 20

//go:noinline
func descend(n int) int {
	if n == 0 {
		return 0
	}
	return descend(n-1) + 1
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		n, _ := strconv.Atoi(strings.TrimSpace(in.Text()))
		var wg sync.WaitGroup
		total := 0
		var mu sync.Mutex
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := descend(DEPTH)
				mu.Lock()
				total += r
				mu.Unlock()
			}()
		}
		wg.Wait()
		fmt.Printf("done %d total %d\n", n, total)
	}
}
"""


def test_go_recursion_in_many_goroutines_is_counted_exactly(
    coral_env: CoralEnv, full_speed_agent: Process, go: str, tmp_path: Path
) -> None:
    """1,000 goroutines each 21 calls deep: 21,000 calls, every one."""
    binary = build_go(go, GO, tmp_path, "deep")
    run = Process("run-deep-go", [tool("coral-run"), "--service", "deepgo", "--", str(binary)], coral_env,
                  stdin=subprocess.PIPE).wait_ready()
    try:
        attach, _ = start_attach(coral_env, "deepgo", "main.descend", "--local", "--duration", "4s", "--no-save")
        assert run.proc.stdin is not None and run.proc.stdout is not None
        run.proc.stdin.write(b"1000\n")
        run.proc.stdin.flush()
        assert run.proc.stdout.readline().decode().strip() == "done 1000 total 20000"
        summary = finish(attach)
        assert (summary["calls"], summary["lost"].get("too_deep", 0)) == (21_000, 0), summary
        counters = kernel_counters(coral_env)
        assert counters.get("kernel.unpaired_returns", 0) == 0 and counters.get("kernel.stack_full", 0) == 0, counters
        assert counters.get("kernel.deep_frames_in_use", 0) == 0, counters
    finally:
        if run.proc.stdin:
            run.proc.stdin.close()
        assert run.proc.wait(30) == 0
        run.stop()
