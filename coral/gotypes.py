"""How Go's register ABI (ABIInternal, amd64, Go >= 1.17) assigns a value
of a DWARF type to registers, read with pyelftools.

Go's compiler marks each type DIE with the kind of its underlying type
(DW_AT_go_kind, reflect.Kind's numbers), so a named type (`type Cents
int64`, `type ID string`, `type Order struct{...}`) is known by what it is
defined as. A value is assigned to registers as src/cmd/compile/abi-internal.md
says: an integer, boolean, pointer, map, chan or func takes one integer
register; a string or interface two; a slice three; a float one
floating-point register, a complex two; a struct its fields' in order; an
array of one element its element's, of none nothing; an array of more than
one element cannot be assigned to registers, and neither can anything that
holds one (it goes on the stack)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coral.dwarftypes import attribute, name_of_type

DW_AT_GO_KIND = 0x2900
DW_AT_GO_ELEM = 0x2902

# reflect.Kind
_SCALAR_KINDS = {1: "bool", 2: "int", 3: "int8", 4: "int16", 5: "int32", 6: "int64", 7: "uint", 8: "uint8",
                 9: "uint16", 10: "uint32", 11: "uint64", 12: "uintptr"}
_FLOAT_KINDS = {13: ("float32", 1), 14: ("float64", 1), 15: ("complex64", 2), 16: ("complex128", 2)}
ARRAY, CHAN, FUNC, INTERFACE, MAP, POINTER, SLICE, STRING, STRUCT, UNSAFE_POINTER = 17, 18, 19, 20, 21, 22, 23, 24, 25, 26
_ADDRESS_KINDS = (CHAN, FUNC, MAP, POINTER, UNSAFE_POINTER)
MAX_DEPTH = 16  # structs in structs: deeper than this, the value is not placed


@dataclass(frozen=True)
class GoField:
    name: str
    type: str  # as Go writes it
    underlying: str
    int_registers: int
    float_registers: int
    offset: int = 0  # bytes from the start of the struct (an array's element: index times its size)
    size: int = 0


@dataclass(frozen=True)
class GoValue:
    """What ABIInternal does with a value of one type (GoValueMetadata)."""

    underlying: str  # int64, string, []uint8, interface, unsafe.Pointer, struct, [1]int, float64
    int_registers: int = 0
    float_registers: int = 0
    stack_only: bool = False  # holds an array of more than one element
    fields: tuple[GoField, ...] = ()  # a struct: its fields in order; an array: its elements (MAX_ELEMENTS)
    size: int = 0  # bytes, as Go lays it out in memory (where it sits on the stack)
    align: int = 1


class _Unknown(Exception):
    """A type this reading cannot place (too deep, no kind it knows)."""


MAX_ELEMENTS = 16  # of an array, listed as its fields (to show one passed on the stack)
_SIZES = {"bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4}


def _kind(die: Any) -> tuple[int, Any]:
    """(reflect.Kind, the DIE that has it): through typedefs (`error` is a
    typedef of a typedef) to the first DIE that names its kind; for a DIE
    with none, from its tag."""
    for _ in range(8):
        kind = attribute(die, DW_AT_GO_KIND)
        if isinstance(kind, int) and kind:
            return kind, die
        if die.tag != "DW_TAG_typedef" or "DW_AT_type" not in die.attributes:
            break
        die = die.get_DIE_from_attribute("DW_AT_type")
    if die.tag == "DW_TAG_base_type":
        size, encoding = attribute(die, "DW_AT_byte_size", 8), attribute(die, "DW_AT_encoding", 5)
        if encoding == 2:
            return 1, die
        if encoding == 4:
            return (13 if size == 4 else 14), die
        ints = {1: 3, 2: 4, 4: 5, 8: 6} if encoding in (5, 6) else {1: 8, 2: 9, 4: 10, 8: 11}
        if size not in ints:
            raise _Unknown(f"{size}-byte integer")
        return ints[size], die
    if die.tag == "DW_TAG_pointer_type":
        return POINTER, die
    if die.tag == "DW_TAG_array_type":
        return ARRAY, die
    if die.tag == "DW_TAG_structure_type":
        name = name_of_type(die)
        return (STRING if name == "string" else SLICE if name.startswith("[]") else STRUCT), die
    raise _Unknown(die.tag)


def _count(array: Any) -> int:
    for sub in array.iter_children():
        if sub.tag == "DW_TAG_subrange_type":
            count = attribute(sub, "DW_AT_count")
            if isinstance(count, int):
                return count
            upper = attribute(sub, "DW_AT_upper_bound")
            if isinstance(upper, int):
                return upper + 1
    raise _Unknown("array without a count")


def _element(die: Any, attr: Any) -> Any:
    if attr not in die.attributes:
        raise _Unknown("no element type")
    return die.get_DIE_from_attribute(attr)


def _value(die: Any, depth: int) -> GoValue:
    """Sizes and alignments as abi-internal.md's memory layout gives them."""
    if depth > MAX_DEPTH:
        raise _Unknown("too deep")
    kind, typed = _kind(die)
    if kind in _SCALAR_KINDS:
        size = _SIZES.get(_SCALAR_KINDS[kind], 8)
        return GoValue(_SCALAR_KINDS[kind], 1, size=size, align=size)
    if kind in _FLOAT_KINDS:
        name, n = _FLOAT_KINDS[kind]
        size = {"float32": 4, "float64": 8, "complex64": 8, "complex128": 16}[name]
        return GoValue(name, 0, n, size=size, align=min(size // n, 8))
    if kind in _ADDRESS_KINDS:
        return GoValue("unsafe.Pointer", 1, size=8, align=8)
    if kind == STRING:
        return GoValue("string", 2, size=16, align=8)
    if kind == INTERFACE:
        return GoValue("interface", 2, size=16, align=8)
    if kind == SLICE:
        elem = attribute(typed, DW_AT_GO_ELEM)
        of = name_of_type(typed.get_DIE_from_attribute(DW_AT_GO_ELEM)) if elem is not None else \
            name_of_type(typed).removeprefix("[]")
        return GoValue("[]" + of, 3, size=24, align=8)
    if kind == ARRAY:
        count, element_die = _count(typed), _element(typed, "DW_AT_type")
        element = _value(element_die, depth + 1)
        elem_name = name_of_type(element_die)
        array = f"[{count}]{elem_name}"
        size, align = count * element.size, element.align
        if count == 0:
            return GoValue(array, size=0, align=align)
        if count == 1:
            return GoValue(array, element.int_registers, element.float_registers, element.stack_only, size=size,
                           align=align)
        elements = tuple(GoField(str(i), elem_name, element.underlying, element.int_registers,
                                 element.float_registers, i * element.size, element.size)
                         for i in range(min(count, MAX_ELEMENTS)))
        return GoValue(array, stack_only=True, fields=elements, size=size, align=align)
    if kind == STRUCT:
        fields, stack_only, align, end = [], False, 1, 0
        for member in typed.iter_children():
            if member.tag != "DW_TAG_member" or "DW_AT_type" not in member.attributes:
                continue
            member_type = member.get_DIE_from_attribute("DW_AT_type")
            v = _value(member_type, depth + 1)
            stack_only = stack_only or v.stack_only
            align = max(align, v.align)
            name = attribute(member, "DW_AT_name", b"?").decode(errors="replace")
            offset = attribute(member, "DW_AT_data_member_location")
            if not isinstance(offset, int):
                raise _Unknown("a member without a constant offset")
            end = max(end, offset + v.size)
            fields.append(GoField(name, name_of_type(member_type), v.underlying, v.int_registers, v.float_registers,
                                  offset, v.size))
        size = attribute(typed, "DW_AT_byte_size", end)
        if stack_only:
            return GoValue("struct", stack_only=True, fields=tuple(fields), size=size, align=align)
        return GoValue("struct", sum(f.int_registers for f in fields), sum(f.float_registers for f in fields),
                       fields=tuple(fields), size=size, align=align)
    raise _Unknown(f"kind {kind}")


def go_value(type_die: Any) -> GoValue | None:
    """How ABIInternal assigns a value of this type; None if this reading
    cannot tell (then it and the values after it are not placed)."""
    try:
        return _value(type_die, 0)
    except _Unknown:
        return None
