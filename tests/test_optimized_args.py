"""Arguments of optimized code are read where DWARF says they are at the
function's first instruction, not where the ABI's order would put them.
rustc at opt-level 2 drops an argument the function does not use, and
the pointer of a `&str` whose bytes it does not read: `pick(unused, who,
n)` gets who's length in RDI and n in RSI. By the ABI's order n would be
read from RCX (whatever was there); by DWARF's location lists it is
right, and the parts that are nowhere are not captured, never shown as
another argument's value."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness import CoralEnv, Process
from tests.test_float_values import one_call_each

RUST = r"""
use std::io::BufRead;
#[inline(never)]
fn pick(_unused: i64, who: &str, n: i64) -> usize { who.len() * 2 + n as usize }
fn main() {
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let (who, n) = line.rsplit_once(' ').unwrap();
        let n: i64 = n.parse().unwrap();
        println!("{}", pick(n * 3, who, n));
    }
}
"""


@pytest.mark.parametrize("opt", ["0", "2"])
def test_rust_arguments_are_read_where_dwarf_places_them(coral_env: CoralEnv, agent: Process, tmp_path: Path,
                                                         opt: str) -> None:
    src, binary = tmp_path / "pick.rs", tmp_path / f"pick{opt}"
    src.write_text(RUST)
    subprocess.run(["rustc", "-g", "-C", f"opt-level={opt}", "-o", str(binary), str(src)], check=True)
    calls, printed = one_call_each(coral_env, binary, ["pick::pick"], "alice 4")
    assert printed == "14\n"
    args = {a["name"]: a["value"] for a in calls["pick::pick"]["args"]}
    if opt == "0":  # every argument passed as the ABI says (and DWARF's places are the stack's, after the prologue)
        assert args == {"_unused": "12", "who": "'alice'", "n": "4"}
    else:  # _unused and who's pointer are gone; who's length is in RDI, where the ABI would put _unused
        assert args == {"_unused": "(not captured)", "who": "(not captured)", "n": "4"}
    assert calls["pick::pick"]["return_value"]["value"] == "14"


WIDE = r"""
use std::io::BufRead;
#[inline(never)]
fn wide(a: i64, b: i64, c: i64, d: i64, e: i64, f: i64, g: i64, h: i64) -> i64 {
    a ^ b.wrapping_mul(3) ^ c ^ d.rotate_left(3) ^ e ^ f ^ g.wrapping_mul(5) ^ h
}
#[inline(never)]
fn wide_unused(_u: i64, a: i64, b: i64, c: i64, d: i64, e: i64, f: i64, g: i64) -> i64 {
    a + b * 2 + c * 3 + d * 4 + e * 5 + f * 6 + g * 7
}
#[inline(never)]
fn wide_calls(a: i64, b: i64, c: i64, d: i64, e: i64, f: i64, g: i64, h: i64) -> i64 {
    let v: Vec<i64> = vec![a, b, c, d, e, f, g, h];
    let s: i64 = v.iter().sum();
    println!("sum {}", s);
    s + g * 100 + h
}
fn main() {
    for line in std::io::stdin().lock().lines() {
        let n: i64 = line.unwrap().trim().parse().unwrap();
        let x = wide(n, n + 1, n + 2, n + 3, n + 4, n + 5, n + 6, n + 7);
        let y = wide_unused(n * 9, n + 21, n + 22, n + 23, n + 24, n + 25, n + 26, n + 27);
        let z = wide_calls(n, n + 1, n + 2, n + 3, n + 4, n + 5, n + 6, n + 7);
        println!("{} {} {}", x, y, z);
    }
}
"""


@pytest.mark.parametrize("opt", ["0", "2"])
def test_rust_stack_arguments_are_read_where_dwarf_places_them(coral_env: CoralEnv, agent: Process, tmp_path: Path,
                                                               opt: str) -> None:
    """Eight integers: the last two are passed on the stack. rustc at
    opt-level 2 places them relative to RSP (its frame base), in the body's
    frame: past the six pushes and the locals of wide_calls, at the entry's
    RSP in the leaf wide. wide_unused loses its unused first argument, so
    the others move up a register and its last is the only one on the stack,
    right past the return address, where the ABI's order would put the one
    before it (and where the ABI's next place holds what wide's h left)."""
    src, binary = tmp_path / "wide.rs", tmp_path / f"wide{opt}"
    src.write_text(WIDE)
    subprocess.run(["rustc", "-g", "-C", f"opt-level={opt}", "-o", str(binary), str(src)], check=True)
    calls, printed = one_call_each(coral_env, binary, ["wide::wide", "wide::wide_unused", "wide::wide_calls"], "10")
    assert printed == "sum 108\n"
    values = {f: {a["name"]: a["value"] for a in c["args"]} for f, c in calls.items()}
    eight = {name: str(10 + i) for i, name in enumerate("abcdefgh")}
    assert values["wide::wide"] == eight
    assert values["wide::wide_calls"] == eight
    assert values["wide::wide_unused"] == {"_u": "90" if opt == "0" else "(not captured)",
                                           **{name: str(31 + i) for i, name in enumerate("abcdefg")}}
    assert [calls[f]["return_value"]["value"] for f in ("wide::wide", "wide::wide_unused", "wide::wide_calls")] == \
        ["15", "980", "1725"]
