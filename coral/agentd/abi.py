"""Where arguments and results live in registers, from DWARF types.

System V AMD64 (C, C++, Rust): integers and pointers in RDI, RSI, RDX, RCX,
R8, R9; the result in RAX. Go >= 1.17 (ABIInternal, amd64): integers in
RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11, a string taking two (pointer,
length), a slice three, an interface or error two (type, data); results
likewise from RAX. Floating point travels in XMM registers, which a uprobe
cannot read: such values are shown as not captured.

The BPF program copies the first six registers of the ABI's list (args[0..5])
and three result registers; indexes here are into those."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coral.agentd.values import format_register
from coral.proto import coral_pb2 as pb

CAPTURED_ARG_REGS = 6
CAPTURED_RESULT_REGS = 3
C_STRING_TYPES = {"char *", "const char *", "unsigned char *", "const unsigned char *"}
GO_SCALARS = {"int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64", "uintptr",
              "bool", "byte", "rune"}
FLOAT_TYPES = {"float", "double", "long double", "float32", "float64", "complex64", "complex128"}


@dataclass(frozen=True)
class Slot:
    name: str
    type: str
    shape: str  # int | cstring | gostring | goslice | iface | fat | float | unsupported
    regs: tuple[int, ...]
    go: bool = False


def _shape(type_name: str, go: bool) -> tuple[str, int]:
    t = type_name.strip()
    if t in FLOAT_TYPES:
        return "float", 0
    if go:
        if t == "string":
            return "gostring", 2
        if t.startswith("[]"):
            return "goslice", 3
        if t == "error" or t.startswith("interface"):
            return "iface", 2
        if t in GO_SCALARS or t.startswith(("*", "map[", "chan ", "func(", "unsafe.Pointer")):
            return "int", 1
        return "unsupported", 0  # arrays, structs, named types (which may be structs)
    if t in ("&str", "&mut str"):
        return "gostring", 2  # Rust: a pointer and a length, in two registers, as a Go string
    if t.startswith(("&", "*const ", "*mut ")) and ("[" in t or "dyn " in t):
        return "fat", 2  # Rust: a slice (pointer, length) or a trait object (pointer, vtable)
    if t.startswith(("struct", "union")) and " *" not in t and " &" not in t:
        return "unsupported", 0
    return ("cstring", 1) if t in C_STRING_TYPES else ("int", 1)


def layout(items: list[tuple[str, str]], go: bool, limit: int, first: int = 0) -> list[Slot]:
    """Assign registers in order from `first`; after a value we cannot
    place, the rest cannot be placed either."""
    out, reg, lost = [], first, False
    for name, type_name in items:
        shape, width = _shape(type_name, go)
        if lost or shape == "unsupported" or reg + width > limit:
            lost = lost or shape == "unsupported"
            out.append(Slot(name, type_name, "unsupported", (), go))
            continue
        out.append(Slot(name, type_name, shape, tuple(range(reg, reg + width)), go))
        reg += width
    return out


def argument_layout(meta: pb.FunctionMetadata) -> list[Slot]:
    items = [(a.name, a.type) for a in meta.arguments] or [(f"arg{i}", "") for i in range(CAPTURED_ARG_REGS)]
    return layout(items, meta.kind == "go", CAPTURED_ARG_REGS, first=int(meta.result_in_memory))


def result_layout(meta: pb.FunctionMetadata) -> list[Slot]:
    if meta.result_in_memory:  # RAX holds the address of the result, not its value
        return [Slot(r.name, r.type, "int", (0,)) for r in meta.return_values[:1]]  # shown as that address
    items = [(r.name, r.type) for r in meta.return_values if r.type != "void"]
    return layout(items, meta.kind == "go", CAPTURED_RESULT_REGS)


def string_registers(meta: pb.FunctionMetadata) -> tuple[int, int]:
    """The (at most two) argument registers holding string pointers, which
    the kernel follows and copies (bounded)."""
    regs = [s.regs[0] for s in argument_layout(meta) if s.shape in ("cstring", "gostring", "goslice") and s.regs][:2]
    padded = [*regs, -1, -1]
    return padded[0], padded[1]


def string_result_register(meta: pb.FunctionMetadata) -> int:
    """The result register holding a string pointer (C `char *`, Go
    `string` or `[]byte`: the first such result), which the kernel follows
    at return; -1 if none."""
    return next((s.regs[0] for s in result_layout(meta) if s.shape in ("cstring", "gostring", "goslice") and s.regs),
                -1)


@dataclass(frozen=True)
class RecordSlots:
    """What the record's two string slots hold, in this order: the string
    arguments, then a struct an argument points to, then the result's
    string; what does not fit is shown as an address."""

    str_args: tuple[int, int] = (-1, -1)  # argument registers whose strings go in slots 0 and 1
    blob: tuple[int, int, int] = (-1, 0, 0)  # (argument register, bytes, slot) of a struct it points to
    str_result: tuple[int, int] = (-1, 0)  # (result register, slot) whose string is copied at the return

    # Each takes the record's slots and its unread bits; what could not be
    # read is left out, and shown as the address.
    def strings_of_args(self, copied: tuple[bytes, ...], unread: int = 0) -> dict[int, bytes]:
        return {reg: copied[i].split(b"\0", 1)[0] for i, reg in enumerate(self.str_args)
                if reg >= 0 and not unread >> i & 1}

    def blob_of(self, copied: tuple[bytes, ...], unread: int = 0) -> bytes:
        reg, size, at = self.blob
        return copied[at][:size] if reg >= 0 and not unread >> at & 1 else b""

    def string_of_result(self, copied: tuple[bytes, ...], unread: int = 0) -> dict[int, bytes]:
        reg, at = self.str_result
        return {reg: copied[at].split(b"\0", 1)[0]} if reg >= 0 and not unread >> at & 1 else {}


def record_slots(meta: pb.FunctionMetadata, capture_args: bool, capture_return: bool,
                 slot_bytes: int = 64) -> RecordSlots:
    str_args = string_registers(meta) if capture_args else (-1, -1)
    used = sum(r >= 0 for r in str_args)
    blob = (-1, 0, 0)
    if capture_args and used < 2:
        for s, a in zip(argument_layout(meta), meta.arguments, strict=False):
            if a.fields and s.shape == "int" and s.regs:
                blob = (s.regs[0], min(slot_bytes, max(f.offset + f.size for f in a.fields)), used)
                used += 1
                break
    result = string_result_register(meta) if capture_return else -1
    return RecordSlots(str_args, blob, (result, used) if result >= 0 and used < 2 else (-1, 0))


def show_fields(address: int, fields: list[pb.FieldMetadata], blob: bytes, redact: Callable[[str, str], str],
                go: bool = False) -> str:
    """`0x7ffc… {cents=100, items=1, note=0x5612…}`: the members the kernel
    copied through the pointer (at the return), each redacted by its name."""
    if address == 0:
        return "NULL"
    if not blob:
        return f"{address:#x}"
    shown = []
    for f in fields:
        if f.offset + f.size > len(blob):
            shown.append(f"{f.name}=?")
            continue
        value = int.from_bytes(blob[f.offset:f.offset + f.size], "little")
        shown.append(f"{f.name}={redact(f.name, format_register(value, f.type, go))}")
    return f"{address:#x} {{{', '.join(shown)}}}"


def show(slot: Slot, values: tuple[int, ...], strings: dict[int, bytes], string_bytes: int = 64) -> str:
    """One value as text, from the captured registers (and copied strings)."""
    if slot.shape == "float":
        return "(in a floating-point register: not captured)"
    if slot.shape == "unsupported" or not slot.regs:
        return "(not captured)"
    v = [values[r] for r in slot.regs]
    if slot.shape == "fat":
        return f"{v[0]:#x} " + (f"vtable={v[1]:#x}" if "dyn " in slot.type else f"len={v[1]}")
    if slot.shape == "int":
        return format_register(v[0], slot.type, slot.go)
    if slot.shape == "iface":
        return "nil" if v[0] == 0 else f"<{slot.type} {v[1]:#x}>"
    if v[0] == 0:
        return "NULL" if slot.shape == "cstring" else ("nil" if slot.shape == "goslice" else '""')
    data = strings.get(slot.regs[0])
    if data is None:
        return f"{v[0]:#x}"
    if slot.shape == "cstring":
        # The kernel copies at most string_bytes including the NUL: a full copy may have been cut.
        cut = "…(truncated)" if len(data) >= string_bytes - 1 else ""
        return repr(data.decode(errors="replace")) + cut
    length = v[1]
    shown = data[:length]
    more = f"…(+{length - len(shown)} bytes)" if length > len(shown) else ""
    if slot.shape == "gostring":
        return repr(shown.decode(errors="replace")) + more
    return f"{slot.type} len={length} cap={v[2]} {shown!r}{more}" if slot.type in ("[]uint8", "[]byte") else \
        f"{slot.type} len={length} cap={v[2]}"
