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
