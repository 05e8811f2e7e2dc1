"""Python frames of a profile's samples: the profiling program gives, for
each frame, a code object's address and an instruction pointer in the
sampled process; this reads the code object's qualified name, file and
line table from /proc/PID/mem, by the layout the process's SDK registered
(PythonLayout, docs/protocol.md), and puts the frames in the native stack
where the interpreter's evaluation loop runs them.

The layout is the process's word about itself: every read is bounded, and
a wrong layout or a freed code object gives a frame named `[python]`, never
an error."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

from coral.agentd.symbolize import Frame
from coral.proto import coral_pb2 as pb

MAX_OFFSET = 1 << 16  # any layout offset past this is refused at registration
MAX_NAME = 500  # characters of a qualified name or file name read
MAX_LINE_TABLE = 1 << 16  # bytes of a line table read
UNKNOWN = Frame("[python]", module="python")
EVAL_LOOP = "_PyEval_EvalFrameDefault"
LAYOUT_FIELDS = tuple(f.name for f in pb.PythonLayout.DESCRIPTOR.fields if f.name not in ("version_hex", "interpreter"))


def check_layout(layout: pb.PythonLayout) -> str:
    """Why a registered layout cannot be used, or "" (docs/protocol.md)."""
    if layout.version_hex < 0x030B0000:
        return "python_layout.version_hex must be CPython 3.11 or later"
    if not layout.interpreter:
        return "python_layout.interpreter must not be 0"
    for name in LAYOUT_FIELDS:
        if getattr(layout, name) >= MAX_OFFSET:
            return f"python_layout.{name} must be below {MAX_OFFSET}"
    return ""


@dataclass(frozen=True)
class Code:
    """What a frame needs of one code object."""

    qualname: str
    filename: str
    first_line: int
    first_instruction: int  # address of its first code unit
    lines: tuple[tuple[int, int, int], ...]  # (first unit, end unit, line; 0: none), in order

    def line_at(self, instr: int) -> int:
        unit = (instr - self.first_instruction) // 2
        for start, end, line in self.lines:
            if start <= unit < end:
                return line or self.first_line
        return self.first_line


def _varint(table: bytes, i: int) -> tuple[int, int]:
    """A line table's unsigned number: 6 bits a byte, 0x40 meaning more follow."""
    b = table[i]
    value, shift, i = b & 63, 6, i + 1
    while b & 64:
        b = table[i]
        value |= (b & 63) << shift
        shift, i = shift + 6, i + 1
    return value, i


def _svarint(table: bytes, i: int) -> tuple[int, int]:
    value, i = _varint(table, i)
    return (-(value >> 1) if value & 1 else value >> 1), i


def line_ranges(table: bytes, first_line: int) -> tuple[tuple[int, int, int], ...]:
    """CPython 3.11+'s location table (co_linetable) as code-unit ranges and
    their line. Each entry: a byte 1CCCCLLL (C: the form, L+1: code units),
    then by form: 15 no location; 14 a long form (line delta, end line,
    column, end column); 13 a line delta only; 10 to 12 the line moved by
    C-10, two column bytes; 0 to 9 same line, one column byte. A malformed
    table ends the ranges where it breaks."""
    out: list[tuple[int, int, int]] = []
    line, unit, i = first_line, 0, 0
    try:
        while i < len(table):
            b = table[i]
            code, length, i = (b >> 3) & 15, (b & 7) + 1, i + 1
            here = line
            if code == 15:
                here = 0
            elif code == 14:
                delta, i = _svarint(table, i)
                line += delta
                here = line
                for _ in range(3):  # end line, column, end column
                    _, i = _varint(table, i)
            elif code == 13:
                delta, i = _svarint(table, i)
                line += delta
                here = line
            elif code >= 10:
                line += code - 10
                here = line
                i += 2
            else:
                i += 1
            out.append((unit, unit + length, here))
            unit += length
    except IndexError:
        pass
    return tuple(out)


class ProcessMemory:
    """Bounded reads of one process's memory; None where they fail."""

    def __init__(self, pid: int) -> None:
        self.file: io.FileIO | None = None
        if pid <= 0:
            return
        try:
            self.file = open(f"/proc/{pid}/mem", "rb", buffering=0)  # noqa: SIM115 (closed by close())
        except OSError:
            self.file = None

    def read(self, address: int, size: int) -> bytes | None:
        if self.file is None or not 0 < address < 1 << 47 or size <= 0:
            return None
        try:
            self.file.seek(address)
            data = self.file.read(size)
        except (OSError, OverflowError, ValueError):
            return None
        return data if len(data) == size else None

    def u64(self, address: int) -> int | None:
        data = self.read(address, 8)
        return struct.unpack("<Q", data)[0] if data else None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class PythonFrames:
    """Names the Python frames of one process for one profile or session
    (code objects are cached by address: one that is freed and another made
    at its address is taken for the first). /proc/PID/mem is open only
    while frames() reads."""

    def __init__(self, pid: int, layout: pb.PythonLayout, max_codes: int = 65536) -> None:
        self.pid = pid
        self.layout = layout
        self.max_codes = max_codes
        self.codes: dict[int, Code | None] = {}
        self.memory = ProcessMemory(0)  # opened only while code objects are read (frames())

    def frames(self, pairs: tuple[tuple[int, int], ...]) -> list[Frame]:
        """Frames for (code object, instruction pointer) pairs, in their order."""
        unknown = [c for c, _ in pairs if c not in self.codes]
        if unknown:
            if len(self.codes) + len(unknown) > self.max_codes:
                self.codes.clear()  # a bound, not an LRU: a profile or session sees far fewer code objects
            self.memory = ProcessMemory(self.pid)
            try:
                for address in unknown:
                    self.codes[address] = self._code(address)
            finally:
                self.memory.close()
        out = []
        for code_address, instr in pairs:
            code = self.codes.get(code_address)
            out.append(Frame(code.qualname, code.filename, code.line_at(instr), "python") if code else UNKNOWN)
        return out

    def _code(self, address: int) -> Code | None:
        lay, mem = self.layout, self.memory
        qualname = self._str(mem.u64(address + lay.code_qualname))
        filename = self._str(mem.u64(address + lay.code_filename))
        first = mem.read(address + lay.code_firstlineno, 4)
        if qualname is None or filename is None or first is None:
            return None
        first_line = struct.unpack("<i", first)[0]
        table = self._bytes(mem.u64(address + lay.code_linetable))
        return Code(qualname, filename, first_line, address + lay.code_adaptive,
                    line_ranges(table, first_line) if table else ())

    def _bytes(self, address: int | None) -> bytes | None:
        if not address:
            return None
        size = self.memory.u64(address + self.layout.bytes_size)
        if size is None or size > MAX_LINE_TABLE:
            return None
        return self.memory.read(address + self.layout.bytes_data, size) if size else b""

    def _str(self, address: int | None) -> str | None:
        """A str object's text: compact, 1, 2 or 4 bytes a character (the
        state word: kind in bits 2-4, compact bit 5, ascii bit 6)."""
        if not address:
            return None
        lay, mem = self.layout, self.memory
        length, state = mem.u64(address + lay.unicode_length), mem.read(address + lay.unicode_state, 4)
        if length is None or state is None:
            return None
        bits = struct.unpack("<I", state)[0]
        kind, compact, ascii_ = (bits >> 2) & 7, (bits >> 5) & 1, (bits >> 6) & 1
        if not compact or kind not in (1, 2, 4):
            return None
        n = min(length, MAX_NAME)
        data = mem.read(address + (lay.unicode_ascii_data if ascii_ else lay.unicode_compact_data), n * kind)
        if data is None:
            return None
        codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
        return data.decode(codec, errors="replace")


def python_pairs(raw: bytes, at: int, depth: int, frames: int) -> tuple[tuple[int, int], ...]:
    """struct py_stack's code and instr arrays (bpf/coral_pystack.h; the
    code array at `at`), the first `depth`, shim frames (code 0) left out."""
    n = max(0, min(depth, frames))
    code = struct.unpack_from(f"<{n}Q", raw, at)
    instr = struct.unpack_from(f"<{n}Q", raw, at + 8 * frames)
    return tuple((c, i) for c, i in zip(code, instr, strict=True) if c)


def set_python_layouts(table: Any, layouts: dict[int, pb.PythonLayout]) -> None:
    """Each process's PythonLayout into a BPF program's `python` map
    (bpf/coral_python.h: struct py_layout, its fields named as the proto's)."""
    for pid, layout in layouts.items():
        leaf = table.Leaf()
        for name, _ in leaf._fields_:
            if name != "pad":
                setattr(leaf, name, getattr(layout, name))
        table[table.Key(pid)] = leaf


def merge(native: list[Frame], python: list[Frame]) -> list[Frame]:
    """Native frames and Python frames, both outermost first, as one stack:
    the native frames up to the outermost evaluation loop, the Python
    frames, then the native frames past the innermost one (C code a Python
    function called). Without an evaluation loop among the native frames
    (a walk cut before it reached the interpreter), they are the innermost
    ones: the Python frames go outside them."""
    if not python:
        return native
    loops = [i for i, f in enumerate(native) if f.function == EVAL_LOOP]
    if not loops:
        return python + native
    return native[:loops[0]] + python + native[loops[-1] + 1:]
