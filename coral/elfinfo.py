"""Function metadata from an ELF file (pyelftools): symbols, file offsets,
the names a user may write for them (demangled, or a static function's
`file.c:name`), and, where DWARF is present, parameter names and types."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import difflib
import fnmatch
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from elftools.common.exceptions import DWARFError, ELFError
from elftools.dwarf.callframe import FDE
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection, SymbolTableSection

from coral.demangle import demangle, names_for, spelling
from coral.dwarflocations import EntryLocations, FrameBase, OnStack
from coral.dwarftypes import (
    Field,
    HeldString,
    Variants,
    attribute,
    float_base,
    held_string,
    in_memory,
    is_go,
    name_of_type,
    pointee_variants,
    rust_variants,
    struct_fields,
)
from coral.gotypes import GoValue, go_value
from coral.procmaps import Segment, file_offset


class ElfInfoError(Exception):
    pass


class AmbiguousName(ElfInfoError):
    """A name several functions answer to (overloads, instantiations, static
    functions of several files): the candidates name one each."""

    def __init__(self, message: str, candidates: list[str]) -> None:
        super().__init__(message)
        self.candidates = candidates


@dataclass(frozen=True)
class Symbol:
    """One function symbol."""

    name: str  # as in the symbol table (mangled for C++ and Rust)
    address: int
    size: int
    file: str = ""  # a local (static) symbol's source file, from the symbol table's STT_FILE entries


# A file that names one of these has frames an unwinder passes through:
# C++ exceptions, Rust panics, and C built with -fexceptions, whose cleanups
# (pthread_cleanup_push, __attribute__((cleanup))) run when pthread_cancel
# unwinds (docs/native-targets.md, "How returns are seen").
PERSONALITY_ROUTINES = frozenset({"__gxx_personality_v0", "rust_eh_personality", "__gcc_personality_v0"})


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    fields: tuple[Field, ...] = ()  # a pointer to a struct or class: its first members (struct_fields)
    held_string: HeldString | None = None  # its register holds the address of an object holding a string
    variants: Variants | None = None  # a Rust enum (Option, Result)
    pointee_variants: Variants | None = None  # a pointer or reference to a Rust enum (&Option<i64>)
    go: GoValue | None = None  # Go: how ABIInternal assigns it to registers
    float_type: str = ""  # a typedef of a floating-point type: the base type's name (float_base)
    entry_registers: tuple[int, ...] = ()  # C, C++, Rust: DWARF's registers for its parts at the entry (dwarflocations)
    entry_elsewhere: bool = False  # optimized code: DWARF places it elsewhere at the entry (memory, computed, nowhere)
    entry_stack: int = -1  # DWARF places it in the caller's stack at the entry: bytes past the return address


@dataclass(frozen=True)
class FunctionInfo:
    name: str
    address: int  # st_value: link-time virtual address
    size: int
    file_offset: int
    source_file: str = ""
    source_line: int = 0
    parameters: tuple[Parameter, ...] = ()
    return_type: str = ""  # C-like: the single return type
    results: tuple[Parameter, ...] = ()  # Go: named or ~rN results
    inlined_into: tuple[str, ...] = ()  # one per call site the compiler inlined it into: the caller
    result_in_memory: bool = False  # System V: the caller passes where to put the result, in the first register
    return_value: Parameter | None = None  # C, C++, Rust: the result's type, with its held string or variants


@dataclass
class ElfFunctions:
    """The functions of one ELF file, read once."""

    path: str
    symbols: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (address, size)
    segments: list[Segment] = field(default_factory=list)  # (vaddr, filesz, offset) of PT_LOAD
    has_symtab: bool = False
    is_go: bool = False
    unwinds: bool = False  # names a personality routine (C++, Rust, C with -fexceptions; defined or imported)
    functions: list[Symbol] = field(default_factory=list)  # every function symbol, once per (name, address)
    shared_names: set[str] = field(default_factory=set)  # symbol names several functions have (statics of several files)
    _dwarf_cache: dict[str, DwarfFunction] | None = None  # every subprogram by name: read only if needed
    _dwarf_by_address: dict[int, DwarfFunction | None] = field(default_factory=dict)
    _index: dict[str, list[Symbol]] | None = None  # every name a user may write -> its functions (built on demand)
    _spellings: dict[str, list[Symbol]] | None = None  # the index by demangle.spelling (built on a miss)
    _locations: dict[int, Declared] | None = None  # entry address -> where declared (read on the first listing)
    _entry_lines: dict[int, dict[int, int]] = field(default_factory=dict)  # by compile unit: entry address -> line

    @classmethod
    def load(cls, path: str) -> ElfFunctions:
        try:
            with open(path, "rb") as f:
                elf = ElfFunctions(path)
                ef = ELFFile(f)
                elf.is_go = any(ef.get_section_by_name(n) is not None for n in (".go.buildinfo", ".gopclntab"))
                elf.has_symtab = ef.get_section_by_name(".symtab") is not None
                elf.segments = [
                    (s["p_vaddr"], s["p_filesz"], s["p_offset"]) for s in ef.iter_segments() if s["p_type"] == "PT_LOAD"
                ]
                seen: set[tuple[str, int]] = set()
                for section_name in (".symtab", ".dynsym"):
                    section = ef.get_section_by_name(section_name)
                    if not isinstance(section, SymbolTableSection):
                        continue
                    source = ""  # the STT_FILE entry before a run of local symbols names their file
                    for sym in section.iter_symbols():
                        kind = sym["st_info"]["type"]
                        if kind == "STT_FILE":
                            source = os.path.basename(sym.name)
                        if sym.name in PERSONALITY_ROUTINES or sym.name.startswith(
                                tuple(f"{r}@" for r in PERSONALITY_ROUTINES)):
                            elf.unwinds = True
                        if kind == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF" and sym["st_size"] > 0 and sym.name:
                            address, size = int(sym["st_value"]), int(sym["st_size"])
                            first = elf.symbols.setdefault(sym.name, (address, size))
                            if first[0] != address:
                                elf.shared_names.add(sym.name)
                            if (sym.name, address) not in seen:
                                seen.add((sym.name, address))
                                local = sym["st_info"]["bind"] == "STB_LOCAL"
                                elf.functions.append(Symbol(sym.name, address, size, source if local else ""))
                return elf
        except (OSError, ELFError) as exc:
            raise ElfInfoError(f"cannot read ELF file {path}: {exc}") from None

    def object_address(self, name: str) -> int | None:
        """The value of any defined symbol (functions and data), or None."""
        try:
            with open(self.path, "rb") as f:
                ef = ELFFile(f)
                for section_name in (".symtab", ".dynsym"):
                    section = ef.get_section_by_name(section_name)
                    if isinstance(section, SymbolTableSection):
                        for sym in section.get_symbol_by_name(name) or []:
                            if sym["st_shndx"] != "SHN_UNDEF":
                                return int(sym["st_value"])
        except (OSError, ELFError) as exc:
            raise ElfInfoError(f"cannot read ELF file {self.path}: {exc}") from None
        return None

    def file_offset(self, address: int) -> int:
        offset = file_offset(self.segments, address)
        if offset is None:
            raise ElfInfoError(f"address {address:#x} is not backed by the file {self.path} (no loadable segment's file "
                               "bytes hold it)")
        return offset

    def fragments(self, name: str) -> list[tuple[int, int]]:
        """(address, size) of the parts the compiler split off `name` and that
        may hold its exits: `name.cold` (unlikely paths) and `name.part.N`
        (the rest of a partly inlined function), from the symbol table."""
        return [v for n, v in self.symbols.items()
                if n == f"{name}.cold" or n.startswith((f"{name}.cold.", f"{name}.part."))]

    # ------------------------------------------------------------ names

    def _names(self) -> dict[str, list[Symbol]]:
        """Every name a user may write for a function: its symbol, its
        demangled name with and without parameters and template arguments,
        and for a static function `file.c:symbol`."""
        if self._index is None:
            index: dict[str, list[Symbol]] = {}
            for sym in self.functions:
                demangled = demangle(sym.name)
                keys = [sym.name, *(names_for(demangled) if demangled else ())]
                if sym.file:
                    keys += [f"{sym.file}:{k}" for k in keys]
                keys.append(f"{sym.name}@{sym.address:#x}")  # names it alone, when nothing else does
                for key in dict.fromkeys(keys):
                    index.setdefault(key, []).append(sym)
            self._index = index
        return self._index

    def _functions_named(self, name: str) -> list[Symbol]:
        """The distinct functions (by address) that answer to `name`, as
        written or spelt with other spaces (demangle.spelling)."""
        found = self._names().get(name)
        if found is None:
            if self._spellings is None:
                self._spellings = {}
                for key, syms in self._names().items():
                    self._spellings.setdefault(spelling(key), []).extend(syms)
            found = self._spellings.get(spelling(name), [])
        return list({s.address: s for s in found}.values())

    def label(self, sym: Symbol) -> str:
        """The name that names this function alone, as listed: its demangled
        name, or `file.c:name` for a static one whose name others share, or
        else its symbol."""
        demangled = demangle(sym.name)
        keys = [demangled] if demangled else []
        keys += [sym.name] + ([f"{sym.file}:{sym.name}"] if sym.file else [])
        return next((k for k in keys if len(self._functions_named(k)) == 1), f"{sym.name}@{sym.address:#x}")

    def resolve(self, name: str) -> Symbol | None:
        """The one function `name` names; None if none; AmbiguousName if several."""
        if name in self.symbols and name not in self.shared_names:  # a symbol's own name: no index needed
            address, size = self.symbols[name]
            return next((s for s in self.functions if s.name == name and s.address == address),
                        Symbol(name, address, size))
        found = self._functions_named(name)
        if len(found) > 1:
            candidates = sorted(self.label(s) for s in found)
            raise AmbiguousName(f"{name!r} names {len(found)} functions in {self.path}; name one: "
                                f"{', '.join(candidates)}", candidates)
        return found[0] if found else None

    def names(self, pattern: str = "") -> list[str]:
        """Each function once, by its label, if any name it answers to matches `pattern`."""
        index = self._names()
        keys_of: dict[int, list[str]] = {}
        for key, syms in index.items():
            for sym in syms:
                keys_of.setdefault(sym.address, []).append(key)
        out = set()
        for sym in {s.address: s for s in self.functions}.values():
            if not pattern or any(fnmatch.fnmatchcase(k, pattern) for k in keys_of.get(sym.address, [sym.name])):
                out.add(self.label(sym))
        return sorted(out)

    def closest(self, name: str, n: int = 5) -> list[str]:
        """Names like `name`, as people write them (not the NAME@0xADDRESS fallbacks)."""
        written = [k for k in self._names() if "@0x" not in k]
        return difflib.get_close_matches(name, written, n=n, cutoff=0.5)

    def function(self, name: str) -> FunctionInfo | None:
        """The function `name` names, with its DWARF; None if none
        (AmbiguousName, an ElfInfoError, if several)."""
        sym = self.resolve(name)
        if sym is None:
            return None
        d = self._dwarf_at(sym.address) or self._dwarf().get(sym.name, DwarfFunction())
        label = self.label(sym) if self._index is not None else demangle(sym.name) or sym.name
        return FunctionInfo(label, sym.address, sym.size, self.file_offset(sym.address), d.source_file,
                            d.source_line, d.parameters, d.return_type, d.results, d.inlined_into,
                            d.result_in_memory, d.return_value)

    def why_missing(self, name: str) -> str:
        """Why a function cannot be probed when it has no symbol."""
        if not self.has_symtab and not self.symbols:
            return f"{self.path} is stripped (no symbol table): rebuild without -s, or keep the debug symbols"
        if self._dwarf().get(name, DwarfFunction()).inlined:
            return f"{name} is fully inlined (no out-of-line copy to probe): mark it noinline to debug it"
        return ""

    def locations(self, labels: list[str]) -> list[str]:
        """`FILE:LINE` of each function `labels` names (as names() lists them), or ""."""
        if self._locations is None:
            try:
                self._locations = read_dwarf_locations(self.path)
            except ElfInfoError:
                self._locations = {}  # DWARF it cannot read: the names are listed without
        out = []
        for label in labels:
            try:
                sym = self.resolve(label)
            except ElfInfoError:
                sym = None
            out.append(self._declared(sym.address) if sym is not None else "")
        return out

    def _declared(self, address: int) -> str:
        """`FILE:LINE` of the function at `address`; where DWARF names no
        line (Go before 1.20), the line its compile unit's line program
        gives its entry, read for that unit only, once."""
        assert self._locations is not None
        found = self._locations.get(address)
        if found is None:
            return ""
        if not found.line and found.unit not in self._entry_lines:
            try:
                self._entry_lines[found.unit] = read_entry_lines(self.path, found.unit)
            except ElfInfoError:
                self._entry_lines[found.unit] = {}
        return f"{found.source}:{found.line or self._entry_lines[found.unit].get(address, 0)}"

    def _dwarf_at(self, address: int) -> DwarfFunction | None:
        if address not in self._dwarf_by_address:
            names = tuple(n for n, (a, _) in self.symbols.items() if a == address)
            self._dwarf_by_address[address] = read_dwarf_function(self.path, address, names)
        return self._dwarf_by_address[address]

    def _dwarf(self) -> dict[str, DwarfFunction]:
        if self._dwarf_cache is None:
            self._dwarf_cache = read_dwarf_signatures(self.path)
        return self._dwarf_cache


@dataclass(frozen=True)
class DwarfFunction:
    source_file: str = ""
    source_line: int = 0
    parameters: tuple[Parameter, ...] = ()
    return_type: str = ""
    results: tuple[Parameter, ...] = ()
    inlined: bool = False  # only inlined copies exist
    inlined_into: tuple[str, ...] = ()  # callers it was inlined into, one per call site (in its compile unit)
    result_in_memory: bool = False
    return_value: Parameter | None = None



def _completes(die: Any) -> Any:
    """The DIE this one completes: the declaration of a C++ method or Rust
    function (DW_AT_specification), or the abstract copy of an inlined one
    (DW_AT_abstract_origin). Names and types often live only there."""
    for attr in ("DW_AT_specification", "DW_AT_abstract_origin"):
        if attr in die.attributes:
            return die.get_DIE_from_attribute(attr)
    return None


def _holder(die: Any, name: str) -> Any:
    """The DIE that holds attribute `name`: this one, or one it completes."""
    for _ in range(4):
        if die is None or name in die.attributes:
            return die
        die = _completes(die)
    return None


def _described(die: Any, index: int, at_entry: tuple[EntryLocations, int, bool, FrameBase | None] | None = None) -> Parameter:
    name_die, type_die = _holder(die, "DW_AT_name"), _holder(die, "DW_AT_type")
    name = attribute(name_die, "DW_AT_name") if name_die is not None else None
    typed = type_die.get_DIE_from_attribute("DW_AT_type") if type_die is not None else None
    type_name = name_of_type(typed) if typed is not None else "?"
    go = is_go(die)
    held = held_string(typed) if typed is not None and not go else None
    variants = rust_variants(typed) if typed is not None and not go and not held else None
    pointee = pointee_variants(typed) if typed is not None and not go and not held else None
    return Parameter(name.decode(errors="replace") if name else f"arg{index}", type_name,
                     () if held or variants or pointee else struct_fields(typed), held, variants,
                     pointee_variants=pointee,
                     go=go_value(typed) if go and typed is not None else None,
                     float_type=float_base(typed) if typed is not None and not go else "",
                     **_at_entry(die, at_entry))


def _at_entry(die: Any, at_entry: tuple[EntryLocations, int, bool, FrameBase | None] | None) -> dict[str, Any]:
    """Where DWARF puts a parameter at the function's first instruction:
    its registers; or that it is elsewhere (memory, a computed value), or,
    in optimized code (some parameter has a location list), nowhere (no
    location at all). Nothing where DWARF does not say for that address."""
    if at_entry is None:
        return {}
    locations, pc, optimized, frame = at_entry
    if "DW_AT_location" not in die.attributes:
        return {"entry_elsewhere": optimized}
    registers = locations.registers_at(die, pc, frame)
    if isinstance(registers, OnStack):
        return {"entry_stack": registers.offset}
    if registers:
        return {"entry_registers": registers}
    return {"entry_elsewhere": registers is not None}


def _cus_at(dwarf: Any, address: int) -> Iterator[Any]:
    """The compile units that may hold code at `address`: the one
    .debug_aranges names, else those whose range covers it."""
    aranges = dwarf.get_aranges()
    offset = aranges.cu_offset_at_addr(address) if aranges is not None else None
    if offset is not None:
        yield dwarf.get_CU_at(offset)
        return
    for cu in dwarf.iter_CUs():
        top = cu.get_top_DIE()
        low, high = top.attributes.get("DW_AT_low_pc"), top.attributes.get("DW_AT_high_pc")
        if "DW_AT_ranges" in top.attributes:
            yield cu  # ranges not read here: the DIEs tell
        elif low is not None and high is not None:
            end = high.value if high.form == "DW_FORM_addr" else low.value + high.value
            if low.value <= address < end:
                yield cu


def _linkage_name(die: Any) -> str:
    holder = _holder(die, "DW_AT_linkage_name") or _holder(die, "DW_AT_MIPS_linkage_name")
    if holder is None:
        return ""
    value = attribute(holder, "DW_AT_linkage_name") or attribute(holder, "DW_AT_MIPS_linkage_name")
    return value.decode(errors="replace") if value else ""


def read_dwarf_function(path: str, address: int, symbols: tuple[str, ...] = ()) -> DwarfFunction | None:
    """The DWARF of the function whose code starts at `address` (its
    symbol's value): the subprogram whose low_pc it is, or, for one split
    in parts (DW_AT_ranges: a .cold part), whose linkage name is one of its
    `symbols`. So C++ and Rust functions, whose DWARF names are not their
    symbols, are found. Only the compile units that may hold it are read (a
    Rust binary's DWARF takes 6 s to read whole). None when there is none."""
    with _dwarf_of(path) as dwarf:
        for cu in _cus_at(dwarf, address) if dwarf is not None else ():
            for die in cu.iter_DIEs():
                if die.tag != "DW_TAG_subprogram":
                    continue
                if attribute(die, "DW_AT_low_pc") == address or (
                        "DW_AT_ranges" in die.attributes and _linkage_name(die) in symbols):
                    found = _subprogram(dwarf, die)
                    return dataclasses.replace(found, inlined_into=_inlined_call_sites(cu, die))
    return None


def _origins(die: Any) -> set[int]:
    """The offsets of the DIEs that stand for this function: itself, and
    the abstract instance or declaration it completes."""
    out = {die.offset}
    for attr in ("DW_AT_abstract_origin", "DW_AT_specification"):
        if attr in die.attributes:
            other = die.get_DIE_from_attribute(attr)
            out.add(other.offset)
            out |= _origins(other) if other.offset != die.offset else set()
    return out


def _inlined_call_sites(cu: Any, function: Any) -> tuple[str, ...]:
    """Each call site in the compile unit where the compiler inlined the
    function (DW_TAG_inlined_subroutine whose origin is it): the name of
    the function it sits in. A probe on the out-of-line copy sees none of
    their calls."""
    origins = _origins(function)
    out = []
    for die in cu.iter_DIEs():
        if die.tag != "DW_TAG_inlined_subroutine" or "DW_AT_abstract_origin" not in die.attributes:
            continue
        if die.get_DIE_from_attribute("DW_AT_abstract_origin").offset not in origins:
            continue
        caller = die.get_parent()
        while caller is not None and caller.tag != "DW_TAG_subprogram":
            caller = caller.get_parent()
        holder = _holder(caller, "DW_AT_name") if caller is not None else None
        name = attribute(holder, "DW_AT_name") if holder is not None else None
        out.append(name.decode(errors="replace") if name else "?")
    return tuple(out)


@contextlib.contextmanager
def _dwarf_of(path: str) -> Iterator[Any]:
    """The file's DWARF (None if it has none), or that of its separate
    debug file (debug_file_for), readable inside the block; any read error
    in the block becomes one ElfInfoError."""
    try:
        with contextlib.ExitStack() as files:
            ef = ELFFile(files.enter_context(open(path, "rb")))
            if not _has_debug_info(ef):
                separate = debug_file_for(path, ef)
                if separate is None:
                    yield None
                    return
                ef = ELFFile(files.enter_context(open(separate, "rb")))
            yield ef.get_dwarf_info() if _has_debug_info(ef) else None
    except (OSError, ELFError, KeyError, ValueError) as exc:
        raise ElfInfoError(f"cannot read DWARF of {path}: {exc}") from None


def _has_debug_info(ef: ELFFile) -> bool:
    """DWARF's own sections, compressed the old way too (.zdebug_info: Go 1.17
    and 1.18, gcc -gz=zlib-gnu); pyelftools' has_dwarf_info also says yes
    for .eh_frame alone."""
    return any(ef.get_section_by_name(name) is not None for name in (".debug_info", ".zdebug_info"))


DEBUG_ROOT = "/usr/lib/debug"  # where Debian's -dbgsym packages put debug files


def build_id_of(ef: ELFFile) -> str:
    section = ef.get_section_by_name(".note.gnu.build-id")
    for note in section.iter_notes() if isinstance(section, NoteSection) else ():
        if note["n_type"] == "NT_GNU_BUILD_ID":
            return str(note["n_desc"])
    return ""


def debug_file_for(path: str, ef: ELFFile, root: str = DEBUG_ROOT) -> str | None:
    """Where a file built with its DWARF split off keeps it, looked for as
    gdb does: by build id (ROOT/.build-id/ab/cdef....debug), then by the
    name in .gnu_debuglink (beside the file, in .debug/ beside it, or under
    ROOT and the file's directory), that file's CRC-32 checked."""
    build_id = build_id_of(ef)
    if len(build_id) > 2:
        candidate = os.path.join(root, ".build-id", build_id[:2], build_id[2:] + ".debug")
        if os.path.isfile(candidate):
            return candidate
    link = ef.get_section_by_name(".gnu_debuglink")
    if link is None:
        return None
    data = link.data()
    name = data.split(b"\0", 1)[0].decode(errors="replace")
    crc_at = (len(name) + 1 + 3) & ~3
    if not name or "/" in name or len(data) < crc_at + 4:
        return None
    crc = int.from_bytes(data[crc_at:crc_at + 4], "little" if ef.little_endian else "big")
    here = os.path.dirname(os.path.realpath(path))
    for candidate in (os.path.join(here, name), os.path.join(here, ".debug", name),
                      os.path.join(root, here.lstrip("/"), name)):
        if os.path.isfile(candidate) and os.path.realpath(candidate) != os.path.realpath(path):
            with open(candidate, "rb") as f:
                if zlib.crc32(f.read()) == crc:
                    return candidate
    return None


def _subprogram(dwarf: Any, die: Any) -> DwarfFunction:
    formal = [c for c in die.iter_children() if c.tag == "DW_TAG_formal_parameter"]
    low_pc = attribute(die, "DW_AT_low_pc")
    at_entry = None
    if isinstance(low_pc, int) and not is_go(die):
        locations = EntryLocations(dwarf)
        at_entry = (locations, low_pc, any(locations.has_list(c) for c in formal), _frame_base(dwarf, die, low_pc))
    params = tuple(_described(c, i, at_entry) for i, c in enumerate(formal)
                   if not attribute(c, "DW_AT_variable_parameter"))
    results = tuple(_described(c, i) for i, c in enumerate(formal) if attribute(c, "DW_AT_variable_parameter"))
    if is_go(die) and b"[go.shape." in (attribute(die, "DW_AT_name") or b"") and \
            not any(p.name == ".dict" for p in params):
        # A generic function's shape instance takes its dictionary's address
        # first, in RAX; Go 1.19's DWARF does not list it (Go 1.27's does).
        params = (Parameter(".dict", "unsafe.Pointer", go=GoValue("unsafe.Pointer", 1)), *params)
    typed = _holder(die, "DW_AT_type")
    ret_die = typed.get_DIE_from_attribute("DW_AT_type") if typed is not None else None
    ret = name_of_type(ret_die) if ret_die is not None else "void"
    source, line = _declared_at(dwarf, die)
    memory = not is_go(die) and in_memory(ret_die)
    value = None
    if ret_die is not None and not is_go(die):
        value = Parameter("", ret, held_string=held_string(ret_die) if memory else None,
                          variants=None if memory else rust_variants(ret_die), float_type=float_base(ret_die))
    return DwarfFunction(source, line, params, ret, results, result_in_memory=memory, return_value=value)


def _frame_base(dwarf: Any, die: Any, low_pc: int) -> FrameBase | None:
    """The function's frame base, where an offset from it can be placed:
    the CFA (DW_OP_call_frame_cfa: GCC), or RSP (DW_OP_reg7: LLVM without
    a frame pointer), whose distance to the CFA in the function's body is
    the CFA offset of the longest range of its call frame information's
    rows (all RSP-based; the prologue and epilogue are shorter)."""
    frame_base = attribute(die, "DW_AT_frame_base")
    if frame_base == [0x9C]:  # DW_OP_call_frame_cfa
        return FrameBase(is_cfa=True)
    if frame_base != [0x57]:  # DW_OP_reg7 (RSP)
        return None
    fde = _fde_at(dwarf, low_pc)
    if fde is None:
        return None
    try:
        table = fde.get_decoded().table
    except (DWARFError, KeyError, ValueError, AssertionError, TypeError):
        return None
    end = fde.header["initial_location"] + fde.header["address_range"]
    spans: dict[int, int] = {}
    for row, after in zip(table, [*table[1:], None], strict=True):
        cfa = row["cfa"]
        if cfa.expr is not None or cfa.reg != 7:
            return None
        spans[cfa.offset] = spans.get(cfa.offset, 0) + (after["pc"] if after else end) - row["pc"]
    return FrameBase(is_cfa=False, cfa_offset=max(spans, key=lambda k: spans[k])) if spans else None


def _fde_at(dwarf: Any, address: int) -> Any:
    """The .eh_frame FDE whose range holds `address`, or None (none there,
    or a separate debug file, whose .eh_frame holds nothing)."""
    index = getattr(dwarf, "_coral_fdes", None)
    if index is None:
        try:
            fdes = [e for e in dwarf.EH_CFI_entries() if isinstance(e, FDE)] if dwarf.has_EH_CFI() else []
        except (DWARFError, ELFError, KeyError, ValueError, AssertionError, TypeError, struct.error):
            fdes = []
        fdes.sort(key=lambda e: e.header["initial_location"])
        index = ([e.header["initial_location"] for e in fdes], fdes)
        dwarf._coral_fdes = index
    starts, fdes = index
    i = bisect.bisect_right(starts, address) - 1
    if i < 0 or address >= starts[i] + fdes[i].header["address_range"]:
        return None
    return fdes[i]


def _declared_at(dwarf: Any, die: Any, entry_line: bool = True) -> tuple[str, int]:
    """The file (as the line program names it) and line a subprogram is
    declared at. Go before 1.20 gives no DW_AT_decl_line: then (if
    `entry_line`) the line the line program gives its first instruction,
    which Go sets at its `func` line; else 0."""
    declared = _holder(die, "DW_AT_decl_file")
    if declared is None:
        return "", 0
    line_program = dwarf.line_program_for_CU(declared.cu)
    files = line_program["file_entry"] if line_program else []
    idx = attribute(declared, "DW_AT_decl_file") - (1 if declared.cu.header["version"] < 5 else 0)
    source = files[idx].name.decode(errors="replace") if 0 <= idx < len(files) else ""
    line = attribute(declared, "DW_AT_decl_line")
    if line is None and entry_line:
        line = _entry_lines(line_program).get(attribute(die, "DW_AT_low_pc"))
    return source, line or 0


def _entry_lines(line_program: Any) -> dict[int, int]:
    """Address -> line of the first row of a compile unit's line program at each address."""
    rows: dict[int, int] = {}
    for row in line_program.get_entries() if line_program is not None else ():
        if row.state is not None and not row.state.end_sequence:
            rows.setdefault(row.state.address, row.state.line)
    return rows


def read_entry_lines(path: str, unit: int) -> dict[int, int]:
    """_entry_lines of the compile unit at offset `unit` of the file's DWARF."""
    with _dwarf_of(path) as dwarf:
        return _entry_lines(dwarf.line_program_for_CU(dwarf.get_CU_at(unit))) if dwarf is not None else {}


@dataclass(frozen=True)
class Declared:
    source: str
    line: int  # 0: DWARF names none (Go before 1.20)
    unit: int  # the offset of its compile unit


def read_dwarf_locations(path: str) -> dict[int, Declared]:
    """Entry address -> where every subprogram with code is declared.
    Reads all of the DWARF once, but no line program (a Go binary's take
    a second to read: Go before 1.20 names no line, read_entry_lines
    finds it)."""
    out: dict[int, Declared] = {}
    with _dwarf_of(path) as dwarf:
        for cu in dwarf.iter_CUs() if dwarf is not None else ():
            for die in cu.iter_DIEs():
                if die.tag != "DW_TAG_subprogram" or "DW_AT_low_pc" not in die.attributes:
                    continue
                source, line = _declared_at(dwarf, die, entry_line=False)
                if source:
                    out.setdefault(die.attributes["DW_AT_low_pc"].value, Declared(source, line, cu.cu_offset))
    return out


def read_dwarf_signatures(path: str) -> dict[str, DwarfFunction]:
    """DWARF name -> source location, parameters and results of every
    subprogram (Go marks results as DW_AT_variable_parameter), and which are
    only inlined. Reads all of the DWARF: for a name with no symbol."""
    out: dict[str, DwarfFunction] = {}
    with _dwarf_of(path) as dwarf:
        for cu in dwarf.iter_CUs() if dwarf is not None else ():
            for die in cu.iter_DIEs():
                if die.tag != "DW_TAG_subprogram" or "DW_AT_name" not in die.attributes:
                    continue
                name = die.attributes["DW_AT_name"].value.decode(errors="replace")
                if "DW_AT_low_pc" in die.attributes:
                    out[name] = _subprogram(dwarf, die)
                elif attribute(die, "DW_AT_inline") in (1, 3):
                    out.setdefault(name, DwarfFunction(inlined=True))
    return out
