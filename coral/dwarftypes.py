"""What a DWARF type is, read with pyelftools: its name as the language
writes it (C, C++, Go, Rust), the members a pointer's struct has, whether
System V returns it through memory, where an object that holds a string
keeps it (C++ std::string, Rust String), and a Rust enum's variants."""

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
DW_AT_GO_DICT_INDEX = 0x2906  # Go: this typedef is a generic function's type parameter
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
    inner = die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None
    if name is not None and is_go(die):  # Go names every type as Go writes it: string, []uint8, *main.Card
        if DW_AT_GO_DICT_INDEX in die.attributes and inner is not None:
            return name_of_type(inner, depth + 1)  # a type parameter (.param0): its shape, go.shape.int
        return str(name.value.decode(errors="replace"))
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


def attribute(die: Any, name: str | int, default: Any = None) -> Any:  # int: a vendor's (DW_AT_go_kind)
    a = die.attributes.get(name)
    return a.value if a is not None else default


MAX_FIELDS = 8
FIELDS_WITHIN = 64  # bytes: what the kernel copies through the pointer fits a string slot


def float_base(type_die: Any) -> str:
    """The name of the floating-point base type a typedef (or const) names
    (`double` for `typedef double money`); "" for any other type, or for
    the base type itself (its own name says it)."""
    base = strip(type_die)
    if base is None or base is type_die or base.tag != "DW_TAG_base_type" or \
            attribute(base, "DW_AT_encoding") not in (DW_ATE_COMPLEX_FLOAT, DW_ATE_FLOAT):
        return ""
    return name_of_type(base)


DW_ATE_COMPLEX_FLOAT, DW_ATE_FLOAT = 3, 4


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


@dataclass(frozen=True)
class HeldString:
    """An object that holds a string: its data pointer and its length (64
    bits) are members at these offsets."""

    data_offset: int
    length_offset: int


def _member(struct: Any, name: str) -> tuple[int, Any] | None:
    """(offset, stripped type) of a data member of `struct` by name."""
    for member in struct.iter_children() if struct is not None else ():
        if member.tag == "DW_TAG_member" and attribute(member, "DW_AT_name") == name.encode():
            offset = attribute(member, "DW_AT_data_member_location")
            if isinstance(offset, int) and "DW_AT_type" in member.attributes:
                return offset, strip(member.get_DIE_from_attribute("DW_AT_type"))
    return None


def _member_path(struct: Any, path: tuple[str, ...]) -> tuple[int, Any] | None:
    """(offset, stripped type) of a member reached by `path` from `struct`."""
    offset, die = 0, struct
    for name in path:
        found = _member(die, name)
        if found is None:
            return None
        offset, die = offset + found[0], found[1]
    return offset, die


def _first_pointer(struct: Any, names: tuple[str, ...], depth: int = 0) -> int | None:
    """The offset of the pointer reached through members named in `names`
    (Rust's RawVec keeps its pointer a few wrappers down: buf.inner.ptr.
    pointer.pointer in 1.95, fewer in older versions)."""
    if struct is None or depth > 8:
        return None
    if struct.tag == "DW_TAG_pointer_type":
        return 0
    for name in names:
        found = _member(struct, name)
        if found is not None:
            inner = _first_pointer(found[1], names, depth + 1)
            if inner is not None:
                return found[0] + inner
    return None


def _string_layout(obj: Any) -> HeldString | None:
    """Where a libstdc++ std::string (std::__cxx11::basic_string<char>:
    _M_dataplus._M_p, _M_string_length) or a Rust String (vec: Vec<u8>:
    its buffer's pointer, len) keeps its bytes and length, from DWARF: the
    members' offsets are the compiler's (rustc reorders them)."""
    if obj is None or obj.tag not in ("DW_TAG_structure_type", "DW_TAG_class_type"):
        return None
    name = (attribute(obj, "DW_AT_name") or b"").decode(errors="replace")
    if name.startswith("basic_string<char,") or name == "basic_string<char>":
        data, length = _member_path(obj, ("_M_dataplus", "_M_p")), _member_path(obj, ("_M_string_length",))
        if data is not None and length is not None and data[1] is not None and \
                data[1].tag == "DW_TAG_pointer_type" and attribute(length[1], "DW_AT_byte_size") == 8:
            return HeldString(data[0], length[0])
    if name == "String" and is_rust(obj):
        vec, length = _member(obj, "vec"), _member_path(obj, ("vec", "len"))
        buf = _member(vec[1], "buf") if vec is not None else None
        pointer = _first_pointer(buf[1], ("inner", "ptr", "pointer")) if buf is not None else None
        if vec is not None and buf is not None and pointer is not None and length is not None and \
                attribute(length[1], "DW_AT_byte_size") == 8:
            return HeldString(vec[0] + buf[0] + pointer, length[0])
    return None


def held_string(type_die: Any) -> HeldString | None:
    """For a value whose register holds the address of an object holding a
    string: a pointer or reference to one, or the object itself. A
    std::string passed by value is passed by invisible reference (Itanium
    C++ ABI: it has a non-trivial destructor), a Rust String by address (the
    Rust ABI passes anything over 16 bytes so), and either returned through
    memory comes back as its address in RAX: in each case the register
    holds the object's address."""
    t = strip(type_die)
    if t is None:
        return None
    if t.tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type", "DW_TAG_rvalue_reference_type"):
        return _string_layout(strip(t.get_DIE_from_attribute("DW_AT_type"))) if "DW_AT_type" in t.attributes else None
    return _string_layout(t)


@dataclass(frozen=True)
class Variant:
    name: str
    discriminant: int  # the discriminant's value that selects it (unless is_default)
    is_default: bool  # selected when no other variant's value matches (a niche layout)
    payload: tuple[Field, ...]  # at most one scalar or pointer, offset from the enum's start


@dataclass(frozen=True)
class Variants:
    """A Rust enum (Option, Result, ...): where its discriminant is and what
    each value of it means, from DWARF's variant part."""

    size: int
    discriminant: Field
    variants: tuple[Variant, ...]


_SCALARS = ("DW_TAG_base_type", "DW_TAG_pointer_type", "DW_TAG_enumeration_type")


def _scalar(name: str, die: Any, offset: int) -> Field | None:
    typed = strip(die)
    size = attribute(typed, "DW_AT_byte_size", 8 if typed is not None and typed.tag == "DW_TAG_pointer_type" else 0)
    if typed is None or typed.tag not in _SCALARS or size not in (0, 1, 2, 4, 8):
        return None
    return Field(name, name_of_type(die), offset, size)


def pointee_variants(type_die: Any) -> Variants | None:
    """For a pointer or reference to a Rust enum (`&Option<i64>`): the
    enum, as rust_variants reads it; None for any other type."""
    pointer = strip(type_die)
    if pointer is None or pointer.tag not in ("DW_TAG_pointer_type", "DW_TAG_reference_type") or \
            "DW_AT_type" not in pointer.attributes:
        return None
    return rust_variants(pointer.get_DIE_from_attribute("DW_AT_type"))


def rust_variants(type_die: Any) -> Variants | None:
    """A Rust enum whose variants each hold at most one scalar or pointer
    (Option<i64>, Result<u32, i32>, Option<&T>); None for any other type or
    layout (a variant with a struct, a slice or two values; a discriminant
    list), which is then not shown rather than shown wrong."""
    t = strip(type_die)
    if t is None or t.tag != "DW_TAG_structure_type" or not is_rust(t):
        return None
    part = next((c for c in t.iter_children() if c.tag == "DW_TAG_variant_part"), None)
    if part is None or "DW_AT_discr" not in part.attributes:
        return None
    tag = part.get_DIE_from_attribute("DW_AT_discr")
    tag_offset = attribute(tag, "DW_AT_data_member_location")
    discriminant = _scalar("", tag.get_DIE_from_attribute("DW_AT_type"), tag_offset) \
        if "DW_AT_type" in tag.attributes and isinstance(tag_offset, int) else None
    if discriminant is None or discriminant.size == 0:
        return None
    mask = (1 << 8 * discriminant.size) - 1
    variants = []
    for v in part.iter_children():
        if v.tag != "DW_TAG_variant":
            continue
        if "DW_AT_discr_list" in v.attributes:
            return None
        member = next((c for c in v.iter_children() if c.tag == "DW_TAG_member"), None)
        if member is None or "DW_AT_type" not in member.attributes:
            return None
        base = attribute(member, "DW_AT_data_member_location", 0)
        payload = []
        for f in member.get_DIE_from_attribute("DW_AT_type").iter_children():
            if f.tag != "DW_TAG_member" or "DW_AT_type" not in f.attributes:
                continue
            name, offset = attribute(f, "DW_AT_name", b"?").decode(errors="replace"), attribute(f, "DW_AT_data_member_location")
            field = _scalar(name, f.get_DIE_from_attribute("DW_AT_type"), base + offset) if isinstance(offset, int) else None
            if field is None:
                return None
            payload.append(field)
        if sum(f.size > 0 for f in payload) > 1:
            return None
        value = attribute(v, "DW_AT_discr_value")
        variants.append(Variant(attribute(member, "DW_AT_name", b"?").decode(errors="replace"),
                                (value or 0) & mask, value is None, tuple(payload)))
    return Variants(attribute(t, "DW_AT_byte_size", 0), discriminant, tuple(variants)) if variants else None
