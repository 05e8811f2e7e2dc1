"""From a process's function metadata to the exact instructions to probe.

The agent does not take addresses on trust: it finds the executable mapping
of the file in /proc/PID/maps (by inode), computes the runtime address
itself, checks in the file's own symbol table that the offset is where a
function starts, and for Go, C++ and Rust disassembles the function
(capstone) to find every RET, so each probe sits on an instruction
boundary it has checked."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import capstone

from coral import procmaps
from coral.agentd.engine import SITE_ENTRY, SITE_GO, SITE_GO_RET, SITE_PYTHON, SITE_RET, SITE_TAIL, Site
from coral.daemon.errors import InvalidArgument, PermissionDenied
from coral.elfinfo import ElfFunctions, ElfInfoError, Symbol
from coral.goitabs import ErrorTypes, GoBinary, read_go_binary
from coral.proto import coral_pb2 as pb


def read_maps(pid: int) -> list[procmaps.Mapping]:
    try:
        return procmaps.read_maps(pid)
    except OSError as exc:
        raise PermissionDenied(f"cannot read /proc/{pid}/maps: {exc.strerror}") from None


def own_function_site(function: Any) -> Site:
    """The entry site of a C function (a ctypes function pointer) in this
    process: where the agent calibrates its probes' cost."""
    address = ctypes.cast(function, ctypes.c_void_p).value or 0
    pid = os.getpid()
    for m in read_maps(pid):
        if m.start <= address < m.end and m.path.startswith("/"):
            return Site(pid=pid, path=m.path, file_offset=address - m.start + m.offset, runtime_ip=address,
                        flags=SITE_ENTRY, uretprobe=True)
    raise PermissionDenied(f"{address:#x} is not in a file mapping of process {pid}")


def runtime_addresses(pid: int, path: str, file_offsets: list[int]) -> list[int]:
    """Where each of `file_offsets` of the file at `path` is executed in
    process `pid` (one reading of its maps)."""
    try:
        inode = os.stat(path).st_ino
    except OSError as exc:
        raise PermissionDenied(f"cannot stat {path}: {exc.strerror}") from None
    executable = [m for m in read_maps(pid) if m.inode == inode and "x" in m.perms]
    out = []
    for file_offset in file_offsets:
        m = next((m for m in executable if m.offset <= file_offset < m.offset + (m.end - m.start)), None)
        if m is None:
            raise PermissionDenied(f"offset {file_offset:#x} of {path} is not in an executable mapping of process {pid}")
        out.append(m.start + file_offset - m.offset)
    return out


def runtime_address(pid: int, path: str, file_offset: int) -> int:
    """Where `file_offset` of the file at `path` is executed in process `pid`."""
    return runtime_addresses(pid, path, [file_offset])[0]


def attach_path(pid: int, executable: str, meta: pb.FunctionMetadata) -> str:
    """The path the kernel opens, inside the process's own mount namespace:
    its executable, or a file it has mapped. Nothing else."""
    if meta.pid and meta.pid != pid:
        raise PermissionDenied(f"metadata names pid {meta.pid}, registered process is {pid}")
    if not meta.binary_path or meta.binary_path == executable:
        return f"/proc/{pid}/exe"
    if not any(m.path == meta.binary_path for m in read_maps(pid)):
        raise PermissionDenied(f"{meta.binary_path} is not mapped in process {pid}")
    return f"/proc/{pid}/root{meta.binary_path}"


@functools.lru_cache(maxsize=64)
def _read_elf(path: str, dev: int, inode: int, mtime_ns: int) -> tuple[ElfFunctions, dict[int, list[Symbol]]]:
    """One version of a file: its functions, and every function symbol by
    the file offset where it starts."""
    elf = ElfFunctions.load(path)
    starts: dict[int, list[Symbol]] = {}
    for sym in elf.functions:  # every symbol: static functions of several files may share a name
        try:
            starts.setdefault(elf.file_offset(sym.address), []).append(sym)
        except ElfInfoError:
            continue
    return elf, starts


def _elf(path: str) -> tuple[ElfFunctions, dict[int, list[Symbol]]]:
    try:
        st = os.stat(path)
        return _read_elf(path, st.st_dev, st.st_ino, st.st_mtime_ns)
    except OSError as exc:
        raise PermissionDenied(f"cannot read {path}: {exc.strerror}") from None
    except ElfInfoError as exc:
        raise PermissionDenied(str(exc)) from None


def checked_function(path: str, file_offset: int) -> int:
    """The agent's own reading of the file: `file_offset` must be where a
    function symbol starts (so it is an instruction boundary). Returns the
    function's size from the symbol table, not from the process."""
    _, starts = _elf(path)
    if file_offset not in starts:
        raise PermissionDenied(f"offset {file_offset:#x} of {path} is not the start of a function in its symbol table; "
                               "only a function's first instruction is probed")
    return max(sym.size for sym in starts[file_offset])


def _instructions(path: str, file_offset: int, size: int) -> list[Any]:
    """The `size` bytes at `file_offset` disassembled (capstone), addresses as file offsets."""
    if size <= 0 or size > 1 << 20:
        raise InvalidArgument(f"function size {size} is not plausible")
    with open(path, "rb") as f:
        f.seek(file_offset)
        code = f.read(size)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    insns = list(md.disasm(code, file_offset))
    end = insns[-1].address + insns[-1].size - file_offset if insns else 0
    if end != len(code):
        raise InvalidArgument(f"could not disassemble the whole function ({end} of {len(code)} bytes)")
    return insns


def _is_ret(insn: Any) -> bool:
    return insn.mnemonic in ("ret", "retq") or insn.mnemonic.endswith((" ret", " retq"))  # also `repz ret`


def return_offsets(path: str, file_offset: int, size: int, none_ok: bool = False) -> list[int]:
    """File offsets of every RET in the `size` bytes at `file_offset`
    (capstone): where returns are probed when no uretprobe may be."""
    rets = [insn.address for insn in _instructions(path, file_offset, size) if _is_ret(insn)]
    if not rets and not none_ok:
        raise InvalidArgument("the function has no RET instruction (it never returns, or is a tail call)")
    return rets


@dataclass(frozen=True)
class Exits:
    """How a function's calls leave it, from its code and that of its
    `.cold` and `.part` fragments (file offsets)."""

    rets: list[int]
    tail_jumps: list[int]  # JMPs to another function: the call leaves, and no RET of its own is run
    calls_out: bool  # it calls, or jumps where its code does not follow (a register, memory, another function)

    @property
    def leaf(self) -> bool:
        """Nothing it runs can unwind through its frame: it calls nothing,
        and every jump stays in its own code."""
        return not self.calls_out


def function_exits(path: str, file_offset: int, size: int) -> Exits:
    elf, starts = _elf(path)
    parts = [(file_offset, size)]
    for sym in starts.get(file_offset, []):
        for address, fragment_size in elf.fragments(sym.name):
            with contextlib.suppress(ElfInfoError):
                parts.append((elf.file_offset(address), fragment_size))
    parts = sorted(set(parts))

    def inside(target: int) -> bool:
        return any(start <= target < start + length for start, length in parts)

    rets, tails, calls_out = [], [], False
    for start, length in parts:
        try:
            insns = _instructions(path, start, length)
        except InvalidArgument:
            if start == file_offset:
                raise
            calls_out = True  # a fragment we cannot read may call or throw: never a leaf
            continue
        for insn in insns:
            op = insn.mnemonic.split()[-1]  # without a prefix (bnd, notrack, rep)
            if _is_ret(insn):
                rets.append(insn.address)
            elif op.startswith("call"):
                calls_out = True
            elif op.startswith("j"):
                try:
                    target = int(insn.op_str, 16)  # an immediate target; anything else goes through a register or memory
                except ValueError:
                    calls_out = True
                    continue
                if not inside(target):
                    calls_out = True
                    if op == "jmp":
                        tails.append(insn.address)  # a conditional one cannot be told apart at the probe
    return Exits(sorted(set(rets)), sorted(set(tails)), calls_out)


def native_sites(pid: int, executable: str, meta: pb.FunctionMetadata) -> list[Site]:
    """Where to probe a native function (docs/native-targets.md, "How returns
    are seen"). A uretprobe rewrites the return address, which C++
    exceptions and Rust panics cannot unwind through, and Go moves stacks.
    So the return is seen by a uretprobe in plain C, and in a function that
    calls nothing (nothing can unwind through it); elsewhere, by a uprobe on
    every RET, and on every JMP to another function (a tail call, counted:
    its RET is the other function's)."""
    path = attach_path(pid, executable, meta)
    entry_ip = runtime_address(pid, path, meta.file_offset)
    size = checked_function(path, meta.file_offset)
    if meta.kind == "go":
        sites = [Site(pid, path, meta.file_offset, entry_ip, SITE_ENTRY | SITE_GO)]
        for ret in return_offsets(path, meta.file_offset, size):
            sites.append(Site(pid, path, ret, entry_ip + (ret - meta.file_offset), SITE_GO_RET, func_ip=entry_ip))
        return sites
    elf, _ = _elf(path)
    if elf.unwinds:
        exits = function_exits(path, meta.file_offset, size)  # .cold parts may lie elsewhere in the file
        if not exits.leaf:
            if not exits.rets and not exits.tail_jumps:
                raise InvalidArgument("the function has no RET instruction, nor have its .cold or .part parts "
                                      "(it never returns): its calls cannot be timed")
            offsets = exits.rets + exits.tail_jumps
            flags = [SITE_RET] * len(exits.rets) + [SITE_TAIL] * len(exits.tail_jumps)
            return [Site(pid, path, meta.file_offset, entry_ip, SITE_ENTRY)] + [
                Site(pid, path, offset, ip, flag, func_ip=entry_ip)
                for offset, ip, flag in zip(offsets, runtime_addresses(pid, path, offsets), flags, strict=True)]
    return [Site(pid, path, meta.file_offset, entry_ip, SITE_ENTRY, uretprobe=True)]


def go_error_types(pid: int, executable: str, meta: pb.FunctionMetadata) -> Mapping[int, str]:
    """Go: the concrete type behind an `error` the function takes or
    returns, by its itab's address in process `pid` (coral/goitabs.py: read
    from the file at that address less the file's load bias, 0 unless it
    is position-independent); empty for a function with no such value."""
    values = list(meta.arguments) + list(meta.return_values)
    if meta.kind != "go" or not any(v.type == "error" for v in values):
        return {}
    path = attach_path(pid, executable, meta)
    _, starts = _elf(path)
    binary = _go_binary(path)
    if binary is None or meta.file_offset not in starts:
        return {}
    bias = runtime_address(pid, path, meta.file_offset) - starts[meta.file_offset][0].address
    return ErrorTypes(binary, bias)


def _go_binary(path: str) -> GoBinary | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _read_go_binary(path, st.st_dev, st.st_ino, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_go_binary(path: str, dev: int, inode: int, mtime_ns: int) -> GoBinary | None:
    """One version of a file (as _read_elf)."""
    return read_go_binary(path)


def python_site(pid: int, executable: str, meta: pb.FunctionMetadata) -> Site:
    """The SDK's probe site. Its file offset and the semaphore's come from our
    own reading of the extension's ELF, not from the process."""
    path = attach_path(pid, executable, meta)
    try:
        elf = ElfFunctions.load(path)
        site_offset = elf.file_offset(meta.address)
    except ElfInfoError as exc:
        raise InvalidArgument(str(exc)) from None
    if elf.symbols.get("coral_probe_call", (None, 0))[0] != meta.address:
        raise PermissionDenied(f"{meta.binary_path} has no coral_probe_call at {meta.address:#x}")
    try:
        semaphore = elf.object_address("coral_probe_semaphore")
        semaphore_offset = elf.file_offset(semaphore) if semaphore is not None else 0
    except ElfInfoError as exc:
        raise InvalidArgument(str(exc)) from None
    if not semaphore_offset:
        raise PermissionDenied(f"{meta.binary_path} has no coral_probe_semaphore")
    return Site(pid, path, site_offset, runtime_address(pid, path, site_offset), SITE_PYTHON,
                ref_ctr_offset=semaphore_offset)
