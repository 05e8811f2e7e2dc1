"""Native functions in shared objects a process has loaded (libssl, libz,
a C extension; linked or dlopen'ed), named "LIBRARY:SYMBOL", e.g.
"libz.so.1:crc32". The agent probes them as native functions, through the
process's mapping of the file; LIBRARY matches a mapped file's name or its
prefix up to a version ("libz.so.1" matches libz.so.1.2.13). The SDK asks
about its own process ("self"); coral-run about its child."""

from __future__ import annotations

import fnmatch
import functools
import os

from coral.daemon.errors import InvalidArgument, NotFound
from coral.dwarftypes import Field, HeldString, Variants
from coral.elfinfo import AmbiguousName, ElfFunctions, ElfInfoError, FunctionInfo, Parameter
from coral.gotypes import GoValue
from coral.procmaps import read_maps
from coral.proto import coral_pb2 as pb

MAX_LIST = 10_000


def is_native_name(name: str) -> bool:
    return ":" in name


def split_library(name: str) -> tuple[str, str] | None:
    """("libz.so.1", "crc32") for "libz.so.1:crc32"; None for a name with no
    single colon (`pay::fee` is a C++ name, not a library's)."""
    library, sep, symbol = name.partition(":")
    if not sep or not library or not symbol or symbol.startswith(":"):
        return None
    return library, symbol


def loaded_objects(pid: int | str = "self") -> dict[str, str]:
    """Executable shared objects mapped in process `pid`: file name -> path."""
    out: dict[str, str] = {}
    try:
        maps = read_maps(pid)
    except OSError:
        return out
    for m in maps:
        if "x" in m.perms and ".so" in m.path:
            out.setdefault(os.path.basename(m.path), m.path)
    return out


def _library(name: str, pid: int | str = "self") -> str:
    objects = loaded_objects(pid)
    for filename, path in objects.items():
        if filename == name or filename.startswith(name + "."):
            return path
    where = "this process" if pid == "self" else f"process {pid}"
    raise NotFound(f"no shared object {name!r} is loaded in {where}", sorted(objects)[:20])


@functools.lru_cache(maxsize=32)
def _elf(path: str) -> ElfFunctions:
    return ElfFunctions.load(path)


def _field(f: Field) -> pb.FieldMetadata:
    return pb.FieldMetadata(name=f.name, type=f.type, offset=f.offset, size=f.size)


def _held(h: HeldString | None) -> pb.HeldStringMetadata | None:
    return pb.HeldStringMetadata(data_offset=h.data_offset, length_offset=h.length_offset) if h else None


def _go(v: GoValue | None) -> pb.GoValueMetadata | None:
    if v is None:
        return None
    return pb.GoValueMetadata(underlying=v.underlying, int_registers=v.int_registers,
                              float_registers=v.float_registers, stack_only=v.stack_only, size=v.size,
                              align=v.align, fields=[
                                  pb.GoFieldMetadata(name=f.name, type=f.type, underlying=f.underlying,
                                                     int_registers=f.int_registers, float_registers=f.float_registers,
                                                     offset=f.offset, size=f.size) for f in v.fields])


def _enum(v: Variants | None) -> pb.EnumMetadata | None:
    if v is None:
        return None
    return pb.EnumMetadata(size=v.size, discriminant=_field(v.discriminant), variants=[
        pb.VariantMetadata(name=x.name, discriminant=x.discriminant, is_default=x.is_default,
                           payload=[_field(f) for f in x.payload]) for x in v.variants])


def argument_metadata(p: Parameter, location: str = "") -> pb.ArgumentMetadata:
    """One argument as the agent is told it (coral-run and the SDK alike)."""
    return pb.ArgumentMetadata(name=p.name, type=p.type, location=location, fields=[_field(f) for f in p.fields],
                               held_string=_held(p.held_string), go=_go(p.go), variants=_enum(p.variants),
                               float_type=p.float_type, entry_registers=list(p.entry_registers),
                               entry_elsewhere=p.entry_elsewhere, pointee_variants=_enum(p.pointee_variants),
                               entry_stack_offset=p.entry_stack if p.entry_stack >= 0 else None)


def result_metadata(info: FunctionInfo, location: str = "") -> list[pb.ReturnValueMetadata]:
    """The results: Go's list, or the one C-like result with what DWARF
    says of its value (a string it holds, a Rust enum's variants)."""
    if info.results:
        return [pb.ReturnValueMetadata(name=r.name, type=r.type, go=_go(r.go)) for r in info.results]
    if not info.return_type:
        return []
    out = pb.ReturnValueMetadata(type=info.return_type, location=location)
    value = info.return_value
    held = _held(value.held_string) if value is not None else None
    if held is not None:
        out.held_string.CopyFrom(held)
    if value is not None:
        out.float_type = value.float_type
    enum = _enum(value.variants) if value is not None else None
    if enum is not None:
        out.variants.CopyFrom(enum)
    return [out]


def native_metadata(name: str, pid: int, maps_of: int | str = "self") -> pb.FunctionMetadata:
    """`pid` is the process the agent probes; `maps_of` whose mappings to read ("self": this one)."""
    library, _, symbol = name.partition(":")
    path = _library(library, maps_of)
    try:
        elf = _elf(path)
        info = elf.function(symbol)
    except AmbiguousName as exc:
        raise InvalidArgument(f"{symbol!r} names {len(exc.candidates)} functions in {path}; name one: "
                              f"{', '.join(f'{library}:{c}' for c in exc.candidates)}",
                              [f"{library}:{c}" for c in exc.candidates]) from None
    except ElfInfoError as exc:
        raise InvalidArgument(str(exc)) from None
    if info is None:
        raise NotFound(elf.why_missing(symbol) or f"no function {symbol!r} in {path}",
                       [f"{library}:{s}" for s in elf.closest(symbol)])
    meta = pb.FunctionMetadata(
        name=name, kind="native", binary_path=path, address=info.address, file_offset=info.file_offset,
        size=info.size, pid=pid, source_file=info.source_file, source_line=info.source_line,
        inlined_into=list(info.inlined_into), result_in_memory=info.result_in_memory,
        arguments=[argument_metadata(p) for p in info.parameters], return_values=result_metadata(info),
    )
    return meta


def list_native(pattern: str, limit: int = MAX_LIST, maps_of: int | str = "self") -> list[str]:
    """Only for patterns that name a library ("libz.so*:*"): listing every
    symbol of every loaded library by default would drown the answer."""
    library_pattern, _, symbol_pattern = pattern.partition(":")
    out: list[str] = []
    for filename, path in sorted(loaded_objects(maps_of).items()):
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
