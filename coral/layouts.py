"""Struct layouts read from the C headers under bpf/, so that a record the
BPF program writes (bpf/coral_records.h) or the SDK hands to its probe site
(bpf/coral_call.h) is defined once, in C, and Python decodes it with a
`struct` format built from that definition.

The headers keep to a small part of C, which this module reads: `#define
NAME INTEGER`, `#include "file.h"` (beside the header), and `struct NAME {
TYPE field[N][M]; ... };` with TYPE one of u32, s32, u64, s64, unsigned int,
unsigned long long, char, or `struct OTHER`. Members are laid out as the C
compiler lays them out on x86_64 and aarch64 (natural alignment, padding
before a member and at the end); tests/test_layouts.py checks every offset
and size against gcc."""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# C type -> (struct code, size); char arrays are byte strings ("Ns").
SCALARS = {"u32": ("I", 4), "s32": ("i", 4), "u64": ("Q", 8), "s64": ("q", 8), "unsigned int": ("I", 4),
           "unsigned long long": ("Q", 8), "char": ("s", 1)}

_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)\s+(\d+)(?:ULL|UL|U)?\s*$", re.M)
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
_STRUCT = re.compile(r"\bstruct\s+(\w+)\s*\{([^{}]*)\}\s*;")
_MEMBER = re.compile(r"^(struct\s+\w+|unsigned\s+long\s+long|unsigned\s+int|\w+)\s+(\w+)((?:\s*\[\s*\w+\s*\])*)$")


class LayoutError(ValueError):
    """A header this module cannot read: the message says where."""


@dataclass(frozen=True)
class Member:
    name: str
    offset: int
    size: int
    values: slice  # where its values are in the tuple the struct format unpacks
    code: str = ""  # the struct code of one element (I, i, Q, q; s for a char row; "" for a struct)
    count: int = 1  # elements (char rows for a char array)


@dataclass(frozen=True)
class Layout:
    name: str
    size: int
    align: int
    format: str  # for the struct module, little-endian, padding spelled out
    members: tuple[Member, ...]

    @property
    def struct(self) -> struct.Struct:
        return struct.Struct("<" + self.format)

    def values(self, name: str) -> slice:
        """Where member `name`'s values are in an unpacked record."""
        for m in self.members:
            if m.name == name:
                return m.values
        raise KeyError(f"struct {self.name} has no member {name!r}")

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)


def read_layouts(header: Path, defines: Mapping[str, int] | None = None) -> dict[str, Layout]:
    """Every struct in `header` and the headers it includes, by name.
    `defines` override the headers' own (as -D flags do for the compiler)."""
    macros: dict[str, int] = {}
    texts: list[tuple[Path, str]] = []
    _gather(header, texts, set())
    for _, text in texts:
        for name, value in _DEFINE.findall(text):
            macros.setdefault(name, int(value))
    macros.update(defines or {})
    layouts: dict[str, Layout] = {}
    for path, text in texts:
        for name, body in _STRUCT.findall(text):
            layouts[name] = _layout(name, body, macros, layouts, path)
    return layouts


def _gather(path: Path, out: list[tuple[Path, str]], seen: set[Path]) -> None:
    """The header's text without comments, after the headers it includes (each once)."""
    if path in seen:
        return
    seen.add(path)
    try:
        text = _COMMENTS.sub(" ", path.read_text())
    except OSError as exc:
        raise LayoutError(f"cannot read {path}: {exc.strerror}") from exc
    for included in _INCLUDE.findall(text):
        _gather(path.parent / included, out, seen)
    out.append((path, text))


def _layout(name: str, body: str, macros: Mapping[str, int], known: Mapping[str, Layout], path: Path) -> Layout:
    offset, align, fmt, n_values = 0, 1, [], 0
    members = []
    for decl in (d.strip() for d in body.split(";")):
        if not decl:
            continue
        m = _MEMBER.match(" ".join(decl.split()))
        if m is None:
            raise LayoutError(f"{path}: struct {name}: cannot read member {decl!r}")
        ctype, member, dims_text = m.groups()
        dims = [_dimension(d, macros, path, name) for d in re.findall(r"\[\s*(\w+)\s*\]", dims_text)]
        if ctype.startswith("struct "):
            inner = known.get(ctype.split()[1])
            if inner is None:
                raise LayoutError(f"{path}: struct {name}: {ctype} is not defined before it")
            one_fmt, one_size, one_align, one_values = inner.format, inner.size, inner.align, len(inner.struct.unpack(
                bytes(inner.size)))
            code = ""
        elif ctype in SCALARS:
            code, one_size = SCALARS[ctype]
            one_align = one_size
            if code == "s":  # a char array is one byte string per innermost row
                *outer, length = dims or [1]
                dims, one_fmt, one_size, one_values = outer, f"{length}s", length, 1
            else:
                one_fmt, one_values = code, 1
        else:
            raise LayoutError(f"{path}: struct {name}: type {ctype!r} is not one this module reads")
        count = 1
        for d in dims:
            count *= d
        pad = -offset % one_align
        if pad:
            fmt.append(f"{pad}x")
        offset += pad
        members.append(Member(member, offset, one_size * count, slice(n_values, n_values + one_values * count), code,
                              count))
        fmt.append(one_fmt * count)
        offset += one_size * count
        n_values += one_values * count
        align = max(align, one_align)
    tail = -offset % align
    if tail:
        fmt.append(f"{tail}x")
    return Layout(name, offset + tail, align, "".join(fmt), tuple(members))


def _dimension(text: str, macros: Mapping[str, int], path: Path, name: str) -> int:
    if text.isdigit():
        return int(text)
    if text in macros:
        return macros[text]
    raise LayoutError(f"{path}: struct {name}: array size {text} is not a #define this module knows")
