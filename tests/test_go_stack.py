"""Go values that travel on the stack, shown as the same values in
registers are: strings, []byte, errors and interfaces passed on the stack
(more arguments than Go's nine integer registers), results past RAX, RBX
and RCX, and results Go returns on the stack (too many, or a struct or
array it cannot assign to registers), read at the RET from the caller's
result area after the stack arguments. Built with each Go toolchain the
tests use; the program's output is unchanged with the probes attached."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from coral.agentd import abi, showvalues, where_native
from coral.daemon.errors import InvalidArgument
from coral.proto import coral_pb2 as pb
from coral.redact import Rules
from tests.harness import CoralEnv, Process, build_go, tool
from tests.test_go import calls_of_each

STACKVALS = r"""
package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Ten integers: more than Go's nine integer registers.
type Big struct {
	A, B, C, D, E, F, G, H, I, J int
}

// Nine integers fill the registers: who, tags, err and extra go on the stack, at 0, 16, 40 and 56.
//go:noinline
func crowded(a, b, c, d, e, f, g, h, i int, who string, tags []byte, err error, extra any) int {
	s := a + b + c + d + e + f + g + h + i + len(who) + len(tags)
	if err != nil {
		s++
	}
	if extra != nil {
		s--
	}
	return s
}

// Five results: RAX, RBX, RCX, RDI, RSI.
//go:noinline
func five(n int) (int, int, int, int, int) { return n, n + 1, n + 2, n + 3, n + 4 }

// A string result in RDI and RSI.
//go:noinline
func late(n int) (int, int, int, string) { return n, 2, 3, "tail" }

// Ten integers do not fit in nine registers: returned on the stack; the string after it in RAX and RBX.
//go:noinline
func ledger(n int) (Big, string) { return Big{n, 2, 3, 4, 5, 6, 7, 8, 9, 10}, "ok" }

// Nine integers fill the result registers: the string and the error are returned on the stack, at 0 and 16.
//go:noinline
func full(n int) (int, int, int, int, int, int, int, int, int, string, error) {
	return 1, 2, 3, 4, 5, 6, 7, 8, n, "late", errors.New("no")
}

// j and who on the stack (24 bytes); the result w after them, on the stack (an array of two), n in RAX.
//go:noinline
func both(a, b, c, d, e, f, g, h, i int, j int16, who string) (w [2]int, n int) {
	return [2]int{i, len(who) + int(j) + 4}, a + g - 1
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		n, _ := strconv.Atoi(strings.TrimSpace(in.Text()))
		tags := make([]byte, 3, 8)
		copy(tags, "vip")
		sum := crowded(1, 2, 3, 4, 5, 6, 7, 8, n, "bob", tags, errors.New("declined"), nil)
		a, b, c, d, e := five(n)
		sum += a + b + c + d + e
		x, _, _, t := late(n)
		sum += x + len(t)
		big, ok := ledger(n)
		sum += big.A + big.J + len(ok)
		_, _, _, _, _, _, _, _, i, s, err := full(n)
		sum += i + len(s)
		if err != nil {
			sum++
		}
		w, m := both(1, 2, 3, 4, 5, 6, 7, 8, n, -2, "bob")
		sum += w[0] + w[1] + m
		fmt.Printf("done %d sum %d\n", n, sum)
	}
}
"""


def test_go_strings_errors_and_results_on_the_stack_are_shown_as_in_registers(
        coral_env: CoralEnv, agent: Process, go: str, tmp_path: Path) -> None:
    """Nine integers, then a string, a []byte, an error and a nil `any` on
    the stack: each shown as it would be in registers. Five results: RDI
    and RSI too. A struct of ten integers, and a string and an error past
    nine integer results, returned on the stack; an array result after
    stack arguments, at the first multiple of 8 past them."""
    binary = build_go(go, STACKVALS, tmp_path, "stackvals")
    run = Process("run-stackvals", [tool("coral-run"), "--service", "gostack", "--", str(binary)], coral_env,
                  stdin=subprocess.PIPE).wait_ready()
    try:
        calls = calls_of_each(coral_env, "gostack", ("crowded", "five", "late", "ledger", "full", "both"), run, "100",
                       "done 100 sum 1086")
        args = {n: {a["name"]: (a["type"], a["value"]) for a in c["args"]} for n, c in calls.items()}
        ret = {n: c["return_value"] for n, c in calls.items()}

        crowded = args["crowded"]
        assert [v for _, v in crowded.values()][:9] == ["1", "2", "3", "4", "5", "6", "7", "8", "100"]
        assert crowded["who"] == ("string", "'bob'")
        assert crowded["tags"] == ("[]uint8", "[]uint8 len=3 cap=8 b'vip'")
        # An error on the stack is named by its itab (the binary's own bytes); its message is not read there.
        assert crowded["err"][0] == "error" and re.fullmatch(r"<error \*errors\.errorString 0x[0-9a-f]+>",
                                                              crowded["err"][1]), crowded["err"]
        assert crowded["extra"] == ("interface {}", "nil")
        assert (ret["crowded"]["type"], ret["crowded"]["value"]) == ("int", "143")

        assert (ret["five"]["type"], ret["five"]["value"]) == ("int, int, int, int, int", "100, 101, 102, 103, 104")
        assert (ret["late"]["type"], ret["late"]["value"]) == ("int, int, int, string", "100, 2, 3, 'tail'")
        assert (ret["ledger"]["type"], ret["ledger"]["value"]) == (
            "main.Big, string", "{A=100, B=2, C=3, D=4, E=5, F=6, G=7, H=8, I=9, J=10}, 'ok'")
        full = ret["full"]
        assert full["type"] == "int, int, int, int, int, int, int, int, int, string, error"
        head, err = full["value"].rsplit(", ", 1)
        assert head == "1, 2, 3, 4, 5, 6, 7, 8, 100, 'late'" and re.fullmatch(r"<error \*errors\.errorString 0x[0-9a-f]+>",
                                                                              err), err
        assert full["is_error"] and full["error_message"] == err
        assert args["both"]["j"] == ("int16", "-2") and args["both"]["who"] == ("string", "'bob'")
        assert (ret["both"]["type"], ret["both"]["value"]) == ("[2]int, int", "[100, 5], 7")
        assert run.proc.poll() is None
    finally:
        run.stop()


def _int(name: str) -> pb.ReturnValueMetadata:
    return pb.ReturnValueMetadata(name=name, type="int", go=pb.GoValueMetadata(underlying="int", int_registers=1,
                                                                               size=8, align=8))


def test_go_stack_results_are_placed_after_the_stack_arguments() -> None:
    """The result area begins at the first multiple of 8 past the stack
    arguments; results that do not fit in nine registers go there in order,
    each at its alignment. With an argument whose place is not known, the
    stack results are not placed (shown as not captured), never guessed."""
    def arg(name: str, go: pb.GoValueMetadata) -> pb.ArgumentMetadata:
        return pb.ArgumentMetadata(name=name, type=go.underlying, go=go)
    word = pb.GoValueMetadata(underlying="int", int_registers=1, size=8, align=8)
    short = pb.GoValueMetadata(underlying="int16", int_registers=1, size=2, align=2)
    text = pb.GoValueMetadata(underlying="string", int_registers=2, size=16, align=8)
    results = [_int(f"r{i}") for i in range(9)] + [
        pb.ReturnValueMetadata(name="s", type="string", go=text), _int("k")]
    meta = pb.FunctionMetadata(kind="go", arguments=[arg(f"a{i}", word) for i in range(9)] + [arg("j", short)],
                               return_values=results)
    layout = {s.name: s for s in abi.result_layout(meta)}
    assert [layout[f"r{i}"].regs for i in range(9)] == [(i,) for i in range(9)]
    assert (layout["s"].shape, layout["s"].offset, layout["k"].offset) == ("stack", 0, 16)
    assert abi.result_stack(meta) == (8, 24)  # j's two bytes, rounded up to 8
    assert abi.record_slots(meta, False, True).str_result == (abi.FROM_STACK + 0, 0)
    data = (0x5000).to_bytes(8, "little") + (3).to_bytes(8, "little") + (-7).to_bytes(8, "little", signed=True)
    strings = {abi.FROM_STACK: b"abc"}
    assert showvalues.show(layout["s"], (0,) * 9, strings, stack=data) == "'abc'"
    assert showvalues.show(layout["s"], (0,) * 9, {}, stack=data) == "0x5000"  # bytes not copied: the address
    assert showvalues.show(layout["k"], (0,) * 9, {}, stack=data) == "-7"
    lost = pb.FunctionMetadata(kind="go", arguments=[arg(f"a{i}", word) for i in range(9)] + [
        pb.ArgumentMetadata(name="old", type="main.Old", go=pb.GoValueMetadata(underlying="struct", stack_only=True))],
        return_values=results)
    assert {s.name: s.offset for s in abi.result_layout(lost) if s.shape == "stack"} == {"s": -1, "k": -1}
    assert abi.result_stack(lost) == (0, 0)


def test_go_strings_on_the_stack_are_copied_at_the_entry_and_shown_cut_as_in_registers() -> None:
    """A string and a []byte past the nine registers take the record's two
    string slots, copied at the entry through the stack words (a held
    string whose object is the stack arguments); a string longer than the
    bytes copied is shown cut, with how many more bytes it has; a third
    string is shown as its address."""
    word = pb.GoValueMetadata(underlying="int", int_registers=1, size=8, align=8)
    text = pb.GoValueMetadata(underlying="string", int_registers=2, size=16, align=8)
    raw = pb.GoValueMetadata(underlying="[]uint8", int_registers=3, size=24, align=8)
    meta = pb.FunctionMetadata(kind="go", arguments=[pb.ArgumentMetadata(name=f"a{i}", type="int", go=word)
                                                     for i in range(9)] + [
        pb.ArgumentMetadata(name="who", type="string", go=text), pb.ArgumentMetadata(name="tags", type="[]uint8", go=raw),
        pb.ArgumentMetadata(name="note", type="string", go=text)])
    slots = abi.record_slots(meta, True, False)
    assert slots.str_args == (-1, -1)
    assert slots.held_args == ((abi.FROM_STACK, 0, 8), (abi.FROM_STACK, 16, 24))
    assert abi.stack_bytes(meta, 128) == 56
    words = [0x7000, 100, 0x8000, 3, 8, 0x9000, 2]
    stack = b"".join(w.to_bytes(8, "little") for w in words)
    strings = slots.strings_of_args((b"x" * 64, b"vip" + b"\0" * 61), 0, (100, 3))
    layout = {s.name: s for s in abi.argument_layout(meta)}
    shown = {n: showvalues.show(layout[n], (0,) * 9, strings, stack=stack) for n in ("who", "tags", "note")}
    assert shown == {"who": "'" + "x" * 64 + "'…(+36 bytes)", "tags": "[]uint8 len=3 cap=8 b'vip'", "note": "0x9000"}
    unread = slots.strings_of_args((b"x" * 64, b"vip"), 0b10, (100, 3))  # the []byte's page was not in memory
    assert showvalues.show(layout["tags"], (0,) * 9, unread, stack=stack) == "0x8000"


def test_a_condition_on_a_go_result_past_rcx_is_refused_by_name() -> None:
    """The kernel's conditions read RAX, RBX and RCX at a return: an error
    in RDI and RSI is shown in the record, but `err != nil` on it is
    refused, saying why."""
    word = pb.GoValueMetadata(underlying="int", int_registers=1, size=8, align=8)
    err = pb.GoValueMetadata(underlying="interface", int_registers=2, size=16, align=8)
    meta = pb.FunctionMetadata(kind="go", arguments=[pb.ArgumentMetadata(name="n", type="int", go=word)],
                               return_values=[_int("a"), _int("b"), _int("c"),
                                              pb.ReturnValueMetadata(name="err", type="error", go=err)])
    assert [s.regs for s in abi.result_layout(meta)] == [(0,), (1,), (2,), (3, 4)]
    with pytest.raises(InvalidArgument, match="err is in a register a condition cannot read"):
        where_native.compile_condition("err != nil", meta, Rules(()))
