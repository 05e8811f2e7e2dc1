"""`--where` on native functions, decided in the kernel: real targets in C,
C++, Rust and Go, each fed a known list of calls, each call printed by the target
itself; a session with a condition shows exactly the calls the target
printed that match it, and its summary counts the others as filtered (or,
when a value could not be read, as where_error), with every call in the
total."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import CoralEnv, Process, build_go, start_agent, start_colony, tool
from tests.test_native_capture import run_service

C = r"""
// Each input line "REF CENTS AMOUNT SLEEP_MS [null]": one charge(), then its values and result.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
struct order { long cents; int items; };
__attribute__((noinline)) int charge(const char *ref, struct order *order, int amount, int sleep_ms)
{
    if (sleep_ms) {
        struct timespec ts = {0, sleep_ms * 1000000L};
        nanosleep(&ts, NULL);
    }
    return amount < 0 ? -1 : (int)(order ? order->cents : 0) + amount;
}
int main(void)
{
    char line[256], ref[128], null[8];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        long cents = 0;
        int amount = 0, sleep_ms = 0;
        null[0] = 0;
        sscanf(line, "%127s %ld %d %d %7s", ref, &cents, &amount, &sleep_ms, null);
        struct order o = {cents, 1};
        int r = charge(ref, strcmp(null, "null") ? &o : NULL, amount, sleep_ms);
        printf("%s %ld %d %d\n", ref, cents, amount, r);
    }
    return 0;
}
"""

CXX = r"""
// As the C target, the ref a std::string by reference.
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <time.h>
struct Order { long cents; int items; };
namespace pay {
__attribute__((noinline)) int charge(const std::string &ref, Order *order, int amount, int sleep_ms)
{
    if (sleep_ms) {
        struct timespec ts = {0, sleep_ms * 1000000L};
        nanosleep(&ts, nullptr);
    }
    return amount < 0 ? -1 : (int)(order ? order->cents : 0) + amount;
}
}
int main()
{
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string ref, null;
        long cents = 0;
        int amount = 0, sleep_ms = 0;
        in >> ref >> cents >> amount >> sleep_ms >> null;
        Order o{cents, 1};
        int r = pay::charge(ref, null == "null" ? nullptr : &o, amount, sleep_ms);
        printf("%s %ld %d %d\n", ref.c_str(), cents, amount, r);
        fflush(stdout);
    }
}
"""

GO = r"""
// As the C target, in Go: charge returns (int, error), an error for a negative amount.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

type Order struct {
	Cents int64
	Items int64
}

//go:noinline
func charge(ref string, order *Order, amount int64, sleepMs int64) (int64, error) {
	if sleepMs > 0 {
		time.Sleep(time.Duration(sleepMs) * time.Millisecond)
	}
	if amount < 0 {
		return -1, errors.New("declined")
	}
	if order == nil {
		return amount, nil
	}
	return order.Cents + amount, nil
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var ref, null string
		var cents, amount, sleepMs int64
		fmt.Sscan(in.Text(), &ref, &cents, &amount, &sleepMs, &null)
		if f := strings.Fields(in.Text()); len(f) > 4 {
			null = f[4]
		}
		o := &Order{Cents: cents, Items: 1}
		if null == "null" {
			o = nil
		}
		r, err := charge(ref, o, amount, sleepMs)
		fmt.Printf("%s %d %d %d %v\n", ref, cents, amount, r, err != nil)
	}
}
"""

RUST = r"""
// As the C target, in Rust: the ref a &str, the order a raw pointer that may be null (as C code passes it).
use std::io::{self, BufRead, Write};
#[repr(C)]
pub struct Order { cents: i64, items: i32 }
#[inline(never)]
pub fn charge(r#ref: &str, order: *const Order, amount: i32, sleep_ms: i32) -> i32 {
    if sleep_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(sleep_ms as u64));
    }
    if r#ref.starts_with('#') {
        return -2;  // (never: the refs are card numbers) reads ref, so that it is kept
    }
    let cents = if order.is_null() { 0 } else { unsafe { (*order).cents } };
    if amount < 0 { -1 } else { cents as i32 + amount }
}
fn main() {
    let stdin = io::stdin();
    let mut out = io::stdout();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        let cents: i64 = f[1].parse().unwrap();
        let amount: i32 = f[2].parse().unwrap();
        let sleep_ms: i32 = f[3].parse().unwrap();
        let o = Order { cents, items: 1 };
        let p: *const Order = if f.len() > 4 && f[4] == "null" { std::ptr::null() } else { &o };
        let r = charge(f[0], p, amount, sleep_ms);
        writeln!(out, "{} {} {} {}", f[0], cents, amount, r).unwrap();
        out.flush().unwrap();
    }
}
"""

# ref, order->cents, amount, sleep in ms (the duration), "null" for no order
CALLS = [
    "4111-0001 100 5 0", "4111-0002 2500 -3 0", "5500-0003 100 7 0", "4111-0004 900 12 30",
    "37-0005 50 -1 0", "4111 10 1 0", "5500-0007 3000 40 0", "4111-0008 20 -9 30", "6011-0009 1 0 0",
    "4111-0010 700 3 0 null", "5500-0011 700 -2 0 null",
]


@dataclass(frozen=True)
class Call:
    ref: str
    cents: int
    amount: int
    slow: bool  # slept 30 ms
    null: bool  # no order
    ret: int
    err: bool


def parse(line: str, printed: str) -> Call:
    fields = line.split()
    out = printed.split()
    return Call(fields[0], int(fields[1]), int(fields[2]), int(fields[3]) > 0, len(fields) > 4, int(out[3]),
                out[4] == "true" if len(out) > 4 else int(out[3]) < 0)


@dataclass
class Target:
    env: CoralEnv
    service: str
    function: str
    run: Process

    def session(self, where: str) -> tuple[list[dict], dict, list[Call]]:
        """Attach with `where`, make every call of CALLS, detach: the calls
        shown, the summary, and the calls as the target printed them."""
        p = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", self.service,
                              "--function", self.function, "--duration", "120s", "--no-save", "--capture-args",
                              "--where", where], env=self.env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        assert p.stdout is not None
        first = p.stdout.readline()
        if not first:
            raise AssertionError(p.communicate(timeout=30)[1])
        session = json.loads(first)
        assert session["kind"] == "session"
        proc = self.run.proc
        assert proc.stdin is not None and proc.stdout is not None
        made = []
        for line in CALLS:
            proc.stdin.write(f"{line}\n".encode())
            proc.stdin.flush()
            made.append(parse(line, proc.stdout.readline().decode()))
        detached = subprocess.run([tool("coralctl"), "--local", "debug", "detach", session["session_id"]],
                                  env=self.env.env, capture_output=True, text=True, timeout=60)
        assert detached.returncode == 0, detached.stderr
        out, _ = p.communicate(timeout=60)
        lines = [json.loads(x) for x in out.splitlines()]
        return [x for x in lines if x["kind"] == "call"], lines[-1], made

    def check(self, where: str, matches: Callable[[Call], bool], unreadable: Callable[[Call], bool] = lambda c: False,
              ref_arg: int = 0) -> None:
        calls, summary, made = self.session(where)
        expected = [c.ref for c in made if not unreadable(c) and matches(c)]
        shown = [c["args"][ref_arg]["value"].strip("'") for c in calls]
        assert shown == expected, (where, shown, expected)
        errors = sum(1 for c in made if unreadable(c))
        lost = {"filtered": len(made) - len(expected) - errors, "where_error": errors}
        assert summary["calls"] == len(made)
        assert {k: v for k, v in summary["lost"].items() if k in lost} == {k: v for k, v in lost.items() if v}, summary


@pytest.fixture(scope="module")
def world(bpf: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoralEnv]:
    env = CoralEnv.create()
    colony = start_colony(env)
    agent = start_agent(env)
    yield env
    agent.stop()
    colony.stop()
    env.remove()


def _target(world: CoralEnv, tmp: Path, language: str) -> Target:
    if language == "c":
        src, out = tmp / "charge.c", tmp / "charge_c"
        src.write_text(C)
        subprocess.run(["gcc", "-g", "-O1", "-o", str(out), str(src)], check=True)
        return Target(world, "where-c", "charge", run_service(world, "where-c", out))
    if language == "rust":
        src, out = tmp / "charge.rs", tmp / "charge_rs"
        src.write_text(RUST)
        subprocess.run(["rustc", "-g", "-C", "opt-level=1", "-o", str(out), str(src)], check=True)
        return Target(world, "where-rust", "charge::charge", run_service(world, "where-rust", out))
    src, out = tmp / "charge.cpp", tmp / "charge_cxx"
    src.write_text(CXX)
    subprocess.run(["g++", "-g", "-O1", "-o", str(out), str(src)], check=True)
    return Target(world, "where-cxx", "pay::charge", run_service(world, "where-cxx", out))


@pytest.fixture(scope="module", params=["c", "c++", "rust"])
def native(request: pytest.FixtureRequest, world: CoralEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    target = _target(world, tmp_path_factory.mktemp(request.param), request.param)
    yield target
    target.run.stop()


def test_an_integer_argument(native: Target) -> None:
    native.check("amount > 4", lambda c: c.amount > 4)
    native.check("amount == -1 || amount == 0", lambda c: c.amount in (-1, 0))


def test_a_string_argument(native: Target) -> None:
    native.check('ref == "4111"', lambda c: c.ref == "4111")
    native.check('startswith(ref, "4111-")', lambda c: c.ref.startswith("4111-"))
    native.check('ref != "4111"', lambda c: c.ref != "4111")


def test_a_field_through_a_pointer_and_a_null_one(native: Target) -> None:
    """Read at the entry; a null order cannot be read: where_error."""
    native.check("order->cents >= 700", lambda c: c.cents >= 700, unreadable=lambda c: c.null)
    # unless the rest decides alone
    native.check("order == nil || order->cents >= 700", lambda c: c.null or c.cents >= 700)


def test_the_return_value_and_the_duration(native: Target) -> None:
    native.check("ret < 0", lambda c: c.ret < 0)
    native.check("duration > 20ms", lambda c: c.slow)


def test_three_clauses(native: Target) -> None:
    native.check('startswith(ref, "4111") && (amount < 0 || duration > 20ms) && !(order == nil)',
                 lambda c: c.ref.startswith("4111") and (c.amount < 0 or c.slow) and not c.null)


@pytest.fixture(scope="module")
def gotarget(world: CoralEnv, go: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    binary = build_go(go, GO, tmp_path_factory.mktemp("go"), "charge")
    target = Target(world, "where-go", "main.charge", run_service(world, "where-go", binary))
    yield target
    target.run.stop()


def test_go_conditions(gotarget: Target) -> None:
    gotarget.check("amount > 4", lambda c: c.amount > 4)
    gotarget.check('ref == "4111"', lambda c: c.ref == "4111")
    gotarget.check('startswith(ref, "4111-")', lambda c: c.ref.startswith("4111-"))
    gotarget.check("order->Cents >= 700", lambda c: c.cents >= 700, unreadable=lambda c: c.null)
    gotarget.check("err != nil", lambda c: c.err)
    gotarget.check("ret < 0", lambda c: c.ret < 0)
    gotarget.check("duration > 20ms", lambda c: c.slow)
    gotarget.check('startswith(ref, "4111") && (err != nil || duration > 20ms) && !(order == nil)',
                   lambda c: c.ref.startswith("4111") and (c.err or c.slow) and not c.null)


def test_one_condition_per_function_at_a_time(native: Target) -> None:
    """The kernel evaluates one condition a call: a second session with one
    on the same function is refused, one without is not."""
    first = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", native.service,
                              "--function", native.function, "--duration", "60s", "--no-save", "--where", "amount > 1"],
                             env=native.env.env, stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None
    session = json.loads(first.stdout.readline())
    try:
        second = subprocess.run([tool("coralctl"), "--local", "debug", "attach", native.service, "--function",
                                 native.function, "--duration", "1s", "--no-save", "--where", "amount > 2"],
                                env=native.env.env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "another session with --where already watches this function in pid" in second.stderr, second.stderr
        plain = subprocess.run([tool("coralctl"), "--local", "debug", "attach", native.service, "--function",
                                native.function, "--duration", "1s", "--no-save"],
                               env=native.env.env, capture_output=True, text=True, timeout=60)
        assert plain.returncode == 0, plain.stderr
    finally:
        subprocess.run([tool("coralctl"), "--local", "debug", "detach", session["session_id"]], env=native.env.env,
                       capture_output=True, timeout=60)
        first.communicate(timeout=60)
