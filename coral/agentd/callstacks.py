"""--stack: a call's stack, as the BPF program took it at the call's return
(bpf/coral_probes.c, coral_stack), to symbolized frames: the probed
function first, then its caller, outward. Either the kernel's
frame-pointer walk, or a copy of the stack unwound here with the binaries'
.eh_frame (coral/agentd/unwind.py). Files are read once per build-id by
the Symbolizer the profiles share; a session reads its processes' files in
a thread of its own before its first stack is symbolized
(`Warming`), so that the agent's loop never waits on pyelftools (libc's
call frame information takes seconds)."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from coral.agentd import pyframes
from coral.agentd.engine import CALL_STACK, CALL_STACK_CUT, StackRecord
from coral.agentd.profiler import PyFrames
from coral.agentd.symbolize import Symbolizer, maps_of
from coral.procmaps import Mapping
from coral.proto import coral_pb2 as pb

DEFAULT_DEPTH, MAX_DEPTH = 64, 127
DEFAULT_BYTES, MAX_BYTES = 4096, 8192
UNWINDS = ("fp", "tables")
WALK_IPS = 127  # CORAL_STACK_IPS: a walk this long may have been cut by the kernel
CACHE_STACKS = 4096  # symbolized stacks kept, by (pid, addresses)


@dataclass(frozen=True)
class Symbolized:
    frames: tuple[tuple[str, str, int, str], ...]  # (function, file, line, module), innermost first
    truncated: bool

    def to_json(self) -> str:
        return json.dumps({"frames": [list(f) for f in self.frames], "truncated": self.truncated})


def addresses(rec: StackRecord, entry_ip: int, unwind: Unwind) -> tuple[tuple[int, ...], bool]:
    """The call's stack as addresses, the probed function's first; and
    whether frames beyond them were cut (the walk's or the copy's end). At a
    uretprobe the function has returned: its entry address stands for it.
    At a RET the kernel's walk passes over the caller (%rbp is already the
    caller's, so the first link leads to the caller's caller): the return
    address at sp is put back."""
    if rec.failed:
        return (entry_ip,), True
    if rec.copy or not rec.walked:
        found = unwind(rec.pid, rec.ip, rec.sp, rec.bp, rec.copy)
        if found is None:  # the first function has no call frame information
            return ((rec.ip,) if rec.at_ret else (entry_ip, rec.ip)), True
        found_addresses, cut = found
        return (found_addresses if rec.at_ret else (entry_ip, *found_addresses)), cut
    walked, cut = rec.walked, len(rec.walked) >= WALK_IPS
    if rec.at_ret:
        return (walked[0], rec.ret, *walked[1:]), cut
    return (entry_ip, *walked), cut


class Unwind:
    """The unwinder of one process, with its maps read once (a session's)."""

    def __init__(self, symbolizer: Symbolizer, maps: dict[int, list[Mapping]]) -> None:
        self.symbolizer, self.maps = symbolizer, maps

    def __call__(self, pid: int, ip: int, sp: int, bp: int, stack: bytes) -> tuple[tuple[int, ...], bool] | None:
        return self.symbolizer.unwinder.unwind(pid, self.maps.get(pid, []), ip, sp, bp, stack)


class SessionStacks:
    """One session's stacks: its processes' maps and files, read in a thread
    when it starts (ready() until then is False), and its symbolized stacks."""

    def __init__(self, symbolizer: Symbolizer, pids: list[int], entry_ips: dict[int, int], depth: int,
                 unwinds: bool, python: dict[int, pb.PythonLayout] | None = None) -> None:
        self.symbolizer = symbolizer
        self.started = time.monotonic()
        self.entry_ips = entry_ips  # by pid: the probed function's entry address
        self.depth = depth
        self.maps: dict[int, list[Mapping]] = {}
        # A Python process's code objects, read from its memory by its layout (for the frames above a native call).
        self.python = {pid: pyframes.PythonFrames(pid, layout) for pid, layout in (python or {}).items()}
        self._cache: OrderedDict[tuple[int, tuple[int, ...], PyFrames], Symbolized] = OrderedDict()
        self._ready = threading.Event()
        threading.Thread(target=self._warm, args=(pids, unwinds), name="stack-files", daemon=True).start()

    def _warm(self, pids: list[int], unwinds: bool) -> None:
        try:
            maps = {pid: maps_of(pid) for pid in pids}
            for pid, mapped in maps.items():
                for m in mapped:
                    if m.path.startswith("/"):
                        if unwinds:  # call frame information: only to unwind copies (libc's takes seconds)
                            self.symbolizer.unwinder.frames_of(pid, m)
                        self.symbolizer.symbols(pid, m)
            self.maps = maps
        finally:
            self._ready.set()

    def ready(self) -> bool:
        return self._ready.is_set()

    def wait(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def symbolize(self, rec: StackRecord) -> Symbolized:
        found, cut = addresses(rec, self.entry_ips.get(rec.pid, 0), Unwind(self.symbolizer, self.maps))
        reader = self.python.get(rec.pid)
        py = rec.python if reader is not None else ()
        key = (rec.pid, found, py)
        known = self._cache.get(key)
        if known is None:
            frames, _ = self.symbolizer.frames(rec.pid, self.maps.get(rec.pid, []), found, unwound=True)
            if reader is not None and py:
                # Both outermost first for the merge; kept innermost first, as the stack is shown.
                frames = pyframes.merge(frames[::-1], reader.frames(py)[::-1])[::-1]
            known = Symbolized(tuple((f.function[:500], f.file[:300], f.line, f.module[:300]) for f in frames), False)
            self._cache[key] = known
            if len(self._cache) > CACHE_STACKS:
                self._cache.popitem(last=False)
        if cut or (py and rec.python_cut) or len(known.frames) > self.depth:
            return Symbolized(known.frames[: self.depth], True)
        return known


def python_stack(text: bytes, flags: int) -> str:
    """A Python call's frames as the SDK wrote them (bpf/coral_call.h:
    "qualname\tfile\tline" a line, the function's own first), as stored."""
    if not flags & CALL_STACK:
        return ""
    frames = []
    for line in text.decode(errors="replace").split("\n"):
        parts = line.split("\t")
        if len(parts) == 3:
            name, file, number = parts
            frames.append((name[:500], file[:300], int(number) if number.isdigit() else 0, ""))
    return Symbolized(tuple(frames), bool(flags & CALL_STACK_CUT)).to_json()
