"""The agent's memory after its one compile. BCC compiles the BPF program
with clang and LLVM once, at start-up; afterwards the agent never runs the
compiler again, but the pages it touched stay in its RSS: about 80 MiB of
the compiler's code, and the heap its passes freed. This gives them back:
the compiler libraries' read-only mappings are dropped (madvise
MADV_DONTNEED; a page used again is read back from the file, so nothing
can break), and glibc returns its free heap to the kernel (malloc_trim).
Only mappings whose every page is the file's own: writable ones hold the
libraries' state, and a read-only one with private copies (RELRO: the
relocated GOT, made read-only after the loader wrote it) would lose the
loader's work and crash the agent.
The heap is trimmed again each time a session ends. When the last session's
calls are written and no session runs, the agent is idle: the pages of the
libraries that did the work (DuckDB's and numpy's code) are dropped the
same way, and come back from the page cache, a minor fault each, when the
next session needs them."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
# The compiler, and numpy's libraries: the agent uses a few of numpy's
# functions (the ring buffer's columns), and OpenBLAS not at all, but their
# loading touched most of their pages.
RELEASED_LIBRARIES = ("libLLVM", "libclang", "_multiarray_umath", "libscipy_openblas")
# What a session's calls run through: DuckDB's code (about 40 MiB resident
# after a million calls) and numpy's.
IDLE_LIBRARIES = ("_duckdb", "_multiarray_umath")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def trim_heap() -> None:
    """Give glibc's free heap back to the kernel."""
    _libc.malloc_trim(0)


def rss_bytes() -> int:
    """This process's resident set now (0 if /proc cannot say)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_compiler_pages() -> int:
    """Drop the compiler libraries' read-only pages and trim the heap;
    returns the bytes of mappings dropped (0 if none, or on failure)."""
    return release_pages(RELEASED_LIBRARIES)


def release_idle_pages() -> int:
    """Drop the pages of the libraries a session used, and trim the heap."""
    return release_pages(IDLE_LIBRARIES)


def release_pages(libraries: tuple[str, ...]) -> int:
    """Drop the clean read-only pages of the libraries whose file names
    start with one of `libraries`, and trim the heap; returns the bytes of
    mappings dropped (0 if none, or on failure)."""
    dropped = 0
    try:
        with open("/proc/self/smaps") as f:
            mappings = clean_file_mappings(f)
    except OSError as exc:
        log.warning("could not read /proc/self/smaps to release library pages: %s", exc)
        return 0
    for start, end, path in mappings:
        if not os.path.basename(path).startswith(libraries):
            continue
        if _libc.madvise(start, end - start, MADV_DONTNEED) != 0:
            log.warning("madvise(%s) failed: %s", path, os.strerror(ctypes.get_errno()))
            continue
        dropped += end - start
    trim_heap()
    return dropped


def clean_file_mappings(smaps: Iterable[str]) -> list[tuple[int, int, str]]:
    """From /proc/PID/smaps: the read-only file mappings with no private
    (anonymous) page, whose contents the file can give back."""
    out: list[tuple[int, int, str]] = []
    current: tuple[int, int, str] | None = None
    for line in smaps:
        fields = line.split()
        if not fields:
            continue
        if fields[0].count("-") == 1 and not fields[0].endswith(":") and len(fields) >= 5:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            path = line.split(maxsplit=5)[5].strip() if len(fields) > 5 else ""
            current = (start, end, path) if "w" not in fields[1] and path.startswith("/") else None
        elif fields[0] == "Anonymous:" and current is not None:
            if fields[1] == "0":
                out.append(current)
            current = None
    return out
