"""What a DWARF type is, read with pyelftools: its name as the language
writes it (C, C++, Go, Rust), the members a pointer's struct has, and
whether System V returns it through memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    offset: int
    size: int


DW_LANG_GO = 0x16
DW_LANG_RUST = 0x1C


def is_go(die: Any) -> bool:
    top = die.cu.get_top_DIE()
    return bool(attribute(top, "DW_AT_language") == DW_LANG_GO)


def is_rust(die: Any) -> bool:
    return bool(attribute(die.cu.get_top_DIE(), "DW_AT_language") == DW_LANG_RUST)


def name_of_type(die: Any, depth: int = 0) -> str:
    if die is None or depth > 8:
        return "void"
    name = die.attributes.get("DW_AT_name")
    if name is not None and is_go(die):  # Go names every type as Go writes it: string, []uint8, *main.Card
        return str(name.value.decode(errors="replace"))
    inner = die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None
    tag = die.tag
    if name is not None and is_rust(die):
        # Rust names its pointers, references and fat pointers as Rust writes
        # them (&i64, *const u8, &str); a structure or enum stays one.
        text = str(name.value.decode(errors="replace"))
        if tag in ("DW_TAG_pointer_type", "DW_TAG_base_type") or text.startswith(("&", "*")):
            return text
    if tag == "DW_TAG_pointer_type":
        return name_of_type(inner, depth + 1) + " *"
    if tag in ("DW_TAG_reference_type", "DW_TAG_rvalue_reference_type"):  # C++: an address, as a pointer is
        return name_of_type(inner, depth + 1) + (" &" if tag == "DW_TAG_reference_type" else " &&")
    if tag == "DW_TAG_const_type":
        return "const " + name_of_type(inner, depth + 1)
    if tag == "DW_TAG_volatile_type":
        return "volatile " + name_of_type(inner, depth + 1)
    if tag in ("DW_TAG_structure_type", "DW_TAG_union_type", "DW_TAG_enumeration_type"):
        kind = tag[len("DW_TAG_") : -len("_type")].replace("structure", "struct")
        return f"{kind} {name.value.decode() if name else '<anonymous>'}"
    if name is not None:
        return str(name.value.decode(errors="replace"))
    return name_of_type(inner, depth + 1) if inner is not None else "?"


def attribute(die: Any, name: str, default: Any = None) -> Any:
    a = die.attributes.get(name)
    return a.value if a is not None else default

MAX_FIELDS = 8
FIELDS_WITHIN = 64  # bytes: what the kernel copies through the pointer fits a string slot


def strip(die: Any) -> Any:
    """Through typedefs and const/volatile to the type itself."""
    for _ in range(8):
        if die is None or die.tag not in ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type"):
            return die
        die = die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None
    return die


def struct_fields(type_die: Any) -> tuple[Field, ...]:
    """For a pointer (or C++ reference) to a struct or class: its first
    members that are scalars or pointers, at most MAX_FIELDS, that lie in
    its first FIELDS_WITHIN bytes (no bit-fields, no nested structs)."""
    pointer = strip(type_die)
    if pointer is None or pointer.tag not in ("DW_TAG_pointer_type", "DW_TAG_reference_type") or \
            "DW_AT_type" not in pointer.attributes:
        return ()
    struct = strip(pointer.get_DIE_from_attribute("DW_AT_type"))
    if struct is None or struct.tag not in ("DW_TAG_structure_type", "DW_TAG_class_type"):
        return ()
    out = []
    for member in struct.iter_children():
        if member.tag != "DW_TAG_member" or "DW_AT_bit_size" in member.attributes or "DW_AT_type" not in member.attributes:
            continue
        offset = attribute(member, "DW_AT_data_member_location")
        typed = member.get_DIE_from_attribute("DW_AT_type")
        base = strip(typed)
        size = attribute(base, "DW_AT_byte_size", 8 if base is not None and base.tag == "DW_TAG_pointer_type" else 0)
        if not isinstance(offset, int) or base is None or size not in (1, 2, 4, 8) or \
                base.tag not in ("DW_TAG_base_type", "DW_TAG_pointer_type", "DW_TAG_enumeration_type"):
            continue
        if offset + size > FIELDS_WITHIN:
            continue  # members need not be in offset order (rustc reorders them)
        name = attribute(member, "DW_AT_name")
        out.append(Field(name.decode(errors="replace") if name else "?", name_of_type(typed), offset, size))
        if len(out) == MAX_FIELDS:
            break
    return tuple(out)


DW_CC_PASS_BY_REFERENCE = 4


def in_memory(type_die: Any) -> bool:
    """System V AMD64: a result of this type is returned through memory the
    caller passes in RDI (its arguments start one register later): a struct,
    class or union over 16 bytes, or one the compiler passes by reference
    (DW_AT_calling_convention: a C++ class with a non-trivial copy or
    destructor, such as std::string). Rust's own ABI does the same for its
    large results (Result, String)."""
    t = strip(type_die)
    if t is None or t.tag not in ("DW_TAG_structure_type", "DW_TAG_class_type", "DW_TAG_union_type"):
        return False
    return bool(attribute(t, "DW_AT_byte_size", 0) > 16 or attribute(t, "DW_AT_calling_convention") == DW_CC_PASS_BY_REFERENCE)
