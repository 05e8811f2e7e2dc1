"""--stack: a function called from two callers, an exact number of times
each, is attributed exactly per caller; built with frame pointers (-O0,
walked by the kernel) and at -O2 without them (a copy of the stack unwound
by the agent with .eh_frame), in C, C++ and Rust; Go and Python too;
through a real agent and coral-run, with real BPF."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.harness import CoralEnv, NativeService, Process, build_go, coralctl, start_attach, tool
from tests.test_native_e2e import wait_for_service
from tests.test_profile import chromium, png_pixels

# Each input line "alpha N" or "beta N": work() called N times from that caller.
SOURCE = r"""
#include <stdio.h>
#include <string.h>
#ifdef __cplusplus
extern "C" {
#endif
static volatile long total;

__attribute__((noinline)) long work(long i)
{
    for (int k = 0; k < 2000; k++) /* some microseconds: a flamegraph by time has room for every caller */
        total += i;
    __asm__ volatile("" ::: "memory");
    return total;
}

__attribute__((noinline)) long from_alpha(long n)
{
    long r = 0;
    for (long i = 0; i < n; i++)
        r += work(i);
    __asm__ volatile("" : "+r"(r)); /* no tail call: the loop's last call returns here */
    return r;
}

__attribute__((noinline)) long from_beta(long n)
{
    long r = 0;
    for (long i = 0; i < n; i++)
        r += work(2 * i);
    __asm__ volatile("" : "+r"(r));
    return r;
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
        long r = !strcmp(what, "alpha") ? from_alpha(n) : from_beta(n);
        printf("%s %ld = %ld\n", what, n, r);
    }
    return 0;
}
"""

# (compiler flags, the unwinding the agent picks)
BUILDS = {
    "c -O0 frame pointers": (["gcc", "-x", "c", "-O0", "-fno-omit-frame-pointer"], "fp"),
    "c -O2 no frame pointers": (["gcc", "-x", "c", "-O2", "-fomit-frame-pointer"], "tables"),
    "c++ -O2 no frame pointers": (["g++", "-x", "c++", "-O2", "-fomit-frame-pointer"], "tables"),
    "c++ -O0 frame pointers": (["g++", "-x", "c++", "-O0", "-fno-omit-frame-pointer"], "fp"),
}


@pytest.fixture(scope="module", params=list(BUILDS))
def callers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("callers")
    (work / "callers.c").write_text(SOURCE)
    out = work / "callers"
    flags, unwind = BUILDS[request.param]
    subprocess.run([*flags, "-g", "-Wall", "-o", str(out), str(work / "callers.c")], check=True)
    return out, unwind


def attach_and_call(env: CoralEnv, binary: Path, *flags: str,
                    function: str = "work") -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """alpha 7, beta 13, alpha 5: the session line, its calls and its summary."""
    svc = NativeService(env, binary, service="callers")
    try:
        attach, first = start_attach(env, "callers", function, "--local", "--duration", "3s", "--no-save", "--stack",
                                     *flags)
        for line in ("alpha 7", "beta 13", "alpha 5"):
            assert svc.call(line).startswith(line), line
        out, _ = attach.communicate(timeout=60)
    finally:
        svc.stop()
    records = [json.loads(line) for line in out.splitlines()]
    summary = records[-1]
    assert summary["kind"] == "summary", summary
    return first, [r for r in records if r.get("kind") == "call"], summary


def test_each_call_is_attributed_to_its_caller(coral_env: CoralEnv, agent: Process,
                                               callers: tuple[Path, str]) -> None:
    """12 calls from from_alpha and 13 from from_beta, each with work
    first, its caller second and main below; the unwinding the build
    allows; the top callers in the summary."""
    binary, unwind = callers
    first, calls, summary = attach_and_call(coral_env, binary)
    assert first["stack_unwind"] == unwind, first
    assert summary["calls"] == 25 and summary["lost"] == {}, summary
    assert len(calls) == 25
    by_caller: Counter[str] = Counter()
    for call in calls:
        names = [f["function"] for f in call["stack"]]
        assert names[0] == "work", names
        assert "main" in names, names
        assert names.index("main") == 2, names
        assert not call["stack_truncated"], call
        by_caller[names[1]] += 1
    assert by_caller == {"from_alpha": 12, "from_beta": 13}, by_caller
    files = {f["file"] for call in calls for f in call["stack"][:3]}
    assert files == {"callers.c"}, files  # file:line from DWARF
    top = {c["caller"]: c["calls"] for c in summary["top_callers"]}
    assert top == {"from_alpha": 12, "from_beta": 13}, summary["top_callers"]


def test_a_short_depth_is_shown_as_truncated(coral_env: CoralEnv, agent: Process,
                                              callers: tuple[Path, str]) -> None:
    """--stack-depth 2 keeps work and its caller, and says more were left out."""
    binary, _ = callers
    _, calls, _ = attach_and_call(coral_env, binary, "--stack-depth", "2")
    assert len(calls) == 25
    assert all(len(c["stack"]) == 2 and c["stack_truncated"] for c in calls), calls[0]
    assert Counter(c["stack"][1]["function"] for c in calls) == {"from_alpha": 12, "from_beta": 13}


def test_stack_options_are_checked(coral_env: CoralEnv, agent: Process, callers: tuple[Path, str]) -> None:
    binary, _ = callers
    svc = NativeService(coral_env, binary, service="callers")
    try:
        got = coralctl(coral_env, "--local", "debug", "attach", "callers", "--function", "work", "--stack",
                       "--stack-depth", "500", "--no-save")
        assert got.returncode != 0 and "--stack-depth 500 is over the limit of 127 frames" in got.stderr, got.stderr
    finally:
        svc.stop()


PYTHON_SERVICE = r'''
import sys

import coral.sdk


def work(i):
    return i * 2


def from_alpha(n):
    return sum(work(i) for i in range(n))


def from_beta(n):
    total = 0
    for i in range(n):
        total += work(i)
    return total


def main():
    coral.sdk.init(service="callers-py")
    print("ready", flush=True)
    for line in sys.stdin:
        what, n = line.split()
        r = from_alpha(int(n)) if what == "alpha" else from_beta(int(n))
        print(f"{what} {n} = {r}", flush=True)


if __name__ == "__main__":
    main()
'''


def python_stacks(env: CoralEnv, tmp_path: Path, source: str, service: str, function: str,
                  duration: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`source` (a Python service that answers "alpha N" or "beta N" by
    making N calls through from_alpha or from_beta) run with the SDK, and
    `function` attached with --stack while it makes 7 + 13 + 5 calls: the
    session's first line and every record after it."""
    script = tmp_path / f"{service.replace('-', '_')}.py"
    script.write_text(source)
    proc = subprocess.Popen([sys.executable, str(script)], env=env.env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        wait_for_service(env, service)
        attach, first = start_attach(env, service, function, "--local", "--duration", duration, "--no-save", "--stack")
        for line in ("alpha 7", "beta 13", "alpha 5"):
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline().startswith(line)
        out, _ = attach.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(10)
    return first, [json.loads(line) for line in out.splitlines()]


def test_python_calls_are_attributed_to_their_python_callers(coral_env: CoralEnv, agent: Process,
                                                             tmp_path: Path) -> None:
    """The SDK puts the Python frames in each record: work first (where it
    is defined), then its caller (from_alpha through its generator
    expression, or from_beta), then main, with files and lines."""
    first, records = python_stacks(coral_env, tmp_path, PYTHON_SERVICE, "callers-py", "__main__.work", "3s")
    assert first["stack_unwind"] == "python", first
    calls = [r for r in records if r.get("kind") == "call"]
    assert len(calls) == 25 and records[-1]["calls"] == 25, records[-1]
    callers: Counter[str] = Counter()
    for call in calls:
        names = [f["function"] for f in call["stack"]]
        assert names[0] == "work" and "main" in names, names
        assert not call["stack_truncated"]
        # from_alpha calls work from its generator expression
        callers["from_alpha" if names[1] == "from_alpha.<locals>.<genexpr>" else names[1]] += 1
        assert all(Path(f["file"]).name == "callers_py.py" and f["line"] > 0 for f in call["stack"]), call["stack"]
    assert callers == {"from_alpha": 12, "from_beta": 13}, callers
    assert {c["caller"]: c["calls"] for c in records[-1]["top_callers"]} == {
        "from_alpha.<locals>.<genexpr>": 12, "from_beta": 13}


ZLIB_CALLERS = r'''
import sys
import zlib

import coral.sdk


def from_alpha(n):
    return [zlib.crc32(b"alpha %d" % i) for i in range(n)]


def from_beta(n):
    for i in range(n):
        zlib.crc32(b"beta %d" % i)


coral.sdk.init(service="zlib-callers").wait_bound()
print("ready", flush=True)
for line in sys.stdin:
    who, n = line.split()
    (from_alpha if who == "alpha" else from_beta)(int(n))
    print(line.strip(), flush=True)
'''


def test_a_native_function_in_a_python_service_has_the_python_frames_above_it(
        coral_env: CoralEnv, agent: Process, tmp_path: Path) -> None:
    """libz's crc32 called from two Python functions: each call's stack is
    crc32 and the native frames up to the interpreter, then the Python
    frames (from_alpha or from_beta, then <module>), then the interpreter's
    start; attributed exactly per Python caller."""
    first, records = python_stacks(coral_env, tmp_path, ZLIB_CALLERS, "zlib-callers", "libz.so.1:crc32", "4s")
    assert first["stack_unwind"] in ("fp", "tables"), first
    calls = [r for r in records if r.get("kind") == "call"]
    assert len(calls) == 25, records[-1]
    callers: Counter[str] = Counter()
    for call in calls:
        frames = call["stack"]
        names = [f["function"] for f in frames]
        assert names[0] == "crc32", names
        python = [f for f in frames if f["module"] == "python"]
        assert [f["function"] for f in python][-1] == "<module>", names
        assert all(Path(f["file"]).name == "zlib_callers.py" and f["line"] > 0 for f in python), python
        assert "_PyEval_EvalFrameDefault" not in names, names  # the interpreter's loop is where the Python frames are
        callers[python[0]["function"]] += 1
    # from_alpha calls it from its list comprehension (a frame of its own before 3.12)
    callers["from_alpha"] += callers.pop("from_alpha.<locals>.<listcomp>", 0)
    assert callers == {"from_alpha": 12, "from_beta": 13}, callers


def test_call_paths_and_a_flamegraph_of_the_callers_weighted_by_time(coral_env: CoralEnv, agent: Process,
                                                                     tmp_path: Path) -> None:
    """debug stacks: the two paths with their exact counts; debug
    flamegraph --output folded: each path weighted by its calls' total
    time, exactly; the HTML file drawn by a real headless Chromium, with
    the function and its callers in it, and nothing fetched."""
    (tmp_path / "callers.c").write_text(SOURCE)
    binary = tmp_path / "callers"
    subprocess.run(["gcc", "-x", "c", "-O2", "-fomit-frame-pointer", "-g", "-o", str(binary),
                    str(tmp_path / "callers.c")], check=True)
    first, calls, _ = attach_and_call(coral_env, binary)
    session = first["session_id"]

    text = coralctl(coral_env, "--local", "debug", "stacks", session)
    assert text.returncode == 0, text.stderr
    paths = {line.split("  ")[-1].split(" > main > ", 1)[-1]: int(line.split()[0])
             for line in text.stdout.splitlines() if " > " in line}
    assert paths == {"from_alpha > work": 12, "from_beta > work": 13}, text.stdout

    html = tmp_path / "callers.html"
    out = coralctl(coral_env, "--local", "--output", "folded", "debug", "flamegraph", session, "-o", str(html))
    assert out.returncode == 0, out.stderr
    weights = {line.rsplit(" ", 1)[0].split(";main;", 1)[-1]: int(line.rsplit(" ", 1)[1])
               for line in out.stdout.splitlines()}
    expected: Counter[str] = Counter()
    for call in calls:
        expected[f"{call['stack'][1]['function']};work"] += call["duration_ns"]
    assert weights == dict(expected), (weights, expected)

    shot = tmp_path / "callers.png"
    taken = chromium(f"--screenshot={shot}", html.as_uri())
    assert shot.exists(), taken.stderr
    width, _, pixels = png_pixels(shot)
    warm = sum(1 for r, g, b in pixels if r > 180 and b < 120 and r - b > 80)
    assert warm > width * 18 * 3 * 0.8, warm  # boxes drawn: main and below are full-width rows
    dom = chromium("--dump-dom", html.as_uri())
    drawn = {t.split(">")[-1] for t in dom.stdout.split("</text>") if "<text" in t}
    assert {"main", "from_alpha", "from_beta", "work"} <= drawn, drawn
    assert "http" not in html.read_text().replace("http://www.w3.org/2000/svg", "")  # nothing fetched


GO_SERVICE = r"""
// Each input line "alpha N" or "beta N": work called N times from that caller.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

var total int

//go:noinline
func work(i int) int {
	total += i
	return total
}

//go:noinline
func fromAlpha(n int) int {
	r := 0
	for i := 0; i < n; i++ {
		r += work(i)
	}
	return r
}

//go:noinline
func fromBeta(n int) int {
	r := 0
	for i := 0; i < n; i++ {
		r += work(2 * i)
	}
	return r
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fields := strings.Fields(in.Text())
		n, _ := strconv.Atoi(fields[1])
		r := 0
		if fields[0] == "alpha" {
			r = fromAlpha(n)
		} else {
			r = fromBeta(n)
		}
		fmt.Printf("%s %d = %d\n", fields[0], n, r)
	}
}
"""


def test_go_calls_are_attributed_to_their_callers(coral_env: CoralEnv, agent: Process, go: str,
                                                  tmp_path: Path) -> None:
    """Go keeps frame pointers: the kernel walks them at each RET of work,
    and the return address at the stack pointer puts back the caller."""
    binary = build_go(go, GO_SERVICE, tmp_path, "gocallers")
    run = Process("run-gocallers", [tool("coral-run"), "--service", "gocallers", "--", str(binary)], coral_env,
                  stdin=subprocess.PIPE).wait_ready()
    try:
        attach, first = start_attach(coral_env, "gocallers", "main.work", "--local", "--duration", "3s", "--no-save",
                                     "--stack")
        assert first["stack_unwind"] == "fp", first
        assert run.proc.stdin is not None and run.proc.stdout is not None
        for line in ("alpha 7", "beta 13", "alpha 5"):
            run.proc.stdin.write(f"{line}\n".encode())
            run.proc.stdin.flush()
            assert run.proc.stdout.readline().decode().startswith(line)
        out, _ = attach.communicate(timeout=60)
    finally:
        run.stop()
    records = [json.loads(line) for line in out.splitlines()]
    calls = [r for r in records if r.get("kind") == "call"]
    assert len(calls) == 25 and records[-1]["calls"] == 25, records[-1]
    by_caller: Counter[str] = Counter()
    for call in calls:
        names = [f["function"] for f in call["stack"]]
        assert names[0] == "main.work" and names[2] == "main.main", names
        by_caller[names[1]] += 1
        assert call["stack"][1]["file"] == "gocallers.go" and call["stack"][1]["line"] > 0, call["stack"][1]
    assert by_caller == {"main.fromAlpha": 12, "main.fromBeta": 13}, by_caller


RUST_SERVICE = r"""
use std::hint::black_box;
use std::io::{BufRead, Write};

#[inline(never)]
fn work(i: u64) -> u64 {
    let mut total = 0u64;
    for k in 0..2000u64 {
        total = black_box(total.wrapping_add(i ^ k));
    }
    total
}

#[inline(never)]
fn from_alpha(n: u64) -> u64 {
    let mut r = 0u64;
    for i in 0..n {
        r = r.wrapping_add(work(i));
    }
    black_box(r) // no tail call: the loop's last call returns here
}

#[inline(never)]
fn from_beta(n: u64) -> u64 {
    let mut r = 0u64;
    for i in 0..n {
        r = r.wrapping_add(work(2 * i));
    }
    black_box(r)
}

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        let (what, n) = (words.next().unwrap_or(""), words.next().and_then(|w| w.parse().ok()).unwrap_or(0));
        let r = if what == "alpha" { from_alpha(n) } else { from_beta(n) };
        writeln!(out, "{} {} = {}", what, n, r).unwrap();
        out.flush().unwrap();
    }
}
"""

# (rustc flags, the unwinding the agent picks): rustc omits frame pointers unless asked.
RUST_BUILDS = {
    "rust opt-level 2": (["-C", "opt-level=2"], "tables"),
    "rust opt-level 2 frame pointers": (["-C", "opt-level=2", "-C", "force-frame-pointers=yes"], "fp"),
}


@pytest.mark.parametrize("build", list(RUST_BUILDS))
def test_rust_calls_are_attributed_to_their_callers(coral_env: CoralEnv, agent: Process, tmp_path: Path,
                                                    build: str) -> None:
    """Names demangled (crate::function), file:line from DWARF, exact per caller."""
    flags, unwind = RUST_BUILDS[build]
    (tmp_path / "rcallers.rs").write_text(RUST_SERVICE)
    binary = tmp_path / "rcallers"
    subprocess.run(["rustc", "-g", *flags, "-o", str(binary), str(tmp_path / "rcallers.rs")], check=True)
    first, calls, summary = attach_and_call(coral_env, binary, function="rcallers::work")
    assert first["stack_unwind"] == unwind, first
    assert summary["calls"] == 25 and summary["lost"] == {}, summary
    by_caller: Counter[str] = Counter()
    for call in calls:
        names = [f["function"] for f in call["stack"]]
        assert names[:1] == ["rcallers::work"] and names[2] == "rcallers::main", names
        assert call["stack"][1]["file"] == "rcallers.rs" and call["stack"][1]["line"] > 0, call["stack"][1]
        by_caller[names[1]] += 1
    assert by_caller == {"rcallers::from_alpha": 12, "rcallers::from_beta": 13}, by_caller
    top = {c["caller"]: c["calls"] for c in summary["top_callers"]}
    assert top == {"rcallers::from_alpha": 12, "rcallers::from_beta": 13}, summary["top_callers"]
