"""Native functions in shared objects loaded by this process (libssl, libz,
a C extension), named "LIBRARY:SYMBOL", e.g. "libz.so.1:crc32". The agent
probes them as native functions, through this process's mapping of the
file; LIBRARY matches a mapped file's name or its prefix up to a version
("libz.so.1" matches libz.so.1.2.13)."""

from __future__ import annotations

import fnmatch
import functools
import os

from coral.daemon.errors import InvalidArgument, NotFound
from coral.elfinfo import ElfFunctions, ElfInfoError
from coral.procmaps import read_maps
from coral.proto import coral_pb2 as pb

MAX_LIST = 10_000


def is_native_name(name: str) -> bool:
    return ":" in name


def loaded_objects() -> dict[str, str]:
    """Executable shared objects mapped in this process: file name -> path."""
    out: dict[str, str] = {}
    for m in read_maps("self"):
        if "x" in m.perms and ".so" in m.path:
            out.setdefault(os.path.basename(m.path), m.path)
    return out


def _library(name: str) -> str:
    objects = loaded_objects()
    for filename, path in objects.items():
        if filename == name or filename.startswith(name + "."):
            return path
    raise NotFound(f"no shared object {name!r} is loaded in this process",
                   sorted(objects)[:20])


@functools.lru_cache(maxsize=32)
def _elf(path: str) -> ElfFunctions:
    return ElfFunctions.load(path)


def native_metadata(name: str, pid: int) -> pb.FunctionMetadata:
    library, _, symbol = name.partition(":")
    path = _library(library)
    try:
        elf = _elf(path)
        info = elf.function(symbol)
    except ElfInfoError as exc:
        raise InvalidArgument(str(exc)) from None
    if info is None:
        raise NotFound(elf.why_missing(symbol) or f"no function {symbol!r} in {path}",
                       [f"{library}:{s}" for s in elf.closest(symbol)])
    meta = pb.FunctionMetadata(
        name=name, kind="native", binary_path=path, address=info.address, file_offset=info.file_offset,
        size=info.size, pid=pid, source_file=info.source_file, source_line=info.source_line,
        arguments=[pb.ArgumentMetadata(name=p.name, type=p.type) for p in info.parameters],
    )
    if info.return_type:
        meta.return_values.append(pb.ReturnValueMetadata(type=info.return_type))
    return meta


def list_native(pattern: str, limit: int = MAX_LIST) -> list[str]:
    """Only for patterns that name a library ("libz.so*:*"): listing every
    symbol of every loaded library by default would drown the answer."""
    library_pattern, _, symbol_pattern = pattern.partition(":")
    out: list[str] = []
    for filename, path in sorted(loaded_objects().items()):
        if not fnmatch.fnmatchcase(filename, library_pattern) and not fnmatch.fnmatchcase(filename, library_pattern + ".*"):
            continue
        try:
            names = _elf(path).names(symbol_pattern or "*")
        except ElfInfoError:
            continue
        out.extend(f"{filename}:{n}" for n in names)
        if len(out) >= limit:
            break
    return out[:limit]
