"""Calls that leave without returning leave the program unharmed. A
uretprobe rewrites the return address on the stack, and the unwinder
cannot pass it (a C++ program ends in std::terminate, a Rust one aborts
with "failed to initiate panic"); in a binary that
links a C++ or Rust personality routine Coral probes every RET of the
function instead, as it does for Go. Plain C keeps its uretprobe, and
longjmp out of it is safe. A call that leaves by an exception or longjmp
is counted as unwound, never paired with another call's return."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.harness import GO_TOOLCHAINS, CoralEnv, NativeService, Process, go_build, go_or_skip, kernel_probes, start_attach

SOURCE = r"""
// Each input line N: N calls of settle(); every fourth one throws from charge().
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

__attribute__((noinline)) long charge(long cents)
{
    if (cents < 0)
        throw std::invalid_argument("negative amount");
    return cents * 2;
}

__attribute__((noinline)) long settle(long cents)
{
    return charge(cents) + 1;
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
                sum += settle(i % 4 == 3 ? -1 : i);
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
// Each input line N: N calls of settle(); every fourth one panics in charge(), caught by catch_unwind.
use std::io::BufRead;
use std::panic;

#[no_mangle]
#[inline(never)]
pub fn charge(cents: i64) -> i64 {
    if cents < 0 {
        panic!("negative amount");
    }
    cents * 2
}

#[no_mangle]
#[inline(never)]
pub fn settle(cents: i64) -> i64 {
    charge(cents) + 1
}

fn main() {
    panic::set_hook(Box::new(|_| {})); // the caught panics print nothing
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let n: i64 = line.unwrap().trim().parse().unwrap_or(0);
        let (mut caught, mut sum) = (0, 0i64);
        for i in 0..n {
            let v = if i % 4 == 3 { -1 } else { i };
            match panic::catch_unwind(|| settle(v)) {
                Ok(r) => sum += r,
                Err(_) => caught += 1,
            }
        }
        println!("done {} caught {} sum {}", n, caught, sum);
    }
}
"""
GO = r"""
// Each input line N: N calls of settle(); every fourth one panics in charge(), recovered in settleSafe().
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

//go:noinline
func charge(cents int) int {
	if cents < 0 {
		panic("negative amount")
	}
	return cents * 2
}

//go:noinline
func settle(cents int) int {
	return charge(cents) + 1
}

func settleSafe(cents int) (r int, ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	return settle(cents), true
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		n, _ := strconv.Atoi(strings.TrimSpace(in.Text()))
		caught, sum := 0, 0
		for i := 0; i < n; i++ {
			v := i
			if i%4 == 3 {
				v = -1
			}
			if r, ok := settleSafe(v); ok {
				sum += r
			} else {
				caught++
			}
		}
		fmt.Printf("done %d caught %d sum %d\n", n, caught, sum)
	}
}
"""
CALLS = 102  # 25 throw; the last two do not, so every unwound frame is found by a later call


@pytest.fixture(scope="module", params=["c++ -O0", "c++ -O2", "rust -O0", "rust -O3", *(f"go {t}" for t in GO_TOOLCHAINS)])
def unwinding(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[str, str]]:
    """The program built one way, and the symbols of charge() and settle() in it."""
    language, opt = request.param.split()
    work = tmp_path_factory.mktemp(language.strip("+"))
    out = work / f"settle{opt}"
    if language == "c++":
        (work / "settle.cpp").write_text(SOURCE)
        subprocess.run(["g++", "-g", opt, "-Wall", "-o", str(out), str(work / "settle.cpp")], check=True)
        return out, ("_Z6chargel", "_Z6settlel")
    if language == "go":  # its RETs were always probed; a recovered panic discards frames as an exception does
        (work / "settle.go").write_text(GO)
        return go_build(go_or_skip(opt), work / "settle.go", out, work), ("main.charge", "main.settle")  # opt: toolchain
    (work / "settle.rs").write_text(RUST)
    subprocess.run(["rustc", "-g", "-C", f"opt-level={opt[2:]}", "-o", str(out), str(work / "settle.rs")], check=True)
    return out, ("charge", "settle")  # #[no_mangle], still the Rust ABI: panics unwind through them


def test_exceptions_and_panics_through_probed_functions_leave_the_program_unharmed(
    coral_env: CoralEnv, agent: Process, unwinding: tuple[Path, tuple[str, str]]
) -> None:
    """Both the throwing function and its caller probed; 102 calls, 25 of
    them unwound through both frames (a C++ exception, a Rust panic under
    catch_unwind, a Go panic recovered by the caller's caller). The program prints what it prints unprobed, runs
    on, and each session counts 77 returns and 25 unwound."""
    binary, functions = unwinding
    expected = subprocess.run([str(binary)], input=f"{CALLS}\n", capture_output=True, text=True, check=True).stdout
    assert expected.startswith(f"done {CALLS} caught 25 "), expected
    svc = NativeService(coral_env, binary, service="settle")
    try:
        sessions = [start_attach(coral_env, "settle", name, "--local", "--duration", "4s", "--no-save")
                    for name in functions]
        ours = [line for line in kernel_probes().splitlines() if f"/proc/{svc.child_pid}/exe" in line]
        assert ours and not any("uretprobe" in line for line in ours), ours
        assert all(first["probes"] >= 2 for _, first in sessions)  # the entry and at least one RET
        assert [first["return_probe"] for _, first in sessions] == ["ret", "ret"]
        assert svc.call(CALLS) == expected.strip()
        for attach, first in sessions:
            out, _ = attach.communicate(timeout=60)
            summary = json.loads(out.splitlines()[-1])
            assert (summary["status"], summary["calls"], summary["lost"]) == ("expired", CALLS - 25, {"unwound": 25}), \
                (first["function"], summary)
            returns = [json.loads(line) for line in out.splitlines() if '"kind":"call"' in line]
            assert len(returns) == CALLS - 25
        assert svc.run.proc.poll() is None, "the program did not survive"
        assert svc.call(4) == "done 4 caught 1 sum 9"  # settle(0..2) = 1 + 3 + 5, and one throw
    finally:
        svc.stop()


LONGJMP = r"""
// Each input line N: N calls of check(); every fourth one longjmps out of it.
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

static jmp_buf out;

__attribute__((noinline)) long check(long v)
{
    if (v % 4 == 3)
        longjmp(out, 1);
    return v * 2;
}

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        int n = atoi(line);
        volatile int jumped = 0;
        volatile long sum = 0;
        for (volatile int i = 0; i < n; i++) {
            if (setjmp(out)) {
                jumped++;
                continue;
            }
            sum += check(i);
        }
        printf("done %d jumped %d sum %ld\n", n, jumped, sum);
    }
    return 0;
}
"""


def test_longjmp_out_of_a_probed_c_function_leaves_the_program_unharmed(
    coral_env: CoralEnv, agent: Process, tmp_path: Path
) -> None:
    """Plain C keeps its uretprobe (the kernel drops a return probe whose
    frame longjmp skipped); the program prints what it prints unprobed, and
    the jumped-out calls are counted as unwound, none paired wrongly."""
    src = tmp_path / "jump.c"
    src.write_text(LONGJMP)
    binary = tmp_path / "jump"
    subprocess.run(["gcc", "-g", "-O1", "-Wall", "-o", str(binary), str(src)], check=True)
    expected = subprocess.run([str(binary)], input=f"{CALLS}\n", capture_output=True, text=True, check=True).stdout
    assert expected.startswith(f"done {CALLS} jumped 25 "), expected
    svc = NativeService(coral_env, binary, service="jump")
    try:
        attach, first = start_attach(coral_env, "jump", "check", "--local", "--duration", "3s", "--no-save")
        assert first["return_probe"] == "uretprobe"
        assert any("uretprobe" in line for line in kernel_probes().splitlines() if f"/proc/{svc.child_pid}/exe" in line)
        assert svc.call(CALLS) == expected.strip()
        out, _ = attach.communicate(timeout=60)
        summary = json.loads(out.splitlines()[-1])
        assert (summary["status"], summary["calls"], summary["lost"]) == ("expired", CALLS - 25, {"unwound": 25}), summary
        assert svc.run.proc.poll() is None, "the program did not survive"
    finally:
        svc.stop()


CANCEL = r"""
// Each input line N: N threads call wait_for_work(), which blocks in a
// cancellation point until main cancels the thread; each thread's cleanup
// handler (pushed by its caller, worker()) counts.
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static atomic_int entered, cleaned;
static volatile int work_came; /* never: the threads wait until cancelled */

__attribute__((noinline)) long wait_for_work(long id)
{
    atomic_fetch_add(&entered, 1);
    while (!work_came) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL); /* a cancellation point */
    }
    return id;
}

static void on_cancel(void *arg)
{
    (void)arg;
    atomic_fetch_add(&cleaned, 1);
}

static void *worker(void *arg)
{
    pthread_cleanup_push(on_cancel, NULL);
    wait_for_work((long)arg);
    pthread_cleanup_pop(0);
    return NULL;
}

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        int n = atoi(line), cancelled = 0;
        pthread_t *t = calloc(n, sizeof *t);
        atomic_store(&entered, 0);
        atomic_store(&cleaned, 0);
        for (long i = 0; i < n; i++)
            pthread_create(&t[i], NULL, worker, (void *)i);
        while (atomic_load(&entered) < n) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        for (int i = 0; i < n; i++)
            pthread_cancel(t[i]);
        for (int i = 0; i < n; i++) {
            void *r;
            pthread_join(t[i], &r);
            cancelled += r == PTHREAD_CANCELED;
        }
        free(t);
        printf("done %d cancelled %d cleaned %d\n", n, cancelled, atomic_load(&cleaned));
    }
    return 0;
}
"""


@pytest.mark.parametrize("flags", [[], ["-fexceptions"]], ids=["plain", "fexceptions"])
def test_pthread_cancel_through_a_probed_c_function_runs_every_cleanup_handler(
    coral_env: CoralEnv, agent: Process, tmp_path: Path, flags: list[str]
) -> None:
    """pthread_cancel unwinds a thread blocked inside a probed C function.
    Plain C keeps its uretprobe: glibc's forced unwind stops at the
    rewritten return address, and its stop function still runs the handlers
    the caller registered. C built with -fexceptions runs its cleanups by
    unwinding through the frame, which a uretprobe stops (0 of 16 ran): it
    names __gcc_personality_v0, so it is probed at its RETs. Either way
    every handler runs, the output equals the unprobed output and the
    program runs on; a cancelled call never returned, so it is not a call
    of the session."""
    src = tmp_path / "cancel.c"
    src.write_text(CANCEL)
    binary = tmp_path / "cancel"
    subprocess.run(["gcc", "-g", "-O1", "-Wall", "-pthread", *flags, "-o", str(binary), str(src)], check=True)
    expected = subprocess.run([str(binary)], input="16\n", capture_output=True, text=True, check=True).stdout
    assert expected == "done 16 cancelled 16 cleaned 16\n", expected
    svc = NativeService(coral_env, binary, service="cancel")
    try:
        attach, first = start_attach(coral_env, "cancel", "wait_for_work", "--local", "--duration", "3s", "--no-save")
        assert first["return_probe"] == ("ret" if flags else "uretprobe")
        ours = [line for line in kernel_probes().splitlines() if f"/proc/{svc.child_pid}/exe" in line]
        assert any("uretprobe" in line for line in ours) == (not flags), ours
        assert svc.call(16) == expected.strip()
        assert svc.call(16) == expected.strip()  # threads and their cleanup again, with the same probe
        out, _ = attach.communicate(timeout=60)
        summary = json.loads(out.splitlines()[-1])
        assert (summary["status"], summary["calls"]) == ("expired", 0), summary
        assert svc.run.proc.poll() is None, "the program did not survive"
        assert svc.call(4) == "done 4 cancelled 4 cleaned 4"  # and unprobed
    finally:
        svc.stop()


LEAF = r"""
// Each input line N: N calls of fee() and of route(i); route() tail-calls
// odd() for odd i, and odd() throws for i % 10 == 9, caught in main.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

extern "C" {
__attribute__((noinline)) long fee(long x) { return x * 7 + (x >> 3); }  // calls nothing: a leaf

__attribute__((noinline)) long odd(long x)
{
    if (x % 10 == 9)
        throw std::runtime_error("nine");
    return x * 5 + 1;
}

__attribute__((noinline)) long route(long x)
{
    if (x & 1)
        return odd(x);  // at -O2, a JMP to odd: odd's RET ends this call
    return x * 3;
}
}

int main()
{
    char line[64];
    setvbuf(stdout, nullptr, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        long n = atol(line), sum = 0, caught = 0;
        for (long i = 0; i < n; i++) {
            sum += fee(i);
            try {
                sum += route(i);
            } catch (const std::runtime_error &) {
                caught++;
            }
        }
        printf("done %ld caught %ld sum %ld\n", n, caught, sum);
    }
    return 0;
}
"""


def test_a_leaf_keeps_the_uretprobe_and_a_tail_call_is_counted(
    coral_env: CoralEnv, agent: Process, tmp_path: Path
) -> None:
    """In a C++ program the rule is per function. fee() calls nothing, so
    nothing can unwind through it: it keeps the cheaper uretprobe. route()
    calls odd() (which may throw) by a tail jump: it is probed at its RET
    and at that JMP, and the 50 calls that leave by the jump are counted as
    `tail_call`, not as returns (their RET is odd's) and not as unwound.
    The program prints what it prints unprobed."""
    src = tmp_path / "leaf.cpp"
    src.write_text(LEAF)
    binary = tmp_path / "leaf"
    subprocess.run(["g++", "-g", "-O2", "-Wall", "-o", str(binary), str(src)], check=True)
    expected = subprocess.run([str(binary)], input="100\n", capture_output=True, text=True, check=True).stdout
    assert expected.startswith("done 100 caught 10 "), expected
    svc = NativeService(coral_env, binary, service="leaf")
    try:
        sessions = [start_attach(coral_env, "leaf", name, "--local", "--duration", "3s", "--no-save")
                    for name in ("fee", "route")]
        assert [first["return_probe"] for _, first in sessions] == ["uretprobe", "ret"]
        assert sessions[1][1]["probes"] == 3  # the entry, the RET, the JMP
        ours = [line for line in kernel_probes().splitlines() if f"/proc/{svc.child_pid}/exe" in line]
        assert sum("uretprobe" in line for line in ours) == 1, ours
        assert svc.call(100) == expected.strip()
        fee, route = (json.loads(attach.communicate(timeout=60)[0].splitlines()[-1]) for attach, _ in sessions)
        assert (fee["calls"], fee["lost"]) == (100, {}), fee
        assert (route["calls"], route["lost"]) == (50, {"tail_call": 50}), route
        assert svc.run.proc.poll() is None, "the program did not survive"
    finally:
        svc.stop()
