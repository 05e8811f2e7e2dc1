"""Where arguments and results live in registers, from DWARF types.

System V AMD64 (C, C++, Rust): integers and pointers in RDI, RSI, RDX, RCX,
R8, R9; the result in RAX. Go >= 1.17 (ABIInternal, amd64): integers in
RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11, a string taking two (pointer,
length), a slice three, an interface or error two (type, data); results
likewise from RAX; a Go value is placed from what DWARF says of its type
(GoValueMetadata: a named type by the type it is defined as, a struct
passed by value field by field, what goes on the stack). Floating point
travels in XMM registers, which a uprobe cannot read: such values are
shown as not captured.

The BPF program copies the ABI's argument registers (args[0..8]: System V's
six, Go's nine; bpf/coral_records.h, CORAL_ARG_REGS) and three result
registers; indexes here are into those. Some values are placed from what
DWARF says of them rather than from their type's name: an object holding a
string (held_string: its register holds the object's address), a Rust enum
(variants), a typedef of a float (float_type), and, in optimized C, C++ and
Rust, an argument where DWARF's location list puts it at the entry
(entry_registers). What goes on the stack is placed at its offset after the
return address (Slot.offset). coral/agentd/showvalues.py turns them into text."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from coral.proto import coral_pb2 as pb

CAPTURED_ARG_REGS = 6  # System V: RDI, RSI, RDX, RCX, R8, R9
GO_INT_REGS = 9  # RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11: all copied (the record's args)
GO_FLOAT_REGS = 15  # X0-X14
MAX_SHOWN_FIELDS = 16  # of a Go struct passed by value
CAPTURED_RESULT_REGS = 3  # the result registers a kernel condition or key reads (--where, --count-by)
GO_RESULT_REGS = 9  # Go's results: RAX ... R11, all copied into the record at the RET
STACK_RESULT_BYTES = 128  # CORAL_STACK_RET_BYTES: a Go call's stack results read at its RET
FROM_STACK = 16  # CORAL_FROM_STACK (bpf/coral_records.h): a string's pointer in the stack, not a register
GO_STRING_KINDS = ("string", "[]uint8")  # on the stack: the bytes they point at are copied
C_STRING_TYPES = {"char *", "const char *", "unsigned char *", "const unsigned char *"}
GO_SCALARS = {"int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64", "uintptr",
              "bool", "byte", "rune"}
# Passed and returned in XMM registers (System V's SSE class, Go's floating-point registers, Rust's f32 and f64).
FLOAT_TYPES = {"float", "double", "float32", "float64", "complex64", "complex128", "f32", "f64", "_Float32", "_Float64",
               "_Float128", "__float128", "complex float", "complex double", "_Float16"}
# System V passes these in memory (the X87 class), on the stack: they take no register.
MEMORY_FLOAT_TYPES = {"long double", "complex long double", "_Float64x", "__float80"}


@dataclass(frozen=True)
class Slot:
    name: str
    type: str
    # int | cstring | gostring | goslice | iface | fat | float | held | variants | struct | stack | unsupported
    shape: str
    regs: tuple[int, ...]
    go: bool = False
    underlying: str = ""  # Go: the type it is defined as, which says how it is shown (type Cents int64: int64)
    fields: tuple[Slot, ...] = ()  # shape struct (Go, by value): its fields, each in its own registers
    held: tuple[int, int] = (0, 0)  # shape held: the offsets of the data pointer and the length in the object
    variants: Any = None  # shape variants: its pb.EnumMetadata
    pieces: tuple[int, ...] = ()  # shape variants: the enum's byte offset each of regs holds
    offset: int = -1  # shape stack: where it is in the stack arguments (bytes after the return address); -1: unknown
    size: int = 0  # shape stack: its bytes


STRING_SHAPES = ("cstring", "gostring", "goslice", "held")
# Go: where an error's object keeps its message, for the types that keep it whole as their first field, a string
# (data pointer, then length): *errors.errorString (errors.New; fmt.Errorf without %w) and fmt's *wrapError and
# *wrapErrors (fmt.Errorf with %w). Another type's first string (*fs.PathError's Op) is not its message.
ERROR_MESSAGE = (0, 8)
MESSAGE_FIRST_ERRORS = frozenset({"*errors.errorString", "*fmt.wrapError", "*fmt.wrapErrors"})
UNREADABLE_OBJECT = (1 << 64) - 1  # a held result's length when its object could not be read


def enum_pieces(v: pb.EnumMetadata) -> tuple[int, ...]:
    """The offsets in the enum that the result registers hold, in order, as
    rustc returns an enum of at most 16 bytes whose parts are at most two
    scalars: one scalar (a niche layout such as Option<&T>) in RAX; a tag
    and one payload, at most 8 bytes apart, in RAX and RDX (a scalar pair:
    each in its own register, whatever its offset, as LLVM returns
    {i32, i32}). () for any other layout: it is not shown rather than
    shown wrong."""
    parts = {(v.discriminant.offset, v.discriminant.size)}
    parts |= {(f.offset, f.size) for x in v.variants for f in x.payload if f.size}
    offsets = sorted({offset for offset, _ in parts})
    sizes = {offset: {size for o, size in parts if o == offset} for offset in offsets}
    if v.size > 16 or offsets[0] != 0 or len(offsets) > 2 or any(len(s) > 1 for s in sizes.values()):
        return ()
    if len(offsets) == 2 and (offsets[1] > 8 or offsets[1] < max(sizes[0])):
        return ()
    return tuple(offsets)


def _shape(type_name: str, go: bool, hint: Any = None) -> tuple[str, int]:
    t = type_name.strip()
    if isinstance(hint, pb.HeldStringMetadata):
        return "held", 1  # the register holds the object's address
    if isinstance(hint, pb.EnumMetadata):
        pieces = enum_pieces(hint)
        return ("variants", len(pieces)) if pieces else ("unsupported", 0)
    if t in FLOAT_TYPES:
        return "float", 0
    if t in MEMORY_FLOAT_TYPES and not go:
        return "stack", 0
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


SYSV_FLOAT_REGS = 8  # XMM0-XMM7
_STACK_SIZES = {"float": 4, "_Float32": 4, "f32": 4, "long double": 16, "_Float64x": 16, "__float80": 16,
                "complex long double": 32}


def layout(items: list[tuple[str, str, Any]], go: bool, limit: int, first: int = 0,
           on_stack: bool = False) -> list[Slot]:
    """Assign registers in order from `first`; after a value we cannot
    place, the rest cannot be placed either. Each item is (name, type, what
    DWARF says of its value: a HeldStringMetadata, an EnumMetadata, the
    floating-point type a typedef names, or None). With `on_stack` (System
    V arguments), what goes in memory is placed after the return address
    as the ABI lays it out: an integer or pointer past the six registers,
    a float or double past the eight XMM registers, each in 8 bytes; a long
    double in 16, at 16; a value of two or more registers that does not
    fit leaves the places after it unknown."""
    out, reg, lost, xmm = [], first, False, 0
    stack_at = 0 if on_stack else -1
    for name, type_name, hint in items:
        base = hint if isinstance(hint, str) and hint else type_name
        shape, width = _shape(base, go, hint)
        if shape == "float":
            xmm += 1
        to_stack = shape == "stack" or (on_stack and (
            (shape == "float" and xmm > SYSV_FLOAT_REGS) or (shape in ("int", "cstring") and reg + width > limit)))
        if to_stack and not lost and not go:
            size = _STACK_SIZES.get(base.strip(), 8)
            align = 16 if size >= 16 else 8
            if stack_at >= 0:
                stack_at = -(-stack_at // align) * align
            out.append(Slot(name, type_name, "stack", (), go, base.strip(), offset=stack_at, size=size))
            if stack_at >= 0:
                stack_at += -(-size // 8) * 8
            continue
        if shape == "float" or shape == "stack":
            out.append(Slot(name, type_name, shape, (), go))
            continue
        if lost or shape == "unsupported" or reg + width > limit:
            lost = lost or shape == "unsupported"
            if reg + width > limit:
                stack_at = -1  # a value of several parts in memory, or split: where the next ones go is not known
            out.append(Slot(name, type_name, "unsupported", (), go))
            continue
        regs = tuple(range(reg, reg + width))
        if isinstance(hint, pb.HeldStringMetadata):
            out.append(Slot(name, type_name, shape, regs, go, held=(hint.data_offset, hint.length_offset)))
        elif isinstance(hint, pb.EnumMetadata):
            out.append(Slot(name, type_name, shape, regs, go, variants=hint, pieces=enum_pieces(hint)))
        else:
            out.append(Slot(name, type_name, shape, regs, go))
        reg += width
    return out


def _go_slot(name: str, type_name: str, underlying: str, fields: Any, first: int, width: int, captured: int,
             in_struct: bool = False) -> Slot:
    """A Go value given `width` integer registers from `first`: shown by
    its underlying type; a struct's fields each in their own registers
    (one level deep: a struct in it is not shown). What lies in a
    register past the `captured` ones is not captured."""
    regs = tuple(range(first, first + width))
    if underlying == "struct" and not in_struct:
        parts, at = [], first
        for f in fields:
            parts.append(_go_slot(f.name, f.type, f.underlying, (), at, f.int_registers, captured, in_struct=True))
            at += f.int_registers
        return Slot(name, type_name, "struct", tuple(r for r in regs if r < captured), True, underlying,
                    fields=tuple(parts))
    shape, n = _shape(underlying, True)
    if shape == "float":
        return Slot(name, type_name, "unsupported" if in_struct else "float", (), True, underlying)
    if shape == "unsupported" or n != width or first + width > captured:
        return Slot(name, type_name, "unsupported", (), True, underlying)
    return Slot(name, type_name, shape, regs, True, underlying)


def _stack_fields(go: pb.GoValueMetadata) -> tuple[Slot, ...]:
    """A stack value's fields (a struct's, or an array's elements), each at
    its offset in the value (Slot.offset) and its size."""
    return tuple(Slot(f.name, f.type, "stack", (), True, f.underlying, offset=f.offset, size=f.size)
                 for f in go.fields)


def go_layout(items: list[tuple[str, str, pb.GoValueMetadata | None]], captured: int,
              on_stack: bool = False) -> list[Slot]:
    """Go's ABIInternal: each value in order takes the integer and
    floating-point registers its type needs (GoValueMetadata, from
    DWARF), unless it cannot be assigned to registers or does not fit in
    those left: then it goes on the stack, and the values after it still
    take registers. A value with no such metadata is placed by its type's
    name; after one that cannot be, the rest cannot be placed either.
    With `on_stack` (arguments), a stack value's place is worked out as
    the ABI lays them out after the return address: in order, each at its
    alignment (a zero-sized value too); a value whose size is not known
    (no metadata) leaves the ones after it unplaced."""
    out: list[Slot] = []
    ints, floats, lost = 0, 0, False
    stack_at = 0 if on_stack else -1  # where the next stack-assigned value goes; -1: unknown
    for name, type_name, go in items:
        if go is None:
            shape, width = _shape(type_name, True)
            lost = lost or shape == "unsupported"
            go = pb.GoValueMetadata(underlying=type_name, int_registers=width, float_registers=int(shape == "float"))
        if lost:
            out.append(Slot(name, type_name, "unsupported", (), True))
            continue
        sized = go.size > 0 or go.align > 0  # metadata that says where it lies in memory
        if sized and go.size == 0 and stack_at >= 0:  # a zero-sized value is assigned to the stack: its alignment
            stack_at = -(-stack_at // max(go.align, 1)) * max(go.align, 1)
        if go.stack_only or ints + go.int_registers > GO_INT_REGS or floats + go.float_registers > GO_FLOAT_REGS:
            if stack_at >= 0 and sized:
                stack_at = -(-stack_at // max(go.align, 1)) * max(go.align, 1)
                out.append(Slot(name, type_name, "stack", (), True, go.underlying, fields=_stack_fields(go),
                                offset=stack_at, size=go.size))
                stack_at += go.size
            else:
                stack_at = -1
                out.append(Slot(name, type_name, "stack", (), True, go.underlying))
            continue
        out.append(_go_slot(name, type_name, go.underlying, go.fields, ints, go.int_registers, captured))
        ints += go.int_registers
        floats += go.float_registers
    return out


def _go(value: pb.ArgumentMetadata | pb.ReturnValueMetadata) -> pb.GoValueMetadata | None:
    return value.go if value.HasField("go") else None


def _hint(value: pb.ArgumentMetadata | pb.ReturnValueMetadata) -> Any:
    if value.float_type:  # a typedef of a floating-point type: placed as that type
        return value.float_type
    if value.HasField("held_string"):
        return value.held_string
    if value.HasField("variants"):  # a Rust enum: its parts each in a register (Option, Result)
        return value.variants
    return None


# System V's argument registers by their DWARF numbers: RDI, RSI, RDX, RCX, R8, R9 (args[0..5]).
SYSV_DWARF_REGISTERS = {5: 0, 4: 1, 1: 2, 2: 3, 8: 4, 9: 5}
BY_ADDRESS = 1 << 16  # in entry_registers: the register holds the value's address (coral/dwarflocations.py)


def _on_stack(a: pb.ArgumentMetadata, offset: int) -> Slot:
    """An argument DWARF places `offset` bytes past the return address: a
    scalar, pointer or floating-point value read there, as layout places
    System V's stack arguments; anything of several parts is not captured."""
    hint = _hint(a)
    base = (hint if isinstance(hint, str) and hint else a.type).strip()
    shape, width = _shape(base, False, hint)
    if shape not in ("int", "cstring", "float", "stack") or width > 1:
        return Slot(a.name, a.type, "unsupported", ())
    return Slot(a.name, a.type, "stack", (), False, base, offset=offset, size=_STACK_SIZES.get(base, 8))


def _placed_by_dwarf(slots: list[Slot], meta: pb.FunctionMetadata) -> list[Slot]:
    """Where DWARF's location at the entry puts an argument (its
    entry_registers) wins over the ABI's order: an optimizer may have
    dropped an argument or the unused part of one. An argument with a part
    DWARF says is nowhere, or in a register the probe does not copy, is not
    captured; one DWARF does not place keeps the ABI's registers, unless
    DWARF gave them to another argument (then it is not captured). In
    optimized code, one DWARF places elsewhere or nowhere (entry_elsewhere)
    is not captured, unless the ABI puts it on the stack and DWARF puts
    every argument it places where the ABI does. One DWARF places in the
    caller's stack (entry_stack_offset) is read there; one the ABI puts on
    the stack and DWARF does not place is not captured if DWARF moved
    another argument."""
    out: list[Slot | None] = []
    claimed: set[int] = set()
    elsewhere = Slot("", "", "unsupported", ())  # marks an argument DWARF places elsewhere
    for s, a in zip(slots, meta.arguments, strict=True):
        if a.HasField("entry_stack_offset"):  # in the caller's stack: read there, at the offset DWARF gives
            out.append(_on_stack(a, a.entry_stack_offset))
            continue
        if not a.entry_registers:
            out.append(elsewhere if a.entry_elsewhere and s.shape != "float" else None)
            continue
        hint = _hint(a)
        shape, width = _shape(hint if isinstance(hint, str) and hint else a.type, False, hint)
        if shape == "float" or width == 0 or len(a.entry_registers) != width:
            out.append(s if shape == "float" else None)  # not something DWARF's registers say more of
            continue
        by_address = any(r >= BY_ADDRESS for r in a.entry_registers)
        regs = tuple(SYSV_DWARF_REGISTERS.get(r % BY_ADDRESS if by_address else r, -1) for r in a.entry_registers)
        if by_address and shape != "held":  # a value in memory: only an object read through its address is shown
            regs = (-1,)
        claimed.update(r for r in regs if r >= 0)
        if -1 in regs:
            out.append(Slot(s.name, s.type, "unsupported", ()))
        else:
            placed = layout([(a.name, a.type, hint)], False, CAPTURED_ARG_REGS)[0]
            out.append(replace(placed, regs=regs))
    # Memory the ABI's order places (System V's stack arguments) is trusted
    # only where DWARF put every other argument where the ABI does.
    agree = all(p is None or p is elsewhere or (p.regs == s.regs and (p.shape != "stack" or p.offset == s.offset))
                for s, p in zip(slots, out, strict=True))
    return [s if p is elsewhere and s.shape == "stack" and s.offset >= 0 and agree else
            Slot(s.name, s.type, "unsupported", ()) if p is elsewhere or (p is None and s.shape == "stack" and
                                                                          not agree) else
            p if p is not None else
            (Slot(s.name, s.type, "unsupported", ()) if claimed & set(s.regs) else s)
            for s, p in zip(slots, out, strict=True)]


def argument_layout(meta: pb.FunctionMetadata) -> list[Slot]:
    """Where each argument is. Without DWARF (no source file either), six
    registers named arg0..arg5; a function DWARF says takes none has none."""
    if not meta.arguments and meta.source_file:
        return []
    if meta.kind == "go" and meta.arguments:
        return go_layout([(a.name, a.type, _go(a)) for a in meta.arguments], GO_INT_REGS, on_stack=True)
    items: list[tuple[str, str, Any]] = [(a.name, a.type, _hint(a)) for a in meta.arguments] or \
        [(f"arg{i}", "", None) for i in range(CAPTURED_ARG_REGS)]
    slots = layout(items, meta.kind == "go", CAPTURED_ARG_REGS, first=int(meta.result_in_memory),
                   on_stack=bool(meta.arguments))
    return _placed_by_dwarf(slots, meta) if any(a.entry_registers or a.entry_elsewhere or
                                                a.HasField("entry_stack_offset") for a in meta.arguments) \
        else slots


def arguments_stack_end(meta: pb.FunctionMetadata) -> int:
    """Go: where the stack-assigned results begin, after the return
    address: past the stack-assigned arguments, at a multiple of 8
    (abi-internal.md); -1 if an argument's place on the stack is not known,
    or past what the kernel takes (16 bits: slot_config.ret_stack_off)."""
    stacked = [s for s in argument_layout(meta) if s.shape == "stack"]
    if any(s.offset < 0 for s in stacked):
        return -1
    end = -(-max((s.offset + s.size for s in stacked), default=0) // 8) * 8
    return end if end <= 0xFFFF else -1


def result_stack(meta: pb.FunctionMetadata) -> tuple[int, int]:
    """Go: (where the stack results begin after the return address, how
    many of their bytes the RET reads: at most STACK_RESULT_BYTES); (0, 0)
    for none, or none placed."""
    if meta.kind != "go":
        return 0, 0
    ends = [s.offset + s.size for s in result_layout(meta) if s.shape == "stack" and s.offset >= 0]
    start = arguments_stack_end(meta)
    if not ends or start < 0:
        return 0, 0
    return start, min(STACK_RESULT_BYTES, max(ends))


def result_layout(meta: pb.FunctionMetadata) -> list[Slot]:
    if meta.result_in_memory:  # RAX holds the address of the result, not its value
        return [Slot(r.name, r.type, "held", (0,), held=(r.held_string.data_offset, r.held_string.length_offset))
                if r.HasField("held_string") else Slot(r.name, r.type, "int", (0,))  # shown as that address
                for r in meta.return_values[:1]]
    if meta.kind == "go":
        # Results take registers from RAX again; those that do not fit go in
        # the caller's result area, each at its alignment (Slot.offset: from
        # the area's start, arguments_stack_end), placed only where that is known.
        slots = go_layout([(r.name, r.type, _go(r)) for r in meta.return_values], GO_RESULT_REGS, on_stack=True)
        if any(s.shape == "stack" for s in slots) and arguments_stack_end(meta) < 0:
            return [replace(s, offset=-1) if s.shape == "stack" else s for s in slots]
        return slots
    items = [(r.name, r.type, _hint(r)) for r in meta.return_values if r.type != "void"]
    # System V returns a long double in the x87 register st(0), not in memory.
    return [replace(s, shape="float") if s.shape == "stack" and s.underlying in MEMORY_FLOAT_TYPES else s
            for s in layout(items, meta.kind == "go", CAPTURED_RESULT_REGS)]


def _flat(slots: list[Slot]) -> list[Slot]:
    """The values, a Go struct's fields in its place."""
    return [x for s in slots for x in (s.fields if s.shape == "struct" else (s,))]


def _stack_strings(s: Slot, limit: int) -> list[Slot]:
    """A Go value on the stack that is a string or a []byte, or the fields
    of one that are (one level deep), each as a slot of shape \"gostack\" at
    its offset in the stack bytes: the words that hold its pointer and
    length lie in the first `limit` bytes copied."""
    if s.offset < 0:
        return []
    parts = [s] if not s.fields else [replace(f, offset=s.offset + f.offset) for f in s.fields[:MAX_SHOWN_FIELDS]]
    return [replace(p, shape="gostack", regs=(FROM_STACK + p.offset,)) for p in parts
            if (p.underlying or p.type) in GO_STRING_KINDS and p.offset % 8 == 0 and p.offset + 16 <= limit]


def _stringy(slots: list[Slot], limit: int) -> list[Slot]:
    """The values whose bytes the kernel may copy, in order: in registers
    (STRING_SHAPES), and Go's strings and []byte on the stack (shape
    gostack, regs: FROM_STACK plus the offset of the pointer's word)."""
    out = []
    for s in _flat(slots):
        if s.shape in STRING_SHAPES and s.regs:
            out.append(s)
        elif s.shape == "stack" and s.go:
            out.extend(_stack_strings(s, limit))
    return out


def string_arguments(meta: pb.FunctionMetadata, limit: int = 128) -> list[Slot]:
    """The (at most two) arguments whose strings the kernel copies (bounded):
    C strings and Go strings and slices (a Go struct's fields too) through
    their pointer register, strings held in objects through the object, Go
    strings and []byte on the stack (in the first `limit` bytes copied:
    CORAL_STACK_BYTES) through the stack at the entry."""
    return _stringy(argument_layout(meta), limit)[:2]


def string_result(meta: pb.FunctionMetadata) -> Slot | None:
    """The result whose string the kernel copies at the return (C `char *`,
    Go `string` or `[]byte`, also a Go struct's field, or one on the
    stack; a std::string or String returned through memory: the first such
    result); None if none."""
    return next(iter(_stringy(result_layout(meta), STACK_RESULT_BYTES)), None)


def error_result(meta: pb.FunctionMetadata) -> int:
    """Go: where the data word of the first `error` result is, the word
    through which the RET copies the string its object holds first
    (ERROR_MESSAGE: an *errors.errorString's message): its second register,
    or for one returned on the stack FROM_STACK plus the word's offset in
    the stack results (in the first STACK_RESULT_BYTES); -1 for none."""
    if meta.kind != "go":
        return -1
    for s in _flat(result_layout(meta)):
        if s.type == "error" and s.shape == "iface" and len(s.regs) == 2:
            return s.regs[1]
        if s.type == "error" and s.shape == "stack" and s.offset >= 0 and s.offset % 8 == 0 and \
                s.offset + 16 <= STACK_RESULT_BYTES:
            return FROM_STACK + s.offset + 8
    return -1


def error_arguments(meta: pb.FunctionMetadata) -> list[int]:
    """Go: the registers holding the data words of the `error` arguments
    passed in registers (a struct's fields too), in order."""
    if meta.kind != "go":
        return []
    return [s.regs[1] for s in _flat(argument_layout(meta))
            if s.type == "error" and s.shape == "iface" and len(s.regs) == 2]


def stack_bytes(meta: pb.FunctionMetadata, limit: int) -> int:
    """How many bytes after the return address hold the stack-assigned
    arguments that are placed (Go's, System V's; at most `limit`: what the
    record holds, CORAL_STACK_BYTES); 0 for none."""
    ends = [s.offset + s.size for s in argument_layout(meta) if s.shape == "stack" and s.offset >= 0]
    return min(limit, max(ends, default=0))


@dataclass(frozen=True)
class RecordSlots:
    """What the record's two string slots hold, in this order: the string
    arguments, then a struct an argument points to, then the result's
    string; what does not fit is shown as an address."""

    str_args: tuple[int, int] = (-1, -1)  # argument registers whose strings go in slots 0 and 1
    blob: tuple[int, int, int] = (-1, 0, 0)  # (argument register, bytes, slot) of a struct it points to
    str_result: tuple[int, int] = (-1, 0)  # (result register, slot) whose string is copied at the return
    # (argument register, data offset, length offset) of objects holding strings, into slots 0 and 1 at the entry
    held_args: tuple[tuple[int, int, int], tuple[int, int, int]] = ((-1, 0, 0), (-1, 0, 0))
    held_result: tuple[int, int] | None = None  # str_result's register holds such an object: its offsets

    # Each takes the record's slots and its unread bits; what could not be
    # read is left out, and shown as the address. A held string is its
    # first bytes (up to its length), not NUL-terminated.
    def strings_of_args(self, copied: tuple[bytes, ...], unread: int = 0,
                        lengths: tuple[int, ...] = (0, 0)) -> dict[int, bytes]:
        out = {reg: copied[i].split(b"\0", 1)[0] for i, reg in enumerate(self.str_args)
               if reg >= 0 and not unread >> i & 1}
        out.update({_held_key(h): copied[i][:lengths[i]] for i, h in enumerate(self.held_args)
                    if h[0] >= 0 and not unread >> i & 1})
        return out

    def lengths_of_args(self, lengths: tuple[int, ...]) -> dict[int, int]:
        return {_held_key(h): lengths[i] for i, h in enumerate(self.held_args) if h[0] >= 0}

    def length_of_result(self, lengths: tuple[int, ...]) -> dict[int, int]:
        reg, at = self.str_result
        return {reg: lengths[at]} if reg >= 0 and self.held_result is not None else {}

    def blob_of(self, copied: tuple[bytes, ...], unread: int = 0) -> bytes:
        reg, size, at = self.blob
        return copied[at][:size] if reg >= 0 and not unread >> at & 1 else b""

    def string_of_result(self, copied: tuple[bytes, ...], unread: int = 0,
                         lengths: tuple[int, ...] = (0, 0)) -> dict[int, bytes]:
        reg, at = self.str_result
        if reg < 0:
            return {}
        if self.held_result is not None:  # the kernel read its bytes as a C string's, then the object's length
            if lengths[at] == UNREADABLE_OBJECT:
                return {}
            kept = min(lengths[at], len(copied[at]) - 1)  # the read as a C string's keeps a byte for its NUL
            return {reg: b""} if lengths[at] == 0 else {} if unread >> at & 1 else {reg: copied[at][:kept]}
        return {} if unread >> at & 1 else {reg: copied[at].split(b"\0", 1)[0]}


def _held_key(held: tuple[int, int, int]) -> int:
    """The key of a held string's bytes: its register, or for a Go string
    on the stack FROM_STACK plus its offset (Slot.regs of shape gostack)."""
    reg, data, _ = held
    return FROM_STACK + data if reg == FROM_STACK else reg


def pointee_bytes(a: pb.ArgumentMetadata) -> int:
    """How many bytes through an argument's pointer show what it points
    to: the struct members it names (as far as the last one), or the Rust
    enum (as far as its discriminant and payloads reach); 0 for neither."""
    if a.HasField("pointee_variants"):
        v = a.pointee_variants
        return max([v.discriminant.offset + v.discriminant.size] +
                   [f.offset + f.size for x in v.variants for f in x.payload])
    return max((f.offset + f.size for f in a.fields), default=0)


def record_slots(meta: pb.FunctionMetadata, capture_args: bool, capture_return: bool,
                 slot_bytes: int = 64) -> RecordSlots:
    chosen = string_arguments(meta) if capture_args else []
    none = (-1, 0, 0)
    str_args = [s.regs[0] if s.shape not in ("held", "gostack") else -1 for s in chosen] + [-1, -1]
    # A Go string on the stack is copied at the entry as a held string: its object is the stack arguments.
    held_args = [(s.regs[0], *s.held) if s.shape == "held" else
                 (FROM_STACK, s.offset, s.offset + 8) if s.shape == "gostack" else none for s in chosen] + [none, none]
    used = len(chosen)
    blob = (-1, 0, 0)
    if capture_args and used < 2:
        for s, a in zip(argument_layout(meta), meta.arguments, strict=False):
            size = pointee_bytes(a)  # a struct's members past the slot are shown as `?`; an enum must fit
            if size and s.shape == "int" and s.regs and (a.fields or size <= slot_bytes):
                blob = (s.regs[0], min(size, slot_bytes), used)
                used += 1
                break
    # Go: an error argument in registers, in a slot left: the string its object may hold first, copied at the
    # entry through its data word as a held string through its object (shown or not by its type, as a result's).
    for reg in error_arguments(meta)[:2 - used] if capture_args else []:
        held_args[used] = (reg, *ERROR_MESSAGE)
        used += 1
    result = string_result(meta) if capture_return and used < 2 else None
    # Go, with no string result: the slot holds the message an error result's object may keep (shown or not by
    # its type, showvalues.show_error), read through the error's data word as a held string through its object.
    error = error_result(meta) if capture_return and used < 2 and result is None else -1
    if error >= 0:
        return RecordSlots((str_args[0], str_args[1]), blob, (error, used), (held_args[0], held_args[1]),
                           ERROR_MESSAGE)
    return RecordSlots((str_args[0], str_args[1]), blob, (result.regs[0], used) if result else (-1, 0),
                       (held_args[0], held_args[1]), result.held if result and result.shape == "held" else None)
