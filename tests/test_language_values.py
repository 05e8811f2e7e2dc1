"""Values as the language means them: a C++ std::string (by reference, by
pointer, by value, and returned) and a Rust String (by value, by reference,
and returned) are shown as the string they hold, copied in the kernel
through the object's data pointer and length (offsets from DWARF), cut with
`…(+N bytes)` past the record's 64 bytes; a Rust Option or Result returned
in registers is shown as `Some(…)`, `None`, `Ok(…)`, `Err(…)`. Each
program is built unoptimized and optimized, probed while it runs, and
prints what it prints unprobed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import CoralEnv, Process, tool
from tests.test_native_capture import run_service

LONG = "x" * 100  # longer than the 64 bytes a record's string slot holds
INPUT = ["alice 4", f"{LONG} -3", " 7"]  # a short name, a long one, an empty one

CXX = r"""
// Each input line "NAME N": the four functions on NAME, then name_of(N).
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
namespace pay {
__attribute__((noinline)) long by_ref(const std::string &who, long n) { return (long)who.size() + n; }
__attribute__((noinline)) long by_ptr(const std::string *who, long n) { return (long)who->size() + n; }
__attribute__((noinline)) long by_val(std::string who, long n) { return (long)who.size() + n; }
__attribute__((noinline)) std::string name_of(long code) {
    return code > 5 ? std::string(100, 'y') : code > 0 ? "approved" : "declined";
}
}
int main() {
    std::string line;
    while (std::getline(std::cin, line)) {
        size_t space = line.rfind(' ');
        std::string who = line.substr(0, space);
        long n = atol(line.c_str() + space + 1);
        long a = pay::by_ref(who, n), b = pay::by_ptr(&who, n), c = pay::by_val(who, n);
        printf("%ld %ld %ld %s\n", a, b, c, pay::name_of(n).c_str());
        fflush(stdout);
    }
}
"""

RUST = r"""
// Each input line "NAME N": the String functions on NAME, the enums on N.
use std::io::BufRead;

pub struct Card { pub cents: i64 }

#[inline(never)]
fn owned(who: String, n: i64) -> i64 { who.len() as i64 + n }
#[inline(never)]
fn borrowed(who: &String, n: i64) -> i64 { who.len() as i64 + n }
#[inline(never)]
fn greeting(n: i64) -> String { if n > 0 { format!("hello {}", n) } else { String::new() } }
#[inline(never)]
fn half(n: i64) -> Option<i64> { if n % 2 == 0 { Some(n / 2) } else { None } }
#[inline(never)]
fn check(n: i64) -> Result<u32, i32> { if n >= 0 { Ok(n as u32) } else { Err(n as i32) } }
#[inline(never)]
fn find(cards: &[Card], n: i64) -> Option<&Card> { cards.iter().find(|c| c.cents == n) }
#[inline(never)]
fn settle(a: Option<i64>, b: Result<u32, i32>, c: Option<&Card>, n: i64) -> i64 {
    a.unwrap_or(1) + b.map(|x| x as i64).unwrap_or_else(|e| e as i64) + c.map(|c| c.cents).unwrap_or(0) + n
}
#[inline(never)]
fn peek(a: &Option<i64>, n: i64) -> i64 { a.unwrap_or(n) }
#[inline(never)]
fn peek_result(r: &Result<u32, i32>) -> i64 { match r { Ok(v) => *v as i64, Err(e) => *e as i64 } }

fn main() {
    let cards = vec![Card { cents: 4 }, Card { cents: 9 }];
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let (who, n) = line.rsplit_once(' ').unwrap();
        let n: i64 = n.parse().unwrap();
        let who = who.to_string();
        let b = borrowed(&who, n);
        let o = owned(who, n);
        let a = if n % 2 == 0 { Some(n) } else { None };
        let r = if n >= 0 { Ok(n as u32) } else { Err(n as i32) };
        let f = find(&cards, n);
        let s = settle(a, r, f, n);
        let p = peek(&a, n) + peek_result(&r);
        println!("{} {} {:?} {:?} {:?} {:?} {} {}", b, o, greeting(n), half(n), check(n), f.map(|c| c.cents), s, p);
    }
}
"""


def _build(tmp_path: Path, language: str, opt: str) -> Path:
    if language == "c++":
        src, out = tmp_path / "pay.cpp", tmp_path / f"pay{opt}"
        src.write_text(CXX)
        subprocess.run(["g++", "-g", f"-O{opt}", "-o", str(out), str(src)], check=True)
    else:
        src, out = tmp_path / "fees.rs", tmp_path / f"fees{opt}"
        src.write_text(RUST)
        subprocess.run(["rustc", "-g", "-C", f"opt-level={opt}", "-o", str(out), str(src)], check=True)
    return out


def _calls_while_probed(env: CoralEnv, binary: Path, functions: list[str]) -> tuple[dict[str, list[dict[str, Any]]],
                                                                                  list[str]]:
    """Attach one session per function at once, feed INPUT, detach them,
    and return each function's calls and what the program printed. (The
    sessions are detached, not left to expire: six attaches one after the
    other can take longer than a short session on a busy machine.)"""
    run = run_service(env, "values", binary)
    try:
        sessions = {}
        ids = []
        for function in functions:
            p = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "values",
                                  "--function", function, "--duration", "120s", "--no-save", "--capture-args",
                                  "--capture-return"], env=env.env, stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None
            first = json.loads(p.stdout.readline())
            assert first["kind"] == "session"
            sessions[function] = p
            ids.append(first["session_id"])
        assert run.proc.stdin is not None and run.proc.stdout is not None
        printed = []
        for line in INPUT:
            run.proc.stdin.write(f"{line}\n".encode())
            run.proc.stdin.flush()
            printed.append(run.proc.stdout.readline().decode())
        for session_id in ids:
            detached = subprocess.run([tool("coralctl"), "--local", "debug", "detach", session_id], env=env.env,
                                      capture_output=True, text=True, timeout=60)
            assert detached.returncode == 0, detached.stderr
        calls = {f: [json.loads(line) for line in p.communicate(timeout=30)[0].splitlines() if '"kind":"call"' in line]
                 for f, p in sessions.items()}
        return calls, printed
    finally:
        run.stop()


def _unprobed(binary: Path) -> list[str]:
    out = subprocess.run([str(binary)], input="".join(f"{line}\n" for line in INPUT), capture_output=True, text=True,
                         check=True, timeout=30)
    return out.stdout.splitlines(keepends=True)


def _values(calls: list[dict[str, Any]], arg: int | None = None) -> list[str]:
    return [c["args"][arg]["value"] if arg is not None else c["return_value"]["value"] for c in calls]


SHOWN = ["'alice'", repr("x" * 64) + "…(+36 bytes)", "''"]


@pytest.mark.parametrize("opt", ["0", "2"])
def test_cxx_std_string_is_shown_as_its_text(coral_env: CoralEnv, agent: Process, tmp_path: Path, opt: str) -> None:
    """std::string by const reference, by pointer and by value (the Itanium
    ABI passes it by invisible reference), and returned through memory: the
    same three names each time, the long one cut at 64 bytes, the empty one
    empty; the result read through the address RAX holds at the return."""
    binary = _build(tmp_path, "c++", opt)
    calls, printed = _calls_while_probed(coral_env, binary, ["pay::by_ref", "pay::by_ptr", "pay::by_val",
                                                            "pay::name_of"])
    assert printed == _unprobed(binary)
    for function in ("pay::by_ref", "pay::by_ptr", "pay::by_val"):
        assert _values(calls[function], 0) == SHOWN, (function, calls[function])
        assert _values(calls[function], 1) == ["4", "-3", "7"], (function, calls[function])
        assert _values(calls[function]) == ["9", "97", "7"], (function, calls[function])
    assert [a["type"] for a in calls["pay::by_ref"][0]["args"]] == ["const string &", "long int"]
    assert calls["pay::by_ptr"][0]["args"][0]["type"] == "const string *"
    assert calls["pay::by_val"][0]["args"][0]["type"] == "string"
    # A result's string is copied as a C string's, with room for its NUL: 63 bytes of it.
    assert _values(calls["pay::name_of"]) == ["'approved'", "'declined'", repr("y" * 63) + "…(+37 bytes)"], \
        calls["pay::name_of"]
    assert _values(calls["pay::name_of"], 0) == ["4", "-3", "7"]


@pytest.mark.parametrize("opt", ["0", "2"])
def test_rust_string_option_and_result_are_shown_as_rust_writes_them(coral_env: CoralEnv, agent: Process,
                                                                     tmp_path: Path, opt: str) -> None:
    """A String by value (the callee drops it before it returns: copied at
    the entry), a &String, and a String returned through memory; Option<i64>
    and Result<u32, i32> (a tag and a payload in RAX and RDX) and
    Option<&Card> (null is None) from their DWARF variants. An Err is the
    call's error. The same enums as arguments: each part in its own
    register, as the Rust ABI passes them."""
    binary = _build(tmp_path, "rust", opt)
    calls, printed = _calls_while_probed(coral_env, binary, ["fees::owned", "fees::borrowed", "fees::greeting",
                                                            "fees::half", "fees::check", "fees::find", "fees::settle",
                                                            "fees::peek", "fees::peek_result"])
    assert printed == _unprobed(binary)
    for function in ("fees::owned", "fees::borrowed"):
        assert _values(calls[function], 0) == SHOWN, (function, calls[function])
        assert _values(calls[function]) == ["9", "97", "7"], (function, calls[function])
    assert calls["fees::owned"][0]["args"][0]["type"] == "struct String"
    assert calls["fees::borrowed"][0]["args"][0]["type"] == "&alloc::string::String"
    assert _values(calls["fees::greeting"]) == ["'hello 4'", "''", "'hello 7'"], calls["fees::greeting"]
    assert _values(calls["fees::half"]) == ["Some(2)", "None", "None"], calls["fees::half"]
    assert _values(calls["fees::check"]) == ["Ok(4)", "Err(-3)", "Ok(7)"], calls["fees::check"]
    assert [c["return_value"]["is_error"] for c in calls["fees::check"]] == [False, True, False]
    assert calls["fees::check"][1]["return_value"]["error_message"] == "Err(-3)"
    assert calls["fees::check"][0]["return_value"]["type"] == "struct Result<u32, i32>"
    found, none, _ = _values(calls["fees::find"])
    assert found.startswith("Some(0x") and found.endswith(")") and none == "None", calls["fees::find"]
    settle = calls["fees::settle"]
    assert [a["name"] for a in settle[0]["args"]] == ["a", "b", "c", "n"]
    assert _values(settle, 0) == ["Some(4)", "None", "None"], settle
    assert _values(settle, 1) == ["Ok(4)", "Err(-3)", "Ok(7)"], settle
    found, none, _ = _values(settle, 2)
    assert found.startswith("Some(0x") and none == "None", settle
    assert _values(settle, 3) == ["4", "-3", "7"], settle
    assert _values(settle) == ["16", "-5", "15"], settle
    # The same enums behind a reference: read through it, shown after its address.
    for function, shown in (("fees::peek", ["Some(4)", "None", "None"]), ("fees::peek_result", ["Ok(4)", "Err(-3)", "Ok(7)"])):
        pointed = _values(calls[function], 0)
        assert [v.split(" ", 1)[-1] for v in pointed] == shown and all(v.startswith("0x") for v in pointed), calls[function]
    assert calls["fees::peek"][0]["args"][0]["type"] == "&core::option::Option<i64>"
    assert _values(calls["fees::peek"], 1) == ["4", "-3", "7"]
    assert _values(calls["fees::peek_result"]) == ["4", "-3", "7"]
