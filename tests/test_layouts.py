"""The ring buffer's records and the SDK's call record are declared once,
in C (bpf/coral_records.h, bpf/coral_call.h); Python decodes them with
formats read from those declarations (coral/layouts.py). gcc, given the
same headers, must agree on every size and offset."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from coral.agentd import abi
from coral.layouts import LayoutError, read_layouts
from tests.harness import REPO

HEADER = REPO / "bpf" / "coral_records.h"


def compiler_layouts(tmp_path: Path, structs: dict[str, list[str]], str_max: int) -> dict[str, int]:
    """sizeof and offsetof as gcc sees them: 'struct' and 'struct.member' -> bytes."""
    lines = ["#include <stdio.h>", "#include <stddef.h>",
             "typedef unsigned int u32; typedef int s32; typedef unsigned long long u64; typedef long long s64;",
             f"#define CORAL_STR_MAX {str_max}", '#include "coral_records.h"', "int main(void) {"]
    for name, members in structs.items():
        lines.append(f'    printf("{name} %zu\\n", sizeof(struct {name}));')
        lines += [f'    printf("{name}.{m} %zu\\n", offsetof(struct {name}, {m}));' for m in members]
    lines += ["    return 0;", "}"]
    src, exe = tmp_path / "layouts.c", tmp_path / "layouts"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{HEADER.parent}", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {key: int(value) for key, value in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("str_max", [64, 40, 7])  # [sessions] string_bytes changes the native record
def test_every_record_decodes_as_the_compiler_lays_it_out(tmp_path: Path, str_max: int) -> None:
    layouts = read_layouts(HEADER, {"CORAL_STR_MAX": str_max})
    assert set(layouts) == {"coral_call", "native_event", "native_go_tail", "native_go_event", "native_timing_event",
                            "python_event", "python_timing_event", "stack_head", "stack_walk_event",
                            "stack_copy_event", "py_stack"}
    gcc = compiler_layouts(tmp_path, {name: [m.name for m in lay.members] for name, lay in layouts.items()}, str_max)
    for name, lay in layouts.items():
        assert lay.size == gcc[name] == lay.struct.size, name
        assert [(m.name, m.offset) for m in lay.members] == [(m.name, gcc[f"{name}.{m.name}"]) for m in lay.members]
    native = layouts["native_event"]
    assert native.member("strs").size == 2 * str_max
    values = native.struct.unpack(bytes(native.size))
    # Go's nine integer result registers (System V's RAX and RDX are the first two): three in every native
    # record, the other six and Go's stack results only in a Go call's, which is the native record and its tail.
    tail, go = layouts["native_go_tail"], layouts["native_go_event"]
    more = tail.struct.unpack(bytes(tail.size))
    assert len(values[native.values("results")]) + len(more[tail.values("results")]) == abi.GO_RESULT_REGS
    assert len(values[native.values("strs")]) == 2
    assert tail.member("stack_ret").size == abi.STACK_RESULT_BYTES
    assert go.member("e").offset == 0 and go.member("go").offset == native.size and go.size == native.size + tail.size
    assert f"#define CORAL_FROM_STACK {abi.FROM_STACK}\n" in HEADER.read_text()  # a string's pointer on the stack
    # Go's nine integer argument registers are all copied; System V's six are the first of them.
    assert len(values[native.values("args")]) == abi.GO_INT_REGS > abi.CAPTURED_ARG_REGS
    assert layouts["native_timing_event"].size == 32  # a timing-only call stays this small


def test_a_header_outside_what_it_reads_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h"
    bad.write_text("struct ok { u32 a; };\nstruct odd { float x; };\n")
    with pytest.raises(LayoutError, match=r"bad.h: struct odd: type 'float' is not one this module reads"):
        read_layouts(bad)
    bad.write_text("struct sized { char name[NAME_MAX]; };\n")
    with pytest.raises(LayoutError, match=r"array size NAME_MAX is not a #define"):
        read_layouts(bad)
    bad.write_text("struct outer { struct inner i; };\n")
    with pytest.raises(LayoutError, match=r"struct inner is not defined before it"):
        read_layouts(bad)
    with pytest.raises(LayoutError, match=r"cannot read .*missing.h"):
        read_layouts(tmp_path / "missing.h")
