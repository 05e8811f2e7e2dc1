"""The agent's memory after its one compile. BCC compiles the BPF program
with clang and LLVM once, at start-up; afterwards the agent never runs the
compiler again, but the pages it touched stay in its RSS: about 80 MiB of
the compiler's code, and the heap its passes freed. This gives them back:
the compiler libraries' read-only mappings are dropped (madvise
MADV_DONTNEED; a page used again is read back from the file, so nothing
can break), and glibc returns its free heap to the kernel (malloc_trim).
Writable mappings are never touched: their pages hold the libraries' state.
The heap is trimmed again each time a session ends."""

from __future__ import annotations

import ctypes
import logging
import os

from coral.procmaps import read_maps

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
COMPILER_LIBRARIES = ("libLLVM", "libclang")
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
    dropped = 0
    try:
        maps = read_maps("self")
    except OSError as exc:
        log.warning("could not read /proc/self/maps to release the compiler's pages: %s", exc)
        return 0
    for m in maps:
        if "w" in m.perms or not os.path.basename(m.path).startswith(COMPILER_LIBRARIES):
            continue
        if _libc.madvise(m.start, m.end - m.start, MADV_DONTNEED) != 0:
            log.warning("madvise(%s) failed: %s", m.path, os.strerror(ctypes.get_errno()))
            continue
        dropped += m.end - m.start
    trim_heap()
    return dropped
