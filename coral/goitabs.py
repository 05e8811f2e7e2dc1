"""The concrete type behind a Go `error`, from its first word (an itab)
and the binary's own bytes.

A non-nil interface value is (itab, data); an itab starts with the
interface's type descriptor and the concrete type's (internal/abi.ITab:
Inter at 0, Type at 8, in every Go since 1.0). A type descriptor
(internal/abi.Type) keeps its name as an offset (Str, an int32 at 40) from
the start of the binary's type data, and its flags at 20
(TFlagExtraStar: the name's first byte, a `*`, is not part of it). A name
is a flags byte, a varint length, then the bytes. The type data starts at
the `.go.type` section where there is one (Go 1.27) or at the symbol
`runtime.types` (Go 1.19). Itabs the compiler could build are in the file (a dynamic one,
made by the runtime for a type assertion, is not); their symbols are not
(Go 1.27 writes none), so each one is read here, at the address the
process holds less the file's load bias, only where a loadable segment's
file bytes hold it. An itab whose interface is not `error`, or anything
not read whole and as expected, names no type: never a guess."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

ITAB_TYPES = 16  # Inter, Type: two pointers
TYPE_HEAD = 48  # internal/abi.Type up to Str and PtrToThis
TYPE_FLAGS, TYPE_NAME = 20, 40
TFLAG_EXTRA_STAR = 1 << 1
MAX_NAME = 512
MAX_KNOWN = 4096  # itab addresses remembered per process (named or not)


@dataclass(frozen=True)
class GoBinary:
    """What naming an itab's types needs of one file."""

    path: str
    segments: tuple[tuple[int, int, int], ...]  # (vaddr, filesz, offset) of PT_LOAD
    types: int  # where type names' offsets count from; 0: not known (no section, no symbol)

    @classmethod
    def read(cls, path: str) -> GoBinary:
        with open(path, "rb") as f:
            ef = ELFFile(f)
            segments = tuple((int(s["p_vaddr"]), int(s["p_filesz"]), int(s["p_offset"])) for s in ef.iter_segments()
                             if s["p_type"] == "PT_LOAD")
            section = ef.get_section_by_name(".go.type")
            types = int(section["sh_addr"]) if section is not None else 0
            symtab = ef.get_section_by_name(".symtab")
            if not types and isinstance(symtab, SymbolTableSection):
                found = symtab.get_symbol_by_name("runtime.types")
                types = int(found[0]["st_value"]) if found else 0
        return cls(path, segments, types)


class ErrorTypes(Mapping[int, str]):
    """The concrete type of an `error` by its itab's address in one process
    (`*errors.errorString`): read from the file as the records ask, and
    remembered (at most MAX_KNOWN addresses). Not a type: a KeyError."""

    def __init__(self, binary: GoBinary, bias: int) -> None:
        self._binary, self._bias = binary, bias
        self._known: dict[int, str | None] = {}

    def __getitem__(self, itab: int) -> str:
        if itab not in self._known:
            name = self._name_of_itab(itab - self._bias) if self._binary.types else None
            if len(self._known) >= MAX_KNOWN:
                return _found(name, itab)
            self._known[itab] = name
        return _found(self._known[itab], itab)

    def __iter__(self) -> Iterator[int]:
        return iter([k for k, v in self._known.items() if v is not None])

    def __len__(self) -> int:
        return sum(v is not None for v in self._known.values())

    def _name_of_itab(self, address: int) -> str | None:
        if not any(vaddr <= address and address + ITAB_TYPES <= vaddr + filesz
                   for vaddr, filesz, _ in self._binary.segments):
            return None  # one the runtime built (on its heap): the file is not opened for it
        try:
            with open(self._binary.path, "rb") as f:
                words = self._read(f, address, ITAB_TYPES)
                if words is None:
                    return None
                interface, concrete = struct.unpack("<QQ", words)
                if self._type_name(f, interface) != "error":
                    return None
                return self._type_name(f, concrete)
        except OSError:
            return None

    def _read(self, f: BinaryIO, address: int, size: int) -> bytes | None:
        for vaddr, filesz, offset in self._binary.segments:
            if vaddr <= address and address + size <= vaddr + filesz:
                f.seek(offset + address - vaddr)
                data = f.read(size)
                return data if len(data) == size else None
        return None

    def _type_name(self, f: BinaryIO, address: int) -> str | None:
        head = self._read(f, address, TYPE_HEAD)
        if head is None:
            return None
        (offset,) = struct.unpack_from("<i", head, TYPE_NAME)
        start = self._binary.types + offset
        raw = self._read(f, start, 1 + 10)  # the flags byte, then at most a 10-byte varint
        if raw is None or offset <= 0:
            return None
        length, shift, at = 0, 0, 1
        while at < len(raw):
            byte = raw[at]
            length |= (byte & 0x7F) << shift
            at, shift = at + 1, shift + 7
            if byte < 0x80:
                break
        else:
            return None
        if not 0 < length <= MAX_NAME:
            return None
        text = self._read(f, start + at, length)
        if text is None:
            return None
        try:
            name = text.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not name.isprintable():
            return None
        return name[1:] if head[TYPE_FLAGS] & TFLAG_EXTRA_STAR and name.startswith("*") else name


def _found(name: str | None, itab: int) -> str:
    if name is None:
        raise KeyError(itab)
    return name


def read_go_binary(path: str) -> GoBinary | None:
    try:
        return GoBinary.read(path)
    except (OSError, ELFError, ValueError):
        return None
