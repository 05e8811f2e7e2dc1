"""Function metadata for the process API: what the agent needs to probe a
Python function. For kind "python" the probe does not go on the function
itself but on the SDK's probe site, ``coral_probe_call`` in the loaded
``_probe`` extension, with the semaphore at ``semaphore_offset``."""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
from typing import Any

from coral.daemon.errors import CoralError, ProbeFailed
from coral.procmaps import Segment, file_offset
from coral.proto import coral_pb2 as pb
from coral.sdk import _probe, targets
from coral.sdk.arming import ArmRegistry

DEFAULT_LIST = 1000
MAX_LIST = 10_000
NOP5 = b"\x0f\x1f\x44\x00\x00"
_PARAMETER_PREFIX: dict[inspect._ParameterKind, str] = {
    inspect.Parameter.VAR_POSITIONAL: "*",
    inspect.Parameter.VAR_KEYWORD: "**",
}


@dataclass(frozen=True)
class ProbeSite:
    binary_path: str  # the loaded extension, as this process sees it
    address: int  # st_value of coral_probe_call
    size: int
    file_offset: int
    semaphore_address: int  # st_value of coral_probe_semaphore
    semaphore_offset: int  # its file offset: the uprobe's ref_ctr_offset


def _file_offset(segments: list[Segment], address: int, path: str) -> int:
    offset = file_offset(segments, address)
    if offset is None:
        raise ProbeFailed(f"address {address:#x} is not backed by the file in {path}")
    return offset


@functools.cache
def probe_site() -> ProbeSite:
    """Read (once) the extension's ELF symbols with pyelftools and check the
    probe site really starts with a nop5."""
    from elftools.common.exceptions import ELFError  # imported on first use: ~30 ms
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    path = os.path.realpath(_probe.__file__ or "")
    wanted = {_probe.PROBE_SYMBOL: (0, 0), _probe.SEMAPHORE_SYMBOL: (0, 0)}
    found: dict[str, tuple[int, int]] = {}
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            segments = [(s["p_vaddr"], s["p_filesz"], s["p_offset"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            for section_name in (".dynsym", ".symtab"):
                section = elf.get_section_by_name(section_name)
                if not isinstance(section, SymbolTableSection):
                    continue
                for name in wanted:
                    for sym in section.get_symbol_by_name(name) or []:
                        if sym["st_shndx"] != "SHN_UNDEF":
                            found.setdefault(name, (sym["st_value"], sym["st_size"]))
            missing = sorted(set(wanted) - set(found))
            if missing:
                raise ProbeFailed(f"{path} has no symbol {', '.join(missing)}; rebuild the Coral SDK extension")
            address, size = found[_probe.PROBE_SYMBOL]
            offset = _file_offset(segments, address, path)
            f.seek(offset)
            if f.read(len(NOP5)) != NOP5:
                raise ProbeFailed(f"{_probe.PROBE_SYMBOL} in {path} does not start with a 5-byte NOP; rebuild the extension")
            sem_address, _ = found[_probe.SEMAPHORE_SYMBOL]
            return ProbeSite(path, address, size, offset, sem_address, _file_offset(segments, sem_address, path))
    except (OSError, ELFError) as exc:
        raise ProbeFailed(f"cannot read the SDK's probe site in {path}: {exc}") from None


def _annotation_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def _signature(fn: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (ValueError, TypeError, NameError):
        return None


def function_metadata(arms: ArmRegistry, name: str, pid: int) -> pb.FunctionMetadata:
    target = arms.resolve(name)
    arm = arms.arm_of(target.function)
    function = arm.function if arm is not None else target.function
    site = probe_site()
    meta = pb.FunctionMetadata(
        name=name,
        kind="python",
        pid=pid,
        binary_path=site.binary_path,
        address=site.address,
        file_offset=site.file_offset,
        size=site.size,
        semaphore_offset=site.semaphore_offset,
    )
    definition = targets.defining_function(function)
    if definition is not None:
        meta.source_file = definition.__code__.co_filename
        meta.source_line = definition.__code__.co_firstlineno
    sig = _signature(function)
    if sig is not None:
        for param in sig.parameters.values():
            prefix = _PARAMETER_PREFIX.get(param.kind, "")
            meta.arguments.append(pb.ArgumentMetadata(name=prefix + param.name, type=_annotation_text(param.annotation)))
        if sig.return_annotation is not inspect.Signature.empty:
            meta.return_values.append(pb.ReturnValueMetadata(type=_annotation_text(sig.return_annotation)))
    else:
        names, varargs = targets.parameter_names(function)
        meta.arguments.extend(pb.ArgumentMetadata(name=n) for n in names)
        if varargs:
            meta.arguments.append(pb.ArgumentMetadata(name="*" + varargs))
    return meta


def list_functions(arms: ArmRegistry, pattern: str, max_results: int) -> tuple[list[str], bool]:
    limit = min(max_results or DEFAULT_LIST, MAX_LIST)
    names = sorted({n for n in targets.iter_function_names(arms.is_armed) if targets.matches(pattern, n)})
    return names[:limit], len(names) > limit


def location(arms: ArmRegistry, name: str) -> str:
    """`FILE:LINE` of the function `name` names, from its code object; "" if unknown."""
    try:
        target = arms.resolve(name)
    except CoralError:
        return ""
    arm = arms.arm_of(target.function)
    definition = targets.defining_function(arm.function if arm is not None else target.function)
    if definition is None:
        return ""
    return f"{definition.__code__.co_filename}:{definition.__code__.co_firstlineno}"

