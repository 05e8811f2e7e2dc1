"""Where code is, in a file and in a process: the one ELF address-to-offset
rule and the one /proc/PID/maps reader, for the agent, coral-run and the SDK.
No pyelftools here: the SDK imports this on its hot path."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Segment = tuple[int, int, int]  # a PT_LOAD segment: (p_vaddr, p_filesz, p_offset)


def file_offset(segments: Iterable[Segment], address: int) -> int | None:
    """The file offset of a link-time address, or None if no loadable
    segment's file bytes hold it. p_filesz, not p_memsz: past it (.bss) the
    segment is zeroes the file does not have, and an offset computed there
    would name bytes of whatever follows in the file."""
    for vaddr, filesz, offset in segments:
        if vaddr <= address < vaddr + filesz:
            return address - vaddr + offset
    return None


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    inode: int
    perms: str
    path: str


def parse_maps(lines: Iterable[str]) -> list[Mapping]:
    """The lines of /proc/PID/maps (a path may hold spaces; anonymous mappings have none)."""
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        out.append(Mapping(start, end, int(parts[2], 16), int(parts[4]), parts[1],
                           parts[5].rstrip("\n") if len(parts) == 6 else ""))
    return out


def read_maps(pid: int | str) -> list[Mapping]:
    """/proc/PID/maps (`pid` may be "self"); OSError if it cannot be read."""
    with open(f"/proc/{pid}/maps") as f:
        return parse_maps(f)
