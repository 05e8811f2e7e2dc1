"""Turn raw register values into typed, readable values."""

from __future__ import annotations

import re

_FIXED = re.compile(r"^(u?)int(8|16|32|64)(_t)?$")
_RUST = re.compile(r"^([iu])(8|16|32|64)$")
_NAMED = {"size_t": (8, False), "ssize_t": (8, True), "ptrdiff_t": (8, True), "intptr_t": (8, True),
          "uintptr_t": (8, False), "uintptr": (8, False), "byte": (1, False), "rune": (4, True),
          "isize": (8, True), "usize": (8, False)}
_C_WORDS = {"unsigned", "signed", "char", "short", "int", "long"}


def int_kind(type_name: str) -> tuple[int, bool] | None:
    """(size in bytes, signed) of an integer type as DWARF names it (C or Go),
    or None if it is not a plain integer. (Go's bare int/uint: see format_register.)"""
    t = type_name.strip()
    m = _FIXED.match(t)
    if m:
        return int(m.group(2)) // 8, not m.group(1)
    m = _RUST.match(t)
    if m:
        return int(m.group(2)) // 8, m.group(1) == "i"
    if t in _NAMED:
        return _NAMED[t]
    words = t.split()
    if not words or not set(words) <= _C_WORDS:
        return None
    size = 1 if "char" in words else 2 if "short" in words else 8 if "long" in words else 4
    return size, "unsigned" not in words


def format_register(value: int, type_name: str, go: bool = False) -> str:
    """A 64-bit register shown as the type DWARF names: integers at their
    width and signedness, booleans, pointers (and unknown types) in hex."""
    t = type_name.strip()
    if t in ("_Bool", "bool"):
        return "true" if value & 0xFF else "false"
    if not t or "*" in t or "&" in t or t.endswith("]"):
        return f"{value:#x}"
    kind = (8, t == "int") if go and t in ("int", "uint") else int_kind(t)
    if kind is None:
        return f"{value:#x}"
    size, signed = kind
    v = value & ((1 << (8 * size)) - 1)
    if signed and v >= 1 << (8 * size - 1):
        v -= 1 << (8 * size)
    return str(v)
