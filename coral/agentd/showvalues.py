"""Captured values as text: from the registers the probe copied, the
strings and struct members it copied through pointers, and the stack
arguments it copied at the entry, placed as coral/agentd/abi.py says."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping

from coral.agentd.abi import FROM_STACK, GO_SCALARS, MAX_SHOWN_FIELDS, MESSAGE_FIRST_ERRORS, UNREADABLE_OBJECT, Slot
from coral.agentd.values import format_register, int_kind
from coral.proto import coral_pb2 as pb

_FLOAT_FORMATS = {"float32": "<f", "float64": "<d", "float": "<f", "double": "<d", "f32": "<f", "f64": "<d",
                  "_Float32": "<f", "_Float64": "<d"}
_X87 = ("long double", "_Float64x", "__float80")


def _x87(raw: bytes) -> str:
    """An x87 extended-precision number (a long double): 64-bit significand
    with its integer bit, 15-bit exponent, sign; shown as the nearest
    double."""
    significand, top = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:10], "little")
    exponent, sign = top & 0x7FFF, -1.0 if top >> 15 else 1.0
    if exponent == 0x7FFF:
        return repr(sign * float("inf")) if significand << 1 & ((1 << 64) - 1) == 0 else "nan"
    try:
        return repr(sign * math.ldexp(significand, (exponent or 1) - 16383 - 63))
    except OverflowError:
        return repr(sign * float("inf"))


def _go_words(slot: Slot, data: bytes, at: int, strings: dict[int, bytes], string_bytes: int,
              error_types: Mapping[int, str] | None = None, lengths: dict[int, int] | None = None) -> str | None:
    """A Go string, slice or interface on the stack, shown as the same
    value in registers is: its words are those registers, and the bytes a
    string or []byte points at are in `strings` under FROM_STACK plus its
    offset (copied by the kernel; not there: shown as the address); an
    error's message under FROM_STACK plus its data word's offset, its
    length in `lengths` there. None for a value of any other kind."""
    kind = slot.underlying or slot.type
    words = {"string": 2, "error": 2}.get(kind, 3 if kind.startswith("[]") else 2 if kind.startswith("interface") else 0)
    if not words or at + 8 * words > len(data):
        return None
    values = tuple(int.from_bytes(data[at + 8 * i:at + 8 * i + 8], "little") for i in range(words))
    shape = "gostring" if kind == "string" else "goslice" if words == 3 else "iface"
    as_registers = Slot(slot.name, slot.type, shape, tuple(range(words)), True, slot.underlying)
    copied = {0: strings[FROM_STACK + at]} if FROM_STACK + at in strings else {}
    if shape == "iface":
        key = FROM_STACK + at + 8
        copied = {1: strings[key]} if key in strings else {}
        held = {1: lengths[key]} if lengths and key in lengths else {}
        return show(as_registers, values, copied, string_bytes, held, error_types=error_types)
    return show(as_registers, values, copied, string_bytes, error_types=error_types)


def _from_stack(slot: Slot, data: bytes, at: int, other: str = "(not captured)", strings: dict[int, bytes] | None = None,
                string_bytes: int = 64, error_types: Mapping[int, str] | None = None,
                lengths: dict[int, int] | None = None) -> str:
    """A scalar, pointer or float at `at` in the copied stack bytes; a Go
    string, slice or interface as in registers (_go_words); a value of any
    other kind (a struct in a struct) is `other`."""
    kind = slot.underlying or slot.type
    if at < 0 or at + slot.size > len(data) or slot.size == 0:
        return "(not captured: on the stack)"
    if slot.go and (text := _go_words(slot, data, at, strings or {}, string_bytes, error_types, lengths)) is not None:
        return text
    raw = data[at:at + slot.size]
    if kind in _FLOAT_FORMATS and slot.size >= struct.calcsize(_FLOAT_FORMATS[kind]):
        return repr(struct.unpack_from(_FLOAT_FORMATS[kind], raw)[0])
    if kind in _X87 and slot.size >= 10:
        return _x87(raw)
    if slot.go and (kind in GO_SCALARS or kind == "unsafe.Pointer"):
        return format_register(int.from_bytes(raw, "little"), kind, True)
    if not slot.go and (int_kind(kind) is not None or "*" in kind or kind in ("_Bool", "bool")):
        return format_register(int.from_bytes(raw, "little"), kind)
    return other


def show_stack(slot: Slot, data: bytes, redact: Callable[[str, str], str], strings: dict[int, bytes] | None = None,
               string_bytes: int = 64, error_types: Mapping[int, str] | None = None,
               lengths: dict[int, int] | None = None) -> str:
    """A Go value passed or returned on the stack, from the bytes copied
    (arguments at the entry, results at the RET): a scalar or a float as
    itself, a string, slice or interface as in registers, a struct
    `{Lo=1, Hi=2}` and an array `[4, 6]` one level deep (a field redacted
    by its name); what lies past the bytes copied is `?`, a value wholly
    past them not captured."""
    if slot.offset < 0 or not data or slot.offset >= len(data) or slot.size == 0:
        return "(not captured: on the stack)"
    if not slot.fields:
        return _from_stack(slot, data, slot.offset, "(not captured: on the stack)", strings, string_bytes, error_types,
                           lengths)
    shown = []
    for f in slot.fields[:MAX_SHOWN_FIELDS]:
        at = slot.offset + f.offset
        text = "?" if at + f.size > len(data) else _from_stack(f, data, at, strings=strings, string_bytes=string_bytes,
                                                               error_types=error_types, lengths=lengths)
        shown.append(text if slot.underlying.startswith("[") else f"{f.name}={redact(f.name, text)}")
    more = ["…"] if len(slot.fields) > MAX_SHOWN_FIELDS or (slot.underlying.startswith("[") and
                                                             len(slot.fields) * max(slot.fields[0].size, 1) < slot.size) else []
    if slot.underlying.startswith("["):
        return "[" + ", ".join(shown + more) + "]"
    return "{" + ", ".join(shown + more) + "}"


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
        raw = blob[f.offset:f.offset + f.size]
        number = {"float": "<f", "double": "<d", "f32": "<f", "f64": "<d", "float32": "<f", "float64": "<d"}.get(f.type)
        text = repr(struct.unpack(number, raw)[0]) if number and len(raw) == struct.calcsize(number) else \
            format_register(int.from_bytes(raw, "little"), f.type, go)
        shown.append(f"{f.name}={redact(f.name, text)}")
    return f"{address:#x} {{{', '.join(shown)}}}"


def show_variant(slot: Slot, values: tuple[int, ...]) -> str:
    """A Rust enum from its registers: `Some(5)`, `None`, `Ok(4)`, `Err(-3)`;
    a discriminant no variant has is not shown as one."""
    part = {offset: values[reg] for offset, reg in zip(slot.pieces, slot.regs, strict=True)}
    return _variant(slot.variants, lambda offset, size: part[offset] & ((1 << 8 * size) - 1))


def show_pointee_variant(address: int, v: pb.EnumMetadata, blob: bytes) -> str:
    """`0x7ffc… Some(5)`: a Rust enum an argument points to, from its bytes
    the kernel copied through the pointer (at the return); the address
    alone where they could not be read."""
    if address == 0:
        return "NULL"
    if not blob:
        return f"{address:#x}"
    return f"{address:#x} " + _variant(v, lambda offset, size: int.from_bytes(blob[offset:offset + size], "little"))


def _variant(v: pb.EnumMetadata, read: Callable[[int, int], int]) -> str:
    """The variant the discriminant selects, with its payload: `read(offset,
    size)` is the enum's unsigned integer at that offset."""
    d = v.discriminant
    value = read(d.offset, d.size)
    chosen = next((x for x in v.variants if not x.is_default and x.discriminant == value), None) or \
        next((x for x in v.variants if x.is_default), None)
    if chosen is None:
        return "(not captured)"
    payload = [f for f in chosen.payload if f.size]
    if not payload:
        return chosen.name + ("(())" if any(f.type == "()" for f in chosen.payload) else "")
    f = payload[0]
    return f"{chosen.name}({format_register(read(f.offset, f.size), f.type)})"


def is_error_variant(slot: Slot, shown: str) -> bool:
    """A Rust Result's Err: the call failed, as a non-nil Go error says."""
    return slot.shape == "variants" and slot.type.removeprefix("struct ").startswith("Result<") and \
        shown.startswith("Err")


def _unredacted(name: str, text: str) -> str:
    return text


def show_error(slot: Slot, itab: int, data: int, strings: dict[int, bytes], lengths: dict[int, int] | None,
               error_types: Mapping[int, str] | None) -> str:
    """A Go interface from its two words. A non-nil `error` whose first word
    is an itab of the binary names its concrete type; for the types that
    keep their message whole as their first field (abi.MESSAGE_FIRST_ERRORS)
    the message the RET copied through the data word (under the data word's
    register in `strings`, its length in `lengths`) is shown:
    `error(*errors.errorString) 'no such card'`, else the type and the data
    word: `<error *main.NotFound 0xc000012345>`; an itab not known, or
    another interface: `<error 0xc000012345>`."""
    if itab == 0:
        return "nil"
    concrete = error_types.get(itab) if error_types is not None and slot.type == "error" else None
    if concrete is None:
        return f"<{slot.type} {data:#x}>"
    key = slot.regs[1] if len(slot.regs) == 2 else -1
    copied, length = strings.get(key), (lengths or {}).get(key, UNREADABLE_OBJECT)
    if concrete not in MESSAGE_FIRST_ERRORS or copied is None or length == UNREADABLE_OBJECT or data == 0:
        return f"<{slot.type} {concrete} {data:#x}>"
    shown = copied[:length]
    more = f"…(+{length - len(shown)} bytes)" if length > len(shown) else ""
    return f"{slot.type}({concrete}) {shown.decode(errors='replace')!r}{more}"


def show(slot: Slot, values: tuple[int, ...], strings: dict[int, bytes], string_bytes: int = 64,
         lengths: dict[int, int] | None = None, redact: Callable[[str, str], str] = _unredacted,
         stack: bytes = b"", error_types: Mapping[int, str] | None = None) -> str:
    """One value as text, from the captured registers (and copied strings,
    and the whole lengths of strings held in objects). A Go struct passed
    by value: `{Cents=100, Note='x', Items=3}`, each field redacted by its
    name. A Go `error` by its itab's concrete type (`error_types`: show_error)."""
    if slot.shape == "float":
        return "(in a floating-point register: not captured)"
    if slot.shape == "stack":
        return show_stack(slot, stack, redact, strings, string_bytes, error_types, lengths)
    if slot.shape == "struct":
        parts = [f"{f.name}={redact(f.name, show(f, values, strings, string_bytes, lengths, error_types=error_types))}"
                 for f in slot.fields[:MAX_SHOWN_FIELDS]]
        return "{" + ", ".join(parts + (["…"] if len(slot.fields) > MAX_SHOWN_FIELDS else [])) + "}"
    if slot.shape == "unsupported" or not slot.regs:
        return "(not captured)"
    if slot.shape == "variants":
        return show_variant(slot, values)
    v = [values[r] for r in slot.regs]
    if slot.shape == "held":
        data = strings.get(slot.regs[0])
        if v[0] == 0:
            return "NULL"
        if data is None:
            return f"{v[0]:#x}"
        length = (lengths or {}).get(slot.regs[0], len(data))
        more = f"…(+{length - len(data)} bytes)" if length > len(data) else ""
        return repr(data.decode(errors="replace")) + more
    if slot.shape == "fat":
        return f"{v[0]:#x} " + (f"vtable={v[1]:#x}" if "dyn " in slot.type else f"len={v[1]}")
    if slot.shape == "int":
        return format_register(v[0], slot.underlying or slot.type, slot.go)
    if slot.shape == "iface":
        return show_error(slot, v[0], v[1], strings, lengths, error_types)
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
    if (slot.underlying or slot.type) in ("[]uint8", "[]byte"):
        return f"{slot.type} len={length} cap={v[2]} {shown!r}{more}"
    return f"{slot.type} len={length} cap={v[2]}"
