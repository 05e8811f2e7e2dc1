"""Unwinding a copied user stack with the binaries' .eh_frame (DWARF call
frame information), for code built without frame pointers. The BPF program
sends RIP, RSP, RBP and a bounded copy of the stack from RSP
(bpf/coral_profile.c); each step finds the row of the function's FDE for
the current address, computes the canonical frame address (CFA) from RSP
or RBP, reads the return address below it and RBP where the row saved it,
and moves to the caller. It stops at a function without call frame
information, at an undefined return address (the thread's start), or where
the copy ends (then the stack is marked truncated).

x86-64 only: DWARF registers 6 (RBP), 7 (RSP) and 16 (the return address)."""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from elftools.common.exceptions import DWARFError, ELFError
from elftools.dwarf.callframe import FDE, RegisterRule
from elftools.elf.elffile import ELFFile

from coral.elfinfo import build_id_of
from coral.procmaps import Mapping

T = TypeVar("T")

RBP, RSP, RA = 6, 7, 16
MAX_FRAMES = 127  # as many as the kernel's own walk gives


@dataclass(frozen=True)
class Row:
    """How to find the caller from one address range of a function."""

    cfa_register: int  # RSP or RBP
    cfa_offset: int
    ra_offset: int | None  # from the CFA; None: undefined (the outermost frame)
    rbp_offset: int | None  # where RBP was saved, from the CFA; None: unchanged


@dataclass
class CallFrames:
    """The FDEs of one file, by link-time address; each decoded when first used."""

    starts: list[int] = field(default_factory=list)
    fdes: list[Any] = field(default_factory=list)
    segments: list[tuple[int, int, int]] = field(default_factory=list)  # (vaddr, filesz, offset)
    _rows: dict[int, list[tuple[int, Row | None]] | None] = field(default_factory=dict)

    def vaddr(self, file_offset: int) -> int | None:
        for vaddr, filesz, offset in self.segments:
            if offset <= file_offset < offset + filesz:
                return file_offset - offset + vaddr
        return None

    def row(self, address: int) -> Row | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i < 0:
            return None
        fde = self.fdes[i]
        if address >= fde.header["initial_location"] + fde.header["address_range"]:
            return None
        if i not in self._rows:
            self._rows[i] = _decode(fde)
        rows = self._rows[i]
        if not rows:
            return None
        j = bisect.bisect_right([pc for pc, _ in rows], address) - 1
        return rows[j][1] if j >= 0 else None


def _decode(fde: Any) -> list[tuple[int, Row | None]] | None:
    try:
        table = fde.get_decoded().table
    except (DWARFError, KeyError, ValueError, AssertionError, TypeError):  # an opcode pyelftools does not know
        return None
    rows: list[tuple[int, Row | None]] = []
    for entry in table:
        cfa = entry["cfa"]
        if cfa.expr is not None or cfa.reg not in (RSP, RBP):
            rows.append((entry["pc"], None))  # a CFA from an expression (PLT stubs, signal frames): stop there
            continue
        ra = entry.get(RA)
        ra_offset = _offset(ra)
        if ra_offset is None and not (isinstance(ra, RegisterRule) and ra.type == RegisterRule.UNDEFINED):
            ra_offset = -8  # the x86-64 default: the return address is just below the CFA
        rbp_offset = _offset(entry.get(RBP))
        rows.append((entry["pc"], Row(cfa.reg, cfa.offset, ra_offset, rbp_offset)))
    return rows


def _offset(rule: Any) -> int | None:
    if isinstance(rule, RegisterRule) and rule.type == RegisterRule.OFFSET and isinstance(rule.arg, int):
        return rule.arg
    return None


def read_call_frames(path: str) -> CallFrames | None:
    """The .eh_frame FDEs of a file, or None if it has none."""
    with open(path, "rb") as f:
        ef = ELFFile(f)
        if ef.get_section_by_name(".eh_frame") is None:
            return None
        out = CallFrames(segments=[(s["p_vaddr"], s["p_filesz"], s["p_offset"]) for s in ef.iter_segments()
                                   if s["p_type"] == "PT_LOAD"])
        dwarf = ef.get_dwarf_info()
        fdes = sorted((e for e in dwarf.EH_CFI_entries() if isinstance(e, FDE)),
                      key=lambda e: e.header["initial_location"])
        for fde in fdes:  # their instructions are parsed here; the rows are computed when first used
            out.starts.append(fde.header["initial_location"])
            out.fdes.append(fde)
        return out


def build_id(path: str) -> str:
    """The file's GNU build-id, hex; "" if it has none or is no ELF file."""
    with contextlib.suppress(OSError, ELFError, ValueError, KeyError, AssertionError), open(path, "rb") as f:
        return build_id_of(ELFFile(f))
    return ""


class PerFile(Generic[T]):
    """What was read from a file a process maps, once per build-id (the same
    build at another path, in another container, is the same file) or, for
    a file without one, per (path, inode, mtime), whichever process maps
    it: thread-safe, at most `max_files` kept (the oldest goes first).
    `read` returns None for a file it cannot use."""

    def __init__(self, read: Callable[[str], T | None], max_files: int) -> None:
        self._read = read
        self._keys: dict[tuple[str, int, int], str] = {}  # (path, inode, mtime) -> its build-id, or a name of its own
        self._files: dict[str, T | None] = {}
        self._lock = threading.Lock()
        self.max_files = max_files

    def get(self, pid: int, mapping: Mapping) -> T | None:
        # Through /proc/PID/root: the process may live in another mount namespace.
        path = f"/proc/{pid}/root{mapping.path}"
        try:
            st = os.stat(path)
        except OSError:
            return None
        where = (mapping.path, st.st_ino, st.st_mtime_ns)
        with self._lock:
            key = self._keys.get(where)
            if key is not None and key in self._files:
                return self._files[key]
        if key is None:
            key = build_id(path) or f"{where}"
        with self._lock:
            if key in self._files:
                self._keys[where] = key
                return self._files[key]
        value = self._read(path)
        with self._lock:
            if len(self._files) >= self.max_files:
                self._files.pop(next(iter(self._files)))
            if len(self._keys) >= 4 * self.max_files:
                self._keys.pop(next(iter(self._keys)))
            self._keys[where] = key
            self._files[key] = value
        return value


def _call_frames_or_none(path: str) -> CallFrames | None:
    with contextlib.suppress(OSError, ELFError, DWARFError, ValueError, KeyError, AssertionError):
        return read_call_frames(path)
    return None


class Unwinder:
    """Call frame information read once per file (PerFile), shared by every profile and --stack session."""

    def __init__(self, max_files: int = 64) -> None:
        self._files = PerFile(_call_frames_or_none, max_files)

    def frames_of(self, pid: int, mapping: Mapping) -> CallFrames | None:
        return self._files.get(pid, mapping)

    def unwind(self, pid: int, maps: list[Mapping], ip: int, sp: int, bp: int,
               stack: bytes) -> tuple[tuple[int, ...], bool] | None:
        """The return addresses of a copied stack, innermost first, and
        whether the copy ended before the stack did (truncated); None if the
        sampled function itself has no call frame information."""
        starts = [m.start for m in maps]
        addresses = [ip]
        bottom, top = sp, sp + len(stack)

        def word(at: int) -> int | None:
            if bottom <= at and at + 8 <= top:
                return int(struct.unpack_from("<Q", stack, at - bottom)[0])
            return None

        for depth in range(MAX_FRAMES):
            look = ip if depth == 0 else ip - 1  # a return address is past its call
            i = bisect.bisect_right(starts, look) - 1
            if i < 0 or look >= maps[i].end or not maps[i].path.startswith("/"):
                return (tuple(addresses), False) if depth else None
            m = maps[i]
            cfi = self.frames_of(pid, m)
            vaddr = cfi.vaddr(look - m.start + m.offset) if cfi is not None else None
            row = cfi.row(vaddr) if cfi is not None and vaddr is not None else None
            if row is None:
                return (tuple(addresses), False) if depth else None
            if row.ra_offset is None:
                return tuple(addresses), False  # the outermost frame
            cfa = (sp if row.cfa_register == RSP else bp) + row.cfa_offset
            ra = word(cfa + row.ra_offset)
            if ra is None:
                return tuple(addresses), True  # the copy ends here
            if row.rbp_offset is not None:
                saved = word(cfa + row.rbp_offset)
                if saved is None:
                    return tuple(addresses), True
                bp = saved
            sp, ip = cfa, ra
            if ip == 0:
                return tuple(addresses), False
            addresses.append(ip)
        return tuple(addresses), True

