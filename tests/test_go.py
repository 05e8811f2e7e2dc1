"""Go done right: no uretprobes (they crash Go when goroutine stacks move);
a probe on every RET, calls paired by goroutine. Thousands of goroutines
whose stacks grow while the probe is attached: nothing crashes, every call
is counted, durations are sane, arguments come from Go's register ABI."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from coral.agentd import abi, showvalues, where_native
from coral.elfinfo import ElfFunctions
from coral.proto import coral_pb2 as pb
from coral.redact import Rules
from tests.harness import REPO, CoralEnv, Process, build_go, coralctl, go_build, kernel_probes, tool

GOROUTINES = 4000
DEPTH = 6  # validate recurses: 7 probed calls per goroutine, 512-byte frames


@pytest.fixture
def go_binary(go: str, tmp_path: Path) -> Path:
    return go_build(go, REPO / "examples" / "go" / "payments.go", tmp_path / "payments", tmp_path)


def test_go_function_under_thousands_of_growing_goroutines(
    coral_env: CoralEnv, full_speed_agent: Process, go_binary: Path
) -> None:
    run = Process("run-go", [tool("coral-run"), "--service", "gopay", "--", str(go_binary), str(DEPTH)], coral_env,
                  stdin=subprocess.PIPE).wait_ready()
    try:
        attach = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "gopay",
                                   "--function", "main.validate", "--duration", "8s", "--capture-args",
                                   "--capture-return"], env=coral_env.env, stdout=subprocess.PIPE, text=True)
        assert attach.stdout is not None and run.proc.stdin is not None and run.proc.stdout is not None
        session = json.loads(attach.stdout.readline())
        assert session["kind"] == "session"
        # Entry plus one probe per RET instruction, and no uretprobe anywhere.
        (child,) = session["pids"]
        ours = [line for line in kernel_probes().splitlines() if f"/proc/{child}/exe" in line]
        assert session["probes"] >= 2 and len(ours) == session["probes"]
        assert not any("uretprobe" in line for line in ours)

        run.proc.stdin.write(f"{GOROUTINES}\n".encode())
        run.proc.stdin.flush()
        assert run.proc.stdout.readline().decode().strip() == f"done {GOROUTINES}"
        out, _ = attach.communicate(timeout=60)
        lines = [json.loads(line) for line in out.splitlines()]
        calls = GOROUTINES * (DEPTH + 1)
        summary = lines[-1]
        assert summary["calls"] == calls, summary
        stored = [e for e in lines if e.get("kind") == "call"]
        assert len(stored) + summary["lost"].get("ringbuf_full", 0) == calls
        assert all(0 < e["duration_ns"] < 5_000_000_000 for e in stored)
        assert {a["name"] for a in stored[0]["args"]} == {"card", "amount", "deep"}
        # Each call has its arguments and its result: the innermost call
        # (deep=0) returns (amount, nil), or (-1, error) above 1000.
        innermost = [c for c in stored if c["args"][2]["value"] == "0"]
        assert innermost
        for ret in innermost:
            amount = int(ret["args"][1]["value"])
            value, err = ret["return_value"]["value"].split(", ")
            assert ret["return_value"]["type"] == "int, error"
            if amount > 1000:
                assert value == "-1" and err != "nil" and ret["return_value"]["is_error"]
            else:
                assert (value, err) == (str(amount), "nil") and not ret["return_value"]["is_error"]
        assert run.proc.poll() is None  # the Go program is alive
        got = coralctl(coral_env, "--local", "ping", "--output", "json")
        counters = json.loads(got.stdout)["counters"]
        assert counters.get("kernel.unpaired_returns", 0) == 0 and counters.get("kernel.stack_full", 0) == 0
    finally:
        if run.proc.stdin:
            run.proc.stdin.close()  # the program exits at end of input, and coral-run with it
        assert run.proc.wait(30) == 0
        run.stop()


VALUES = r"""
// Each input line N: N calls of charge() with a string, a byte slice and a pointer.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

type Card struct {
	Number string
	Cents  int
}

//go:noinline
func charge(name string, data []byte, c *Card, n int) (int, error) {
	return n + len(name) + len(data) + c.Cents, nil
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	card := &Card{"4111", 5}
	for in.Scan() {
		n, _ := strconv.Atoi(strings.TrimSpace(in.Text()))
		sum := 0
		for i := 0; i < n; i++ {
			v, _ := charge("alice", []byte("xy"), card, i)
			sum += v
		}
		fmt.Printf("done %d sum %d\n", n, sum)
	}
}
"""


def test_go_strings_slices_and_pointers_are_shown_by_their_go_types(coral_env: CoralEnv, agent: Process,
                                                                     go: str, tmp_path: Path) -> None:
    """DWARF names a Go string `string` and a slice `[]uint8` (structure
    types), a pointer `*main.Card`: they are placed in Go's registers and
    shown as values, not `(not captured)`."""
    binary = build_go(go, VALUES, tmp_path, "values")
    run = Process("run-values", [tool("coral-run"), "--service", "govalues", "--", str(binary)], coral_env,
                  stdin=subprocess.PIPE).wait_ready()
    try:
        attach = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "govalues",
                                   "--function", "main.charge", "--duration", "2s", "--capture-args",
                                   "--capture-return"], env=coral_env.env, stdout=subprocess.PIPE, text=True)
        assert attach.stdout is not None and run.proc.stdin is not None and run.proc.stdout is not None
        assert json.loads(attach.stdout.readline())["kind"] == "session"
        run.proc.stdin.write(b"3\n")
        run.proc.stdin.flush()
        assert run.proc.stdout.readline().decode().strip() == "done 3 sum 39"
        out, _ = attach.communicate(timeout=30)
        calls = [json.loads(line) for line in out.splitlines() if '"kind":"call"' in line]
        assert len(calls) == 3
        args = {a["name"]: (a["type"], a["value"]) for a in calls[2]["args"]}
        assert args["name"] == ("string", "'alice'")
        assert args["data"] == ("[]uint8", "[]uint8 len=2 cap=2 b'xy'")
        assert args["c"][0] == "*main.Card" and args["c"][1].startswith("0x")
        assert args["n"] == ("int", "2")  # in R9, the seventh of Go's nine registers: all nine are copied
        assert calls[2]["return_value"]["value"] == "14, nil"
    finally:
        run.stop()


STRUCTS = r"""
// Each input line N: one call of each function below, then "done N sum S".
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

type Cents int64
type ID string
type Flag bool

type Order struct {
	Cents Cents
	Note  string
	Items int
}

// Ten integers: more than Go's nine integer registers, so it goes on the stack.
type Ledger struct {
	A, B, C, D, E, F, G, H, I, J int
}

type Priced struct {
	Price float64 // in X0: it takes no integer register
	Qty   int32
	Inner struct{ X, Y int }
	Token ID
}

type Window [2]int // an array of two: on the stack

type Pair struct {
	Lo, Hi int32
}

// An array of two: on the stack, with a float that is read there.
type Quote struct {
	Lot   [2]int32
	Price float64
	Flag  bool
}

// Nine integers fill the registers: j, q and k go on the stack, each at its alignment (0, 8, 32).
//go:noinline
func crowd(a, b, c, d, e, f, g, h, i int, j int16, q Quote, k int8) int {
	s := a + b + c + d + e + f + g + h + i + int(j) + int(q.Lot[0]+q.Lot[1]) + int(q.Price) + int(k)
	if q.Flag {
		s++
	}
	return s
}

//go:noinline
func pay(o Order, tip Cents) Cents { return o.Cents + tip + Cents(o.Items) + Cents(len(o.Note)) }

//go:noinline
func label(id ID, urgent Flag, n int) int {
	if urgent {
		return len(id) + n
	}
	return n
}

//go:noinline
func settle(l Ledger, n int, who string) int { return l.A + l.J + n + len(who) }

//go:noinline
func price(p Priced, n int) int { return int(p.Qty) + p.Inner.X + n + len(p.Token) + int(p.Price) }

//go:noinline
func span(w Window, n int) int { return w[0] + w[1] + n }

// who in RAX, RBX; o in RCX, RDI, RSI, R8; last in R9, R10; k in R11: all nine registers.
//go:noinline
func spread(who string, o Order, last Pair, k int) int {
	return len(who) + int(o.Cents) + o.Items + len(o.Note) + int(last.Lo+last.Hi) + k
}

//go:noinline
func split(n int) (Pair, bool) { return Pair{int32(n), int32(2 * n)}, n > 0 }

type Label struct {
	Code ID
	N    int32
}

//go:noinline
func tag(n int) Label { return Label{"vip", int32(n % 7)} }

// Generic: its shape instance takes a dictionary first.
//go:noinline
func scale[T int | int64](a T, p Pair, b T) T { return a + b + T(p.Lo) + T(p.Hi) }

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		n, _ := strconv.Atoi(strings.TrimSpace(in.Text()))
		sum := int(pay(Order{Cents(n), "x", 3}, 5))
		sum += label("id-7", true, n)
		sum += settle(Ledger{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, n, "bob")
		sum += price(Priced{1.5, 2, struct{ X, Y int }{7, 8}, "t0k"}, n)
		sum += span(Window{4, 6}, n)
		sum += spread("bob", Order{Cents(n), "x", 3}, Pair{4, 9}, 11)
		sum += crowd(1, 2, 3, 4, 5, 6, 7, 8, n, -2, Quote{[2]int32{3, 4}, 2.5, true}, 7)
		p, ok := split(n)
		if ok {
			sum += int(p.Lo + p.Hi)
		}
		sum += scale(n, Pair{2, 5}, 3)
		l := tag(n)
		sum += len(l.Code) + int(l.N)
		fmt.Printf("done %d sum %d\n", n, sum)
	}
}
"""


def calls_of_each(coral_env: CoralEnv, service: str, functions: tuple[str, ...], run: Process, line: str,
                  expected: str) -> dict[str, dict[str, Any]]:
    """Attach to each function (arguments and results), send one input
    line, check the program's answer, and return each function's one call.
    The sessions are detached once the calls are made, not left to expire:
    attaches one after the other can take longer than a short session on a
    busy machine."""
    attaches, ids = {}, []
    try:
        for name in functions:  # one after the other: coral-run answers one metadata request at a time
            attach = attaches[name] = subprocess.Popen(
                [tool("coralctl"), "--local", "--output", "json", "debug", "attach", service, "--function",
                 f"main.{name}", "--duration", "120s", "--capture-args", "--capture-return"],
                env=coral_env.env, stdout=subprocess.PIPE, text=True)
            assert attach.stdout is not None
            first = json.loads(attach.stdout.readline())
            assert first["kind"] == "session", first
            ids.append(first["session_id"])
        assert run.proc.stdin is not None and run.proc.stdout is not None
        run.proc.stdin.write(line.encode() + b"\n")
        run.proc.stdin.flush()
        assert run.proc.stdout.readline().decode().strip() == expected
    finally:
        for session_id in ids:
            detached = coralctl(coral_env, "--local", "debug", "detach", session_id)
            assert detached.returncode == 0, detached.stderr
    calls = {}
    for name, attach in attaches.items():
        out, _ = attach.communicate(timeout=30)
        (calls[name],) = [json.loads(row) for row in out.splitlines() if '"kind":"call"' in row]
    return calls


def test_go_structs_by_value_and_named_types_are_shown_as_go_means_them(
        coral_env: CoralEnv, agent: Process, go: str, tmp_path: Path) -> None:
    """A struct passed by value is shown field by field from the registers
    Go's ABI gives them, and the arguments after it from theirs; a named
    type by the type it is defined as; a struct that goes on the stack (too
    many registers, or an array in it) says so, and the arguments after it
    still take registers; floats take none of the integer registers. The
    program computes the same with the probes attached."""
    binary = build_go(go, STRUCTS, tmp_path, "structs")
    # The generic's shape instance: main.scale[go.shape.int_0] (Go 1.19), main.scale[go.shape.int] (1.27)
    (generic,) = ElfFunctions.load(str(binary)).names("main.scale[[]go.shape.int*")
    functions = ("pay", "label", "settle", "price", "span", "spread", "crowd", "split", "tag", generic.removeprefix("main."))
    run = Process("run-structs", [tool("coral-run"), "--service", "gostructs", "--", str(binary)], coral_env,
                  stdin=subprocess.PIPE).wait_ready()
    try:
        # pay 109, label 104, settle 114, price 113, span 110, spread 131, crowd 151, split 300, scale 110, tag 5
        calls = {name: ({a["name"]: (a["type"], a["value"]) for a in call["args"]},
                        (call["return_value"]["type"], call["return_value"]["value"]))
                 for name, call in calls_of_each(coral_env, "gostructs", functions, run, "100",
                                                 "done 100 sum 1247").items()}

        assert calls["pay"] == ({"o": ("main.Order", "{Cents=100, Note='x', Items=3}"), "tip": ("main.Cents", "5")},
                                ("main.Cents", "109"))
        assert calls["label"] == ({"id": ("main.ID", "'id-7'"), "urgent": ("main.Flag", "true"), "n": ("int", "100")},
                                  ("int", "104"))
        # On the stack (ten integers do not fit in nine registers): read there, as it was at the entry.
        assert calls["settle"] == ({"l": ("main.Ledger", "{A=1, B=2, C=3, D=4, E=5, F=6, G=7, H=8, I=9, J=10}"),
                                    "n": ("int", "100"), "who": ("string", "'bob'")}, ("int", "114"))
        # Price in X0; Qty in RAX, Inner in RBX and RCX, Token in RDI and RSI (redacted by its name); n in R8.
        assert calls["price"] == ({"p": ("main.Priced", "{Price=(not captured), Qty=2, Inner=(not captured), "
                                          "Token=<redacted>}"), "n": ("int", "100")}, ("int", "113"))
        assert calls["span"] == ({"w": ("main.Window", "[4, 6]"), "n": ("int", "100")}, ("int", "110"))
        # Past the nine registers: an int16, a struct holding an array (its float read from the stack) and an
        # int8, each at its offset after the return address.
        crowd_args, crowd_result = calls["crowd"]
        assert [v for _, v in crowd_args.values()][:9] == ["1", "2", "3", "4", "5", "6", "7", "8", "100"]
        assert {k: crowd_args[k] for k in "jqk"} == {
            "j": ("int16", "-2"), "q": ("main.Quote", "{Lot=(not captured), Price=2.5, Flag=true}"), "k": ("int8", "7")}
        assert crowd_result == ("int", "151")
        # R9, R10 and R11 too: Go's nine integer registers are all copied.
        assert calls["spread"] == ({"who": ("string", "'bob'"), "o": ("main.Order", "{Cents=100, Note='x', Items=3}"),
                                    "last": ("main.Pair", "{Lo=4, Hi=9}"), "k": ("int", "11")}, ("int", "131"))
        assert calls["split"] == ({"n": ("int", "100")}, ("main.Pair, bool", "{Lo=100, Hi=200}, true"))
        # A result's string field is copied at the return, as a string result is.
        assert calls["tag"] == ({"n": ("int", "100")}, ("main.Label", "{Code='vip', N=2}"))
        # The dictionary in RAX, listed by Go 1.27's DWARF and not by 1.19's: the values after it either way.
        args, result = calls[generic.removeprefix("main.")]
        assert args.pop(".dict")[1].startswith("0x")
        assert {k: v for k, (_, v) in args.items()} == {"a": "100", "p": "{Lo=2, Hi=5}", "b": "3"}
        assert args["a"][0] == generic.removeprefix("main.scale[").removesuffix("]")  # T by its shape: go.shape.int
        assert result[1] == "110"
        assert run.proc.poll() is None
        # Where it is declared, as listed: Go 1.19 gives no DW_AT_decl_line, the line program does.
        line = STRUCTS.split("\n").index(next(t for t in STRUCTS.split("\n") if t.startswith("func pay("))) + 1
        elf = ElfFunctions.load(str(binary))
        info = elf.function("main.pay")
        assert info is not None and (info.source_file, info.source_line) == ("structs.go", line)
        assert elf.locations(["main.pay"]) == [f"structs.go:{line}"]
    finally:
        run.stop()


def _struct(*widths: int) -> pb.GoValueMetadata:
    return pb.GoValueMetadata(underlying="struct", int_registers=sum(widths), fields=[
        pb.GoFieldMetadata(name=f"F{i}", type="int", underlying="int", int_registers=w) for i, w in enumerate(widths)])


def test_go_register_assignment_follows_the_abi_when_registers_run_out() -> None:
    """Nine integer registers, all copied: a struct in the sixth to ninth
    shows all its fields; one that does not fit in the registers left
    goes on the stack, and the next argument takes the next register."""
    one = pb.GoValueMetadata(underlying="int", int_registers=1)
    meta = pb.FunctionMetadata(kind="go", arguments=[
        pb.ArgumentMetadata(name="a", type="int", go=one),
        pb.ArgumentMetadata(name="s", type="main.S", go=_struct(1, 1, 1, 1, 1, 1)),  # RBX..R9
        pb.ArgumentMetadata(name="t", type="main.T", go=_struct(1, 1, 1)),  # two left of nine: on the stack
        pb.ArgumentMetadata(name="b", type="int", go=one),  # R10: not copied
        pb.ArgumentMetadata(name="c", type="string", go=pb.GoValueMetadata(underlying="string", int_registers=2)),
        pb.ArgumentMetadata(name="d", type="int", go=one),  # R11, c did not fit
    ])
    layout = abi.argument_layout(meta)
    assert [(s.name, s.shape, s.regs) for s in layout] == [
        ("a", "int", (0,)), ("s", "struct", (1, 2, 3, 4, 5, 6)), ("t", "stack", ()), ("b", "int", (7,)),
        ("c", "stack", ()), ("d", "int", (8,))]
    values = (10, 11, 12, 13, 14, 15, 16, 17, 18)
    assert showvalues.show(layout[1], values, {}) == "{F0=11, F1=12, F2=13, F3=14, F4=15, F5=16}"
    assert (showvalues.show(layout[3], values, {}), showvalues.show(layout[5], values, {})) == ("17", "18")
    assert showvalues.show(layout[2], values, {}) == "(not captured: on the stack)"


def test_a_go_named_integer_is_filtered_as_the_integer_it_is() -> None:
    """`--where 'tip>3'` on `tip Cents` (type Cents int32): compared in the
    kernel at 32 bits, signed, in the register after a struct of two."""
    meta = pb.FunctionMetadata(kind="go", arguments=[
        pb.ArgumentMetadata(name="o", type="main.Order", go=_struct(1, 2)),
        pb.ArgumentMetadata(name="tip", type="main.Cents", go=pb.GoValueMetadata(underlying="int32", int_registers=1)),
    ])
    program = where_native.compile_condition("tip > 3", meta, Rules(()))
    assert program is not None
    term = program.terms[0]
    assert (term.when, term.kind, term.reg, term.width, term.signed, term.value) == (
        where_native.W_ENTRY, where_native.WK_INT, 3, 4, True, 3)
    assert (term.op, term.negate) == (where_native.W_GT, False)


def test_go_stack_arguments_are_laid_out_as_the_abi_does_and_read_from_the_copied_bytes() -> None:
    """Past the nine registers each value goes on the stack at its
    alignment, in order; a struct or an array is shown from the bytes the
    entry copied, a float as its number; a value whose size is not known
    (metadata without sizes) leaves the ones after it unplaced."""
    one = pb.GoValueMetadata(underlying="int", int_registers=1, size=8, align=8)
    quote = pb.GoValueMetadata(underlying="struct", stack_only=True, size=24, align=8, fields=[
        pb.GoFieldMetadata(name="Lot", type="[2]int32", underlying="[2]int32", offset=0, size=8),
        pb.GoFieldMetadata(name="Price", type="float64", underlying="float64", float_registers=1, offset=8, size=8),
        pb.GoFieldMetadata(name="Card", type="int", underlying="int", int_registers=1, offset=16, size=8)])
    window = pb.GoValueMetadata(underlying="[2]int", stack_only=True, size=16, align=8, fields=[
        pb.GoFieldMetadata(name=str(i), type="int", underlying="int", int_registers=1, offset=8 * i, size=8)
        for i in range(2)])
    meta = pb.FunctionMetadata(kind="go", arguments=[
        *(pb.ArgumentMetadata(name=f"r{i}", type="int", go=one) for i in range(9)),
        pb.ArgumentMetadata(name="j", type="int16", go=pb.GoValueMetadata(underlying="int16", int_registers=1,
                                                                           size=2, align=2)),
        pb.ArgumentMetadata(name="empty", type="struct {}", go=pb.GoValueMetadata(underlying="struct", align=1)),
        pb.ArgumentMetadata(name="q", type="main.Quote", go=quote),
        pb.ArgumentMetadata(name="w", type="main.Window", go=window),
        pb.ArgumentMetadata(name="old", type="main.Old", go=pb.GoValueMetadata(underlying="struct", stack_only=True)),
        pb.ArgumentMetadata(name="k", type="int8", go=pb.GoValueMetadata(underlying="int8", int_registers=1,
                                                                          size=1, align=1)),
    ])
    layout = {s.name: s for s in abi.argument_layout(meta)}
    assert [(n, layout[n].offset) for n in ("j", "q", "w", "old", "k")] == [
        ("j", 0), ("q", 8), ("w", 32), ("old", -1), ("k", -1)]
    assert abi.stack_bytes(meta, 128) == 48 and abi.stack_bytes(meta, 40) == 40
    data = (b"\xfe\xff" + bytes(6) + bytes(8) + struct.pack("<d", 2.5) + (4111).to_bytes(8, "little")
            + (4).to_bytes(8, "little") + (6).to_bytes(8, "little"))
    redact = lambda name, text: "<redacted>" if name == "Card" else text  # noqa: E731
    shown = {n: showvalues.show(layout[n], (0,) * 9, {}, redact=redact, stack=data) for n in ("j", "q", "w", "old", "k")}
    assert shown == {"j": "-2", "q": "{Lot=(not captured), Price=2.5, Card=<redacted>}", "w": "[4, 6]",
                     "old": "(not captured: on the stack)", "k": "(not captured: on the stack)"}
    # Copied only in part (the first 40 bytes): what lies past them is not shown.
    assert showvalues.show(layout["w"], (0,) * 9, {}, stack=data[:40]) == "[4, ?]"
    assert showvalues.show(layout["q"], (0,) * 9, {}, stack=b"") == "(not captured: on the stack)"
