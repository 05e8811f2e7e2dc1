"""A Go `error` result shown with its message: the RET copies the string
an error's object keeps first, and the agent names the concrete type from
the itab the error's first word points at (the binary's `go:itab.T,error`
symbols) and shows the copied string only for the types that keep their
whole message there (errors.New, fmt.Errorf with and without %w). Any other
type is named and shown as its address, never with a guessed text. Built
with each Go toolchain the tests use."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from coral import goitabs
from coral.agentd import abi, showvalues
from coral.goitabs import GoBinary
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, Process, build_go, tool
from tests.test_go import calls_of_each

ERRORS = r"""
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

var errMissing = errors.New("file not found")

// Its first field is a string, but not its message: shown by its type only.
type NotFound struct {
	Name string
	Code int
}

func (e *NotFound) Error() string { return "no " + e.Name }

//go:noinline
func open(n int) (int, error) { return n + 1, errMissing }

//go:noinline
func load(n int) error { return fmt.Errorf("loading %d: %w", n, errMissing) }

//go:noinline
func parse(n int) error { return fmt.Errorf("bad input %d", n) }

//go:noinline
func find(n int) error { return &NotFound{Name: "card-" + strconv.Itoa(n), Code: n} }

//go:noinline
func fine(n int) (int, error) { return n * 2, nil }

//go:noinline
func long(n int) error {
	return fmt.Errorf("%d: %s", n, strings.Repeat("x", 100))
}

// Nine integers fill the result registers: the error is returned on the stack.
//go:noinline
func crowd(n int) (int, int, int, int, int, int, int, int, int, error) {
	return 1, 2, 3, 4, 5, 6, 7, 8, n, fmt.Errorf("crowded %d", n)
}

// A card number in a message is redacted as in any value.
//go:noinline
func charge(n int) error { return fmt.Errorf("card 4111111111111111 declined (%d)", n) }

// Errors passed in registers: each one's message copied at the entry, in a string slot of its own.
//go:noinline
func blame(n int, first error, second error, none error) int {
	if first != nil && second != nil && none == nil {
		return n + 2
	}
	return n
}

// A string result takes the record's string slot: the error is named, not read.
//go:noinline
func both(n int) (string, error) { return "half", fmt.Errorf("second %d", n) }

func main() {
	errs := []error{}
	_, e := open(0)
	errs = append(errs, e, load(0), parse(0), find(0), long(0))
	_, e = fine(0)
	errs = append(errs, e)
	for _, e := range errs {
		fmt.Fprint(io.Discard, e)  // the messages' pages are in memory before the probes read them
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		n, _ := strconv.Atoi(strings.TrimSpace(in.Text()))
		count := 0
		a, e1 := open(n)
		_, e2 := fine(n)
		s, e3 := both(n)
		_, _, _, _, _, _, _, _, _, e4 := crowd(n)
		loaded, found := load(n), find(n)
		for _, e := range []error{e1, loaded, parse(n), found, e2, long(n), e3, e4, charge(n)} {
			if e != nil {
				count++
			}
		}
		count += blame(n, loaded, found, nil) - n
		fmt.Printf("done %d errors %d %d %s\n", n, count, a, s)
	}
}
"""

_ADDRESS = r"0x[0-9a-f]+"


def test_go_errors_show_their_message_when_their_type_keeps_it_first(
        coral_env: CoralEnv, agent: Process, go: str, tmp_path: Path) -> None:
    """errors.New and fmt.Errorf (with and without %w) show their message
    and type; a long one is cut at the bytes copied, with how many more it
    has; one returned on the stack (after nine integers) is read there; a
    card number in one is redacted; a custom error type whose first field
    is a string is named and shown as its address; nil is nil and not an
    error; with a string result in the slot, the error is named only. A
    non-nil error marks the call as an error, with the same text."""
    binary = build_go(go, ERRORS, tmp_path, "goerrors")
    run = Process("run-goerrors", [tool("coral-run"), "--service", "goerrors", "--", str(binary)], coral_env,
                  stdin=subprocess.PIPE).wait_ready()
    try:
        calls = calls_of_each(coral_env, "goerrors", ("open", "load", "parse", "find", "fine", "long", "both", "crowd",
                                                      "charge", "blame"), run, "100", "done 100 errors 10 101 half")
        ret = {n: c["return_value"] for n, c in calls.items()}
        assert (ret["open"]["type"], ret["open"]["value"]) == ("int, error", "101, error(*errors.errorString) 'file not found'")
        assert ret["load"]["value"] == "error(*fmt.wrapError) 'loading 100: file not found'"
        assert ret["parse"]["value"] == "error(*errors.errorString) 'bad input 100'"
        assert re.fullmatch(rf"<error \*main\.NotFound {_ADDRESS}>", ret["find"]["value"]), ret["find"]
        assert (ret["fine"]["value"], ret["fine"]["is_error"], ret["fine"]["error_message"]) == ("200, nil", False, "")
        shown = 63  # the slot's 64 bytes, read as a C string's: one kept for its NUL
        assert ret["long"]["value"] == f"error(*errors.errorString) '100: {'x' * (shown - 5)}'…(+{105 - shown} bytes)"
        head, err = ret["both"]["value"].split(", ", 1)
        assert head == "'half'" and re.fullmatch(rf"<error \*errors\.errorString {_ADDRESS}>", err), ret["both"]
        assert ret["crowd"]["value"] == "1, 2, 3, 4, 5, 6, 7, 8, 100, error(*errors.errorString) 'crowded 100'"
        assert ret["charge"]["value"] == "error(*errors.errorString) 'card <redacted> declined (100)'"
        blamed = {a["name"]: (a["type"], a["value"]) for a in calls["blame"]["args"]}
        assert blamed["n"] == ("int", "100") and blamed["none"] == ("error", "nil")
        assert blamed["first"] == ("error", "error(*fmt.wrapError) 'loading 100: file not found'")
        assert blamed["second"][0] == "error" and re.fullmatch(rf"<error \*main\.NotFound {_ADDRESS}>", blamed["second"][1])
        for name in ("open", "load", "parse", "find", "long", "both", "crowd", "charge"):
            assert ret[name]["is_error"], (name, ret[name])
            assert ret[name]["error_message"] == ret[name]["value"].split(", ")[-1], (name, ret[name])
        assert run.proc.poll() is None
    finally:
        run.stop()


def test_a_position_independent_go_binary_names_its_errors_at_its_load_address(
        coral_env: CoralEnv, agent: Process, go: str, tmp_path: Path) -> None:
    """Built with -buildmode=pie, the binary is loaded at an address of the
    kernel's choosing: an itab the process holds is found in the file at
    that address less the load bias (the file keeps its link-time
    addresses in the itab's words)."""
    binary = build_go(go, ERRORS, tmp_path, "goerrors-pie", ("-buildmode=pie",))
    run = Process("run-goerrors-pie", [tool("coral-run"), "--service", "goerrors-pie", "--", str(binary)], coral_env,
                  stdin=subprocess.PIPE).wait_ready()
    try:
        calls = calls_of_each(coral_env, "goerrors-pie", ("open", "find"), run, "7", "done 7 errors 10 8 half")
        assert calls["open"]["return_value"]["value"] == "8, error(*errors.errorString) 'file not found'"
        assert re.fullmatch(rf"<error \*main\.NotFound {_ADDRESS}>", calls["find"]["return_value"]["value"])
    finally:
        run.stop()


def _error_result(name: str = "err") -> pb.ReturnValueMetadata:
    return pb.ReturnValueMetadata(name=name, type="error", go=pb.GoValueMetadata(underlying="error", int_registers=2,
                                                                                 size=16, align=8))


def test_a_go_error_takes_a_free_string_slot_through_its_data_word() -> None:
    """The error's data word (its second register) is where the RET reads
    the object holding the message (a string: pointer at 0, length at 8);
    one returned on the stack, through its word there; a string result
    comes first. An error argument in registers takes a slot the string
    arguments leave, copied at the entry through its data word."""
    number = pb.ReturnValueMetadata(name="n", type="int", go=pb.GoValueMetadata(underlying="int", int_registers=1,
                                                                               size=8, align=8))
    meta = pb.FunctionMetadata(kind="go", return_values=[number, _error_result()])
    slots = abi.record_slots(meta, False, True)
    assert (slots.str_result, slots.held_result) == ((2, 0), abi.ERROR_MESSAGE)  # RBX: itab, RCX: data word
    text = pb.ReturnValueMetadata(name="s", type="string", go=pb.GoValueMetadata(underlying="string", int_registers=2,
                                                                                size=16, align=8))
    first = abi.record_slots(pb.FunctionMetadata(kind="go", return_values=[text, _error_result()]), False, True)
    assert (first.str_result, first.held_result) == ((0, 0), None)
    crowded = pb.FunctionMetadata(kind="go", return_values=[number] * 9 + [_error_result()])
    assert abi.record_slots(crowded, False, True).str_result == (abi.FROM_STACK + 8, 0)  # its data word, on the stack
    word = pb.GoValueMetadata(underlying="int", int_registers=1, size=8, align=8)
    err = pb.GoValueMetadata(underlying="error", int_registers=2, size=16, align=8)
    chars = pb.GoValueMetadata(underlying="string", int_registers=2, size=16, align=8)
    takes = pb.FunctionMetadata(kind="go", arguments=[
        pb.ArgumentMetadata(name="who", type="string", go=chars), pb.ArgumentMetadata(name="n", type="int", go=word),
        pb.ArgumentMetadata(name="a", type="error", go=err), pb.ArgumentMetadata(name="b", type="error", go=err)])
    # who in RAX, RBX (slot 0, read at the return); n in RCX; a in RDI, RSI: its data word RSI (args[4]), slot 1.
    assert abi.record_slots(takes, True, False).held_args == ((-1, 0, 0), (4, *abi.ERROR_MESSAGE))
    c = pb.FunctionMetadata(kind="c", return_values=[pb.ReturnValueMetadata(name="", type="int")])
    assert abi.error_result(c) == -1


def test_a_go_error_is_shown_by_its_itab_never_with_a_guessed_text() -> None:
    """Only a type known to keep its whole message first shows the copied
    bytes; an itab not in the binary's table, another interface, or an
    object that could not be read are shown as before."""
    (slot,) = abi.result_layout(pb.FunctionMetadata(kind="go", return_values=[_error_result()]))
    types = {0x4000: "*errors.errorString", 0x5000: "*main.NotFound", 0x6000: "*fmt.wrapErrors"}
    strings, lengths = {1: b"declined"}, {1: 8}
    assert showvalues.show(slot, (0x4000, 0xC000), strings, lengths=lengths, error_types=types) == \
        "error(*errors.errorString) 'declined'"
    assert showvalues.show(slot, (0x6000, 0xC000), {1: b"two of them"}, lengths={1: 30}, error_types=types) == \
        "error(*fmt.wrapErrors) 'two of them'…(+19 bytes)"
    assert showvalues.show(slot, (0x5000, 0xC000), strings, lengths=lengths, error_types=types) == \
        "<error *main.NotFound 0xc000>"
    assert showvalues.show(slot, (0x7000, 0xC000), strings, lengths=lengths, error_types=types) == "<error 0xc000>"
    assert showvalues.show(slot, (0x4000, 0xC000), {}, error_types=types) == "<error *errors.errorString 0xc000>"
    assert showvalues.show(slot, (0x4000, 0xC000), strings, lengths={1: abi.UNREADABLE_OBJECT},
                           error_types=types) == "<error *errors.errorString 0xc000>"
    assert showvalues.show(slot, (0, 0), strings, lengths=lengths, error_types=types) == "nil"
    (stacked,) = [r for r in abi.result_layout(pb.FunctionMetadata(kind="go", return_values=[
        pb.ReturnValueMetadata(name=f"r{i}", type="int", go=pb.GoValueMetadata(underlying="int", int_registers=1,
                                                                               size=8, align=8))
        for i in range(9)] + [_error_result()])) if r.type == "error"]
    words = (0x4000).to_bytes(8, "little") + (0xC000).to_bytes(8, "little")
    key = abi.FROM_STACK + 8  # the data word's offset in the stack results
    assert showvalues.show(stacked, (0,) * 9, {key: b"late"}, lengths={key: 4}, stack=words, error_types=types) == \
        "error(*errors.errorString) 'late'"
    assert showvalues.show(stacked, (0,) * 9, {}, stack=words, error_types=types) == "<error *errors.errorString 0xc000>"
    other = abi.Slot("x", "interface {}", "iface", (0, 1), True)
    assert showvalues.show(other, (0x4000, 0xC000), strings, lengths=lengths, error_types=types) == \
        "<interface {} 0xc000>"


def _image(path: Path) -> GoBinary:
    """A file laid out as a Go binary's type data: names at 0x100.., type
    descriptors at 0x400.., itabs at 0x800.. (one segment at 0x1000)."""
    data = bytearray(0x1000)

    def name(at: int, text: bytes) -> int:
        data[at:at + 2 + len(text)] = bytes([0, len(text)]) + text
        return at

    def descriptor(at: int, name_at: int, tflag: int = 0) -> int:
        data[at + 20] = tflag
        data[at + 40:at + 44] = name_at.to_bytes(4, "little", signed=True)
        return 0x1000 + at

    error_t = descriptor(0x400, name(0x100, b"error"))
    stringer = descriptor(0x440, name(0x110, b"fmt.Stringer"))
    concrete = descriptor(0x480, name(0x130, b"*errors.errorString"))
    starred = descriptor(0x4C0, name(0x150, b"*main.Code"), goitabs.TFLAG_EXTRA_STAR)  # main.Code, by value
    broken = descriptor(0x500, 0xF00)  # its name runs past the file's bytes
    data[0xF00:0xF02] = bytes([0, 0x7F])
    for at, (inter, typ) in enumerate([(error_t, concrete), (stringer, concrete), (error_t, starred),
                                       (error_t, broken)]):
        data[0x800 + 16 * at:0x810 + 16 * at] = inter.to_bytes(8, "little") + typ.to_bytes(8, "little")
    path.write_bytes(bytes(data))
    return GoBinary(str(path), ((0x1000, len(data), 0),), 0x1000)


def test_an_itab_names_its_concrete_type_only_when_read_whole_and_for_error(tmp_path: Path) -> None:
    """The concrete type's name from its descriptor (a `*` the flags say is
    not part of it dropped); an itab of another interface, a name not in
    the file's bytes, or an address the file does not hold name nothing.
    Addresses are the process's: the load bias is taken off first."""
    types = goitabs.ErrorTypes(_image(tmp_path / "image"), bias=0x5000)
    assert types.get(0x6800) == "*errors.errorString"
    assert types.get(0x6810) is None  # fmt.Stringer's itab
    assert types.get(0x6820) == "main.Code"
    assert types.get(0x6830) is None
    assert types.get(0x1800) is None and types.get(0x9000) is None  # not in the file at that bias
    assert dict(types) == {0x6800: "*errors.errorString", 0x6820: "main.Code"}
