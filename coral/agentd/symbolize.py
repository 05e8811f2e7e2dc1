"""Addresses of a sampled stack to frames: the function (demangled) from
the ELF symbol table, and where DWARF has it, the source file and line.
An address is placed with the process's /proc/PID/maps; each file is read
once per build-id (or, without one, per path, inode and mtime), whatever
the number of processes and profiles that use it (unwind.PerFile)."""

from __future__ import annotations

import bisect
import contextlib
import os
from dataclasses import dataclass, field

from elftools.common.exceptions import DWARFError, ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from coral.agentd.unwind import PerFile, Unwinder
from coral.demangle import demangle
from coral.procmaps import Mapping, read_maps

MAX_LINE_TABLE_BYTES = 8 << 20  # .debug_line read at most: past it, frames carry no file:line
# push %rbp; mov %rsp,%rbp (two encodings), optionally after endbr64
_FRAME_SETUP = (b"\x55\x48\x89\xe5", b"\x55\x48\x8b\xec")
_ENDBR64 = b"\xf3\x0f\x1e\xfa"
# Where a walk ends anyway: a missing frame pointer there loses no caller.
ENTRY_POINTS = frozenset({"_start", "__libc_start_main", "__libc_start_call_main", "start_thread", "clone", "clone3"})


@dataclass(frozen=True)
class Frame:
    function: str  # demangled; "[MODULE+0xOFFSET]" when no symbol holds the address
    file: str = ""
    line: int = 0
    module: str = ""  # the file it is in (path as the process sees it)


@dataclass
class ElfSymbols:
    """The functions and line table of one file, by link-time address."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    segments: list[tuple[int, int, int]] = field(default_factory=list)  # (vaddr, filesz, offset)
    line_addresses: list[int] = field(default_factory=list)
    line_places: list[tuple[str, int]] = field(default_factory=list)
    framed: list[bool] = field(default_factory=list)  # per function: it begins by setting up %rbp (Go: all do)

    def vaddr(self, file_offset: int) -> int | None:
        for vaddr, filesz, offset in self.segments:
            if offset <= file_offset < offset + filesz:
                return file_offset - offset + vaddr
        return None

    def function_at(self, address: int) -> tuple[str, bool] | None:
        """The function holding `address`, and whether it sets up a frame pointer."""
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.ends[i]:
            return self.names[i], self.framed[i]
        return None

    def line_at(self, address: int) -> tuple[str, int]:
        i = bisect.bisect_right(self.line_addresses, address) - 1
        return self.line_places[i] if i >= 0 else ("", 0)


def read_elf_symbols(path: str) -> ElfSymbols:
    out = ElfSymbols()
    with open(path, "rb") as f:
        ef = ELFFile(f)
        out.segments = [(s["p_vaddr"], s["p_filesz"], s["p_offset"]) for s in ef.iter_segments()
                        if s["p_type"] == "PT_LOAD"]
        functions: dict[int, tuple[int, str]] = {}
        for name in (".symtab", ".dynsym"):
            section = ef.get_section_by_name(name)
            if not isinstance(section, SymbolTableSection):
                continue
            for sym in section.iter_symbols():
                if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF" and sym.name:
                    address = int(sym["st_value"])
                    known = functions.get(address)
                    # Aliases (getpid, __getpid): the name people call it by, without underscores.
                    if known is None or _alias_rank(sym.name) < _alias_rank(known[1]):
                        functions[address] = (max(int(sym["st_size"]), 1), sym.name)
        is_go = ef.get_section_by_name(".gopclntab") is not None
        text = ef.get_section_by_name(".text")
        base, code = (int(text["sh_addr"]), text.data()) if text is not None else (0, b"")
        for address in sorted(functions):
            size, name = functions[address]
            out.starts.append(address)
            out.ends.append(address + size)
            out.names.append(demangle(name) or name)
            inside = base <= address < base + len(code)  # .init, .plt: not looked at, taken as framed
            out.framed.append(is_go or not inside or sets_up_frame(code[address - base:address - base + 8]))
        with contextlib.suppress(DWARFError, ELFError, KeyError, ValueError, IndexError, AttributeError):
            _read_lines(ef, out)
    return out


def _alias_rank(name: str) -> tuple[bool, bool, int]:
    return name.startswith("_") and not name.startswith("_Z"), "@" in name, len(name)


def sets_up_frame(head: bytes) -> bool:
    """Whether a function's first bytes push %rbp and point it at the new frame
    (gcc -fno-omit-frame-pointer, or -O0): a caller is found through its frame."""
    if head.startswith(_ENDBR64):
        head = head[4:]
    return head.startswith(_FRAME_SETUP)


def _read_lines(ef: ELFFile, out: ElfSymbols) -> None:
    section = ef.get_section_by_name(".debug_line")
    if section is None or section["sh_size"] > MAX_LINE_TABLE_BYTES or not ef.has_dwarf_info():
        return
    dwarf = ef.get_dwarf_info()
    rows: dict[int, tuple[str, int]] = {}
    for cu in dwarf.iter_CUs():
        program = dwarf.line_program_for_CU(cu)
        if program is None:
            continue
        files = program["file_entry"]
        first = 0 if program.header["version"] >= 5 else 1
        for entry in program.get_entries():
            state = entry.state
            if state is None or state.end_sequence:
                continue
            index = state.file - first
            if 0 <= index < len(files):
                name = files[index].name.decode(errors="replace")
                rows[state.address] = (os.path.basename(name), int(state.line))
    for address in sorted(rows):
        out.line_addresses.append(address)
        out.line_places.append(rows[address])


def _symbols_or_none(path: str) -> ElfSymbols | None:
    try:
        return read_elf_symbols(path)
    except (OSError, ELFError, DWARFError, ValueError):
        return None


class Symbolizer:
    """Files read once, shared by the profiles of every process (thread-safe)."""

    def __init__(self, max_files: int = 256) -> None:
        self._files = PerFile(_symbols_or_none, max_files)
        self.unwinder = Unwinder()  # the call frame information of the same files

    def symbols(self, pid: int, mapping: Mapping) -> ElfSymbols | None:
        return self._files.get(pid, mapping)

    def frames(self, pid: int, maps: list[Mapping], addresses: tuple[int, ...],
               unwound: bool = False) -> tuple[list[Frame], bool]:
        """The frames of one stack, innermost first; and whether every function
        on it (but a process's or thread's entry point) sets up a frame pointer (else callers may be
        missing: the kernel walks the stack through %rbp). A stack `unwound`
        with call frame information does not depend on them."""
        frames, framed = [], True
        starts = [m.start for m in maps]
        for depth, address in enumerate(addresses):
            # A caller's address is the return address, just past its call: look up the call itself.
            lookup = address if depth == 0 else address - 1
            i = bisect.bisect_right(starts, lookup) - 1
            if i < 0 or lookup >= maps[i].end or not maps[i].path.startswith("/"):
                name = maps[i].path if i >= 0 and lookup < maps[i].end and maps[i].path else "unknown"
                frames.append(Frame(f"[{name}]"))
                continue
            m = maps[i]
            offset = lookup - m.start + m.offset
            symbols = self.symbols(pid, m)
            vaddr = symbols.vaddr(offset) if symbols is not None else None
            found = symbols.function_at(vaddr) if symbols is not None and vaddr is not None else None
            if symbols is None or vaddr is None or found is None:
                frames.append(Frame(f"[{os.path.basename(m.path)}+{offset:#x}]", module=m.path))
                continue
            function, sets_up = found
            framed = framed and (unwound or sets_up or function in ENTRY_POINTS)
            file, line = symbols.line_at(vaddr)
            frames.append(Frame(function, file, line, m.path))
        return frames, framed


def maps_of(pid: int) -> list[Mapping]:
    """The process's executable mappings, or [] if it is gone."""
    try:
        return [m for m in read_maps(pid) if "x" in m.perms]
    except OSError:
        return []
