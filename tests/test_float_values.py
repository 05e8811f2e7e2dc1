"""Floating-point values: System V passes and returns a float or double in
an XMM register, which a uprobe cannot read, so Coral shows it as such,
never as the integer register's leftovers, and places the integer
arguments around it right: C's float, double and a typedef of one, Rust's
f32 and f64. A long double travels in memory (System V's X87 class), and so do
integers past the six registers: they are read from the stack, as they
were at the entry. A double a pointed-to struct holds is in memory,
and is shown as its number."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

from coral.agentd import abi, showvalues
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, Process, tool
from tests.test_native_capture import run_service

XMM = "(in a floating-point register: not captured)"

C = r"""
#include <stdio.h>
#include <stdlib.h>
typedef double money;
struct order { long cents; double rate; float share; int items; };
__attribute__((noinline)) long fee(double rate, long cents, money tip, float f, int n) {
    return (long)(rate * cents + tip + f) + n;
}
__attribute__((noinline)) double scale(long cents, double by) { return cents * by; }
__attribute__((noinline)) money tipped(long cents) { return cents / 10.0; }
__attribute__((noinline)) long total(struct order *o) { o->items += 1;
    return o->cents + (long)(o->rate * 2) + (long)(o->share * 4) + o->items;
}
__attribute__((noinline)) long wide(long double x, long n) { return (long)(x * 2) + n; }
__attribute__((noinline)) long double widen(long n) { return n * 1.5L; }
__attribute__((noinline)) long many(long a, long b, long c, long d, long e, long f, int g, double h, long i) {
    return a + b + c + d + e + f + g + (long)h + i;
}
int main(void) {
    char line[100];
    while (fgets(line, sizeof line, stdin)) {
        long n = atol(line);
        struct order o = {n, 1.5, 0.25f, 2};
        long a = fee(0.5, n, 1.25, 0.75f, 3);
        double b = scale(n, 2.5);
        money c = tipped(n);
        long d = total(&o);
        long e = wide(2.5L, n);
        long double f = widen(n);
        long g = many(1, 2, 3, 4, 5, 6, -7, 8.5, n);
        printf("%ld %.1f %.1f %ld %ld %.1Lf %ld\n", a, b, c, d, e, f, g);
        fflush(stdout);
    }
    return 0;
}
"""

RUST = r"""
use std::io::BufRead;
#[inline(never)]
fn rate(x: f64, n: i64, y: f32) -> f64 { x * n as f64 + y as f64 }
fn main() {
    for line in std::io::stdin().lock().lines() {
        let n: i64 = line.unwrap().trim().parse().unwrap();
        println!("{}", rate(0.5, n, 0.25));
    }
}
"""


def one_call_each(env: CoralEnv, binary: Path, functions: list[str], line: str) -> tuple[dict[str, dict[str, Any]], str]:
    """One session per function at once; one input line; each function's one call, and what was printed."""
    run = run_service(env, "floats", binary)
    try:
        sessions = {}
        for function in functions:
            p = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "floats",
                                  "--function", function, "--duration", "120s", "--no-save", "--capture-args",
                                  "--capture-return"], env=env.env, stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None
            first = json.loads(p.stdout.readline())
            assert first["kind"] == "session", first
            sessions[function] = (p, first["session_id"])
        assert run.proc.stdin is not None and run.proc.stdout is not None
        run.proc.stdin.write(f"{line}\n".encode())
        run.proc.stdin.flush()
        printed = run.proc.stdout.readline().decode()
        calls = {}
        for function, (p, session_id) in sessions.items():
            detached = subprocess.run([tool("coralctl"), "--local", "debug", "detach", session_id], env=env.env,
                                      capture_output=True, text=True, timeout=60)
            assert detached.returncode == 0, detached.stderr
            (call,) = [json.loads(x) for x in p.communicate(timeout=30)[0].splitlines() if '"kind":"call"' in x]
            calls[function] = call
        return calls, printed
    finally:
        run.stop()


def _args(call: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {a["name"]: (a["type"], a["value"]) for a in call["args"]}


def test_c_floats_are_shown_as_not_captured_and_the_integers_around_them_right(
        coral_env: CoralEnv, agent: Process, tmp_path: Path) -> None:
    src, binary = tmp_path / "floats.c", tmp_path / "floats"
    src.write_text(C)
    subprocess.run(["gcc", "-g", "-O1", "-o", str(binary), str(src)], check=True)
    calls, printed = one_call_each(coral_env, binary, ["fee", "scale", "tipped", "total", "wide", "widen", "many"],
                                    "100")
    assert printed == "55 250.0 10.0 107 105 150.0 122\n"
    assert _args(calls["fee"]) == {"rate": ("double", XMM), "cents": ("long int", "100"), "tip": ("money", XMM),
                                   "f": ("float", XMM), "n": ("int", "3")}
    assert calls["fee"]["return_value"]["value"] == "55"
    assert _args(calls["scale"]) == {"cents": ("long int", "100"), "by": ("double", XMM)}
    assert (calls["scale"]["return_value"]["type"], calls["scale"]["return_value"]["value"]) == ("double", XMM)
    assert (calls["tipped"]["return_value"]["type"], calls["tipped"]["return_value"]["value"]) == ("money", XMM)
    # In memory, through the pointer: copied at the return (items was 2).
    (o,) = calls["total"]["args"]
    assert o["value"].startswith("0x") and o["value"].endswith(" {cents=100, rate=1.5, share=0.25, items=3}"), o
    # A long double is passed on the stack, read there as it was at the entry; returned in st(0), it is not read.
    assert _args(calls["wide"]) == {"x": ("long double", "2.5"), "n": ("long int", "100")}
    assert calls["widen"]["return_value"]["value"] == XMM
    # Past the six integer registers, on the stack (8 bytes each): g and i; h in XMM0.
    assert _args(calls["many"]) == {"a": ("long int", "1"), "b": ("long int", "2"), "c": ("long int", "3"),
                                    "d": ("long int", "4"), "e": ("long int", "5"), "f": ("long int", "6"),
                                    "g": ("int", "-7"), "h": ("double", XMM), "i": ("long int", "100")}
    assert calls["many"]["return_value"]["value"] == "122"


def test_rust_f32_and_f64_take_no_integer_register(coral_env: CoralEnv, agent: Process, tmp_path: Path) -> None:
    src, binary = tmp_path / "rate.rs", tmp_path / "rate"
    src.write_text(RUST)
    subprocess.run(["rustc", "-g", "-C", "opt-level=0", "-o", str(binary), str(src)], check=True)
    calls, printed = one_call_each(coral_env, binary, ["rate::rate"], "100")
    assert printed == "50.25\n"
    assert _args(calls["rate::rate"]) == {"x": ("f64", XMM), "n": ("i64", "100"), "y": ("f32", XMM)}
    assert (calls["rate::rate"]["return_value"]["type"], calls["rate::rate"]["return_value"]["value"]) == ("f64", XMM)


def test_system_v_stack_arguments_are_laid_out_after_the_return_address() -> None:
    """Past six integer registers and eight XMM registers, in order, 8 bytes
    each, a long double in 16 at a multiple of 16; after a value of two
    registers that did not fit, the places are not known."""
    def arg(name: str, type_name: str) -> pb.ArgumentMetadata:
        return pb.ArgumentMetadata(name=name, type=type_name)

    ints = [arg(f"r{i}", "long int") for i in range(5)]
    meta = pb.FunctionMetadata(kind="native", source_file="x.c", arguments=[
        *ints, arg("x", "long double"), arg("g", "int"), arg("p", "char *"),
        *(arg(f"d{i}", "double") for i in range(9)), arg("s", "&str"), arg("k", "long int")])
    placed = {s.name: (s.shape, s.regs, s.offset) for s in abi.argument_layout(meta)}
    assert placed["r4"] == ("int", (4,), -1)
    assert placed["x"] == ("stack", (), 0)  # 16 bytes
    assert placed["g"] == ("int", (5,), -1)  # the sixth register is still free
    assert placed["p"] == ("stack", (), 16)
    assert placed["d7"] == ("float", (), -1) and placed["d8"] == ("stack", (), 24)  # the ninth double
    assert placed["s"][0] == "unsupported" and placed["k"] == ("stack", (), -1)  # after s, not known
    assert abi.stack_bytes(meta, 128) == 32
    data = struct.pack("<QH6x", 0xA000000000000000, 16384) + (0x1234).to_bytes(8, "little") + struct.pack("<d", -0.5)
    shown = {s.name: showvalues.show(s, (0,) * 9, {}, stack=data) for s in abi.argument_layout(meta)}
    assert (shown["x"], shown["p"], shown["d8"], shown["k"]) == ("2.5", "0x1234", "-0.5", "(not captured: on the stack)")
