"""The agent's one BPF program (bpf/coral_probes.c) and everything attached
to it. Sessions own slots; sites and uprobes are shared and refcounted, so
attaching a session compiles nothing. Knows nothing of sessions' meaning."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

from coral import histogram
from coral.agentd import countby, pyframes, where_native
from coral.agentd.probes import bpf_source_dir, load_bcc
from coral.agentd.ringbuf import BUSY_BIT, DISCARD_BIT, HEADER_BYTES, RingReader
from coral.agentd.uprobes import AttachError, Uprobe, UprobeAttacher, remove_stale_events
from coral.layouts import Layout, read_layouts
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)

# The constants the BPF program and this module share, defined here only:
# the program gets them as -D flags (bpf/coral_probes.c defines none of them).
MAX_SLOTS = 64
MAX_SITES = 16384  # entries of the program's `sites` array: probed instructions, all processes together
HIST_BUCKETS = 512
STAT_NAMES = ("CALLS", "SAMPLED", "FILTERED", "RINGBUF", "EMITTED", "MAX_NS", "SUM_NS", "UNREADABLE", "EXPIRED",
              "WHERE_ERROR", "RATE")
STATS_PER_SLOT = len(STAT_NAMES)
ST_CALLS, ST_SAMPLED, ST_FILTERED, ST_RINGBUF, ST_EMITTED, ST_MAX_NS, ST_SUM_NS, ST_UNREADABLE, ST_EXPIRED, \
    ST_WHERE_ERROR, ST_RATE = range(11)
GLOBAL_NAMES = ("stack_full", "unpaired_returns", "stale_frames", "unwound_uncounted", "deep_frames_in_use",
                "call_stacks_lost", "unwound_calls_lost")
G_DEEP_IN_USE = 4
BY_UNWOUND, BY_TOO_DEEP, BY_TAIL_CALL = 1, 2, 3  # causes of calls not seen completed, counted by slot set (by_slots)

SITE_ENTRY, SITE_GO, SITE_GO_RET, SITE_PYTHON, SITE_RET, SITE_TAIL = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
SITE_URET = 0x40  # an entry whose return is a uretprobe (set from Site.uretprobe when the site is written)
URETPROBE_DEPTH = 64  # the kernel's MAX_URETPROBE_DEPTH: uretprobes open at once on one task
EV_NATIVE, EV_PYTHON, EV_PYTHON_TIMING, EV_NATIVE_TIMING = 1, 2, 3, 4
EV_STACK_WALK, EV_STACK_COPY = 5, 6  # --stack: a call's stack, after its records (coral_records.h)
EV_NATIVE_GO = 7  # a Go call's record with values: native_go_event, native_event and what only Go needs
STACK_WALK, STACK_COPY = 1, 2  # slot_config.stack: frame pointers walked by the kernel, or a copy for .eh_frame
CALL_STACK, CALL_STACK_CUT = 0x20, 0x40  # struct coral_call's flags (bpf/coral_call.h): Python frames in `stack`
UNREAD_STACK = 4  # native_event.unread: a Go call's stack arguments were not copied (bits 0, 1: its string slots)
UNREAD_STACK_RET = 8  # native_event.unread: a Go call's stack results could not be read at its RET
CAPTURE_COUNT_ONLY = 4  # slot_config.capture: --count-by, the calls are counted by key and no record is sent
UNWOUND_CALLS = 4096  # --errors-only (C++, Rust): calls that left by unwinding, kept until the agent drains them
HELD_UNWOUND = 0x40000  # struct site.held: a slot watching the function wants its calls that leave by unwinding


def bpf_constants() -> dict[str, int]:
    """Every constant bpf/coral_probes.c shares with this module, by its C name."""
    out = {"CORAL_MAX_SLOTS": MAX_SLOTS, "CORAL_SITES": MAX_SITES, "CORAL_HIST_BUCKETS": HIST_BUCKETS,
           "CORAL_HIST_SUB_BITS": histogram.SUB_BITS,
           "CORAL_STATS": STATS_PER_SLOT,
           "SITE_ENTRY": SITE_ENTRY, "SITE_GO": SITE_GO, "SITE_GO_RET": SITE_GO_RET, "SITE_PYTHON": SITE_PYTHON,
           "SITE_RET": SITE_RET, "SITE_TAIL": SITE_TAIL, "SITE_URET": SITE_URET, "CORAL_URETPROBE_DEPTH": URETPROBE_DEPTH,
           "BY_UNWOUND": BY_UNWOUND, "BY_TOO_DEEP": BY_TOO_DEEP, "BY_TAIL_CALL": BY_TAIL_CALL,
           "EV_NATIVE": EV_NATIVE, "EV_PYTHON": EV_PYTHON, "EV_PYTHON_TIMING": EV_PYTHON_TIMING,
           "EV_NATIVE_TIMING": EV_NATIVE_TIMING, "EV_NATIVE_GO": EV_NATIVE_GO, "UNREAD_STACK": UNREAD_STACK,
           "UNREAD_STACK_RET": UNREAD_STACK_RET,
           "CAPTURE_COUNT_ONLY": CAPTURE_COUNT_ONLY,
           "EV_STACK_WALK": EV_STACK_WALK, "EV_STACK_COPY": EV_STACK_COPY, "STACK_WALK": STACK_WALK,
           "STACK_COPY": STACK_COPY, "CORAL_UNWOUND_CALLS": UNWOUND_CALLS, "HELD_UNWOUND": HELD_UNWOUND,
           **where_native.constants(), **countby.constants()}
    out.update({f"ST_{name}": i for i, name in enumerate(STAT_NAMES)})
    out.update({f"G_{name}": i for i, name in enumerate(("STACK_FULL", "UNPAIRED", "STALE", "UNWOUND_UNCOUNTED",
                                                                "DEEP_IN_USE", "STACK_LOST", "UNWOUND_LOST"))})
    return out



def record_layouts(string_bytes: int) -> dict[str, Layout]:
    """The ring buffer's records as the program declares them (bpf/coral_records.h)."""
    return read_layouts(bpf_source_dir() / "coral_records.h", {"CORAL_STR_MAX": string_bytes})


class ProbeError(Exception):
    """The kernel refused a probe; the message says where and why."""


@dataclass(frozen=True)
class Site:
    """One probed instruction in one process."""

    pid: int
    path: str  # what the kernel opens: /proc/PID/exe or /proc/PID/root/...
    file_offset: int
    runtime_ip: int  # the instruction's address in the process
    flags: int
    func_ip: int = 0  # RET sites (Go, C++, Rust): the function's entry address
    uretprobe: bool = False  # native entry sites: also a return probe
    ref_ctr_offset: int = 0  # Python site: the semaphore the kernel raises


@dataclass(frozen=True)
class SlotConfig:
    sample_rate: int = 1
    capture_args: bool = False
    capture_return: bool = False
    min_duration_ns: int = 0
    fn_id: int = 0
    # What the record's two string slots hold (coral/agentd/abi.py, RecordSlots):
    str_args: tuple[int, int] = (-1, -1)  # argument registers whose strings go in slots 0 and 1
    blob: tuple[int, int, int] = (-1, 0, 0)  # (argument register, bytes, slot): a struct it points to
    str_result: tuple[int, int] = (-1, 0)  # (result register, slot): its string, copied at the return
    # (register, data pointer's offset, length's offset) of objects holding strings (std::string, Rust String):
    held_args: tuple[tuple[int, int, int], tuple[int, int, int]] = ((-1, 0, 0), (-1, 0, 0))  # into slots 0, 1 (at entry)
    held_result: tuple[int, int] | None = None  # str_result's register holds such an object: (data, length) offsets
    stack_bytes: int = 0  # Go: bytes of the stack-assigned arguments copied at the entry (at most CORAL_STACK_BYTES)
    result_stack: tuple[int, int] = (0, 0)  # Go: (where the stack results begin after the stack arguments, bytes read)
    where: where_native.Program | None = None  # a --where condition, as the kernel evaluates it
    expires_monotonic_ns: int = 0  # CLOCK_MONOTONIC (bpf_ktime_get_ns): later calls are not counted; 0: never
    count_by: countby.Key | None = None  # --count-by: calls counted by this key, no record sent
    call_stack: int = 0  # --stack: STACK_WALK or STACK_COPY (0: none)
    call_stack_bytes: int = 0  # STACK_COPY: bytes of the stack copied from sp at the return
    rate_per_s: int = 0  # --rate: at most this many records a second, decided in the kernel (0: no limit)
    unwound_calls: bool = False  # --errors-only on C++, Rust: the calls that leave by unwinding are kept (drain_unwound)


@dataclass(frozen=True)
class NativeRecord:
    pid: int
    tid: int
    start_ns: int
    duration_ns: int
    results: tuple[int, ...]
    args: tuple[int, ...]
    strings: tuple[bytes, bytes]  # the record's two slots as copied (a string is NUL-terminated in its slot)
    unread: int = 0  # bit i: slot i could not be read (its page was not in memory)
    lengths: tuple[int, int] = (0, 0)  # a slot holding a held string: that string's whole length
    stack: bytes = b""  # Go: the stack-assigned arguments as at the entry; b"" if not copied
    stack_ret: bytes = b""  # Go: the stack-assigned results as at the RET; b"" if not read
    # Left by unwinding (an exception, a panic; --errors-only on C++, Rust):
    # when a later hit found its frame dead, monotonic ns; 0: it returned.
    # Its end is not known: duration_ns is 0 and results are not there.
    unwound_found_ns: int = 0


@dataclass(frozen=True)
class UnwoundCall:
    """A call that left by unwinding, kept by the kernel for the slots in `slots` that want such calls."""

    slots: int  # the slots that watched it (the agent keeps those whose session wants it)
    record: NativeRecord


@dataclass(frozen=True)
class StackRecord:
    """--stack: the stack of one call, as taken at its return (bpf/coral_records.h, struct stack_head)."""

    pid: int
    tid: int
    start_ns: int  # the call's: pairs it with the call's records
    slots: int  # bit i: slot i reported the call
    at_ret: bool  # ip is the probed function's RET (sp points at the return address); else the caller's
    ip: int
    sp: int
    bp: int
    ret: int  # the word at sp
    walked: tuple[int, ...] = ()  # the kernel's frame-pointer walk, innermost first
    copy: bytes = b""  # or the stack from sp, for .eh_frame
    failed: bool = False  # nothing could be taken
    python: tuple[tuple[int, int], ...] = ()  # a Python process's frames: (code object, instruction), innermost first
    python_cut: bool = False  # more Python frames than were read


@dataclass(frozen=True)
class PythonRecord:
    pid: int
    tid: int
    fn_id: int
    call_id: int
    start_ns: int
    end_ns: int
    flags: int
    args: bytes
    ret: bytes
    stack: bytes = b""  # --stack: the SDK's text of the call's Python frames (bpf/coral_call.h); b"" if none


@dataclass(frozen=True)
class Timings:
    """One slot's timing-only calls from one run of records, in the order
    they returned: columns, not an object per call (int64, monotonic ns)."""

    pid: np.ndarray
    tid: np.ndarray
    start_ns: np.ndarray
    end_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.pid)

    def head(self, n: int) -> Timings:
        return Timings(self.pid[:n], self.tid[:n], self.start_ns[:n], self.end_ns[:n])


Drained = tuple[int, "Timings | list[NativeRecord | PythonRecord] | list[StackRecord]"]  # (slot, its calls)
STACKS = -1  # the slot under which drain() returns StackRecords


def record_dtype(layout: Layout, stride: int) -> np.dtype:
    """A numpy view of ring-buffer rows (header, then the record) of `stride`
    bytes whose record is `layout`: its integer members by name."""
    kinds = {"I": "<u4", "i": "<i4", "Q": "<u8", "q": "<i8"}
    members = [m for m in layout.members if m.code in kinds]
    return np.dtype({"names": [m.name for m in members],
                     "formats": [kinds[m.code] if m.count == 1 else (kinds[m.code], (m.count,)) for m in members],
                     "offsets": [HEADER_BYTES + m.offset for m in members], "itemsize": stride})


@dataclass
class Release:
    """Slots whose probes a thread is removing (the kernel waits about
    175 ms for each uprobe). Once it is done: where the ring buffer ended
    (every record of these slots lies before it) and their final counts."""

    done: threading.Event = field(default_factory=threading.Event)
    produced: int = 0
    stats: dict[int, SlotStats] = field(default_factory=dict)
    failed: bool = False  # the thread raised (a bug): the slots are never given again, but nothing waits forever


@dataclass
class SlotStats:
    calls: int = 0
    sampled: int = 0
    filtered: int = 0
    ringbuf_full: int = 0
    emitted: int = 0
    max_ns: int = 0
    sum_ns: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    unreadable: int = 0
    expired: int = 0  # returned after the session's expiry: in no count, not stored
    unwound: int = 0  # left by unwinding (an exception, a panic, longjmp): no return, so not in calls
    too_deep: int = 0  # entered deeper than the frames tracked per thread: not tracked, so not in calls
    tail_calls: int = 0  # left by a tail jump to another function: its RET is not ours, so not in calls
    where_error: int = 0  # --where could not be evaluated (a value not read; Python: the SDK said so): not shown
    rate: int = 0  # over --rate: more calls to report in their second than the session's limit
    # --count-by: the kernel's rows, (ROW_*, key number, key string, counts); empty without it
    count_rows: list[tuple[int, int, bytes, countby.Row]] = field(default_factory=list)


# What a uprobe hit costs (the trap into the kernel and back, and the
# program's work), charged to a session's CPU budget per hit. The agent
# measures it at start-up (calibrate); this is the figure it falls back on
# if it cannot: docs/benchmarks.md measured a raw BCC entry + return probe
# at about 13 µs per call on a quiet 2-vCPU VM.
TRAP_NS = 6000
CALIBRATION_CALLS = 2000
CALIBRATION_ROUNDS = 5


class ProbeEngine:
    def __init__(self, ringbuf_pages: int, string_bytes: int = 64, max_depth: int = 64,
                 deep_frames: int = 65536) -> None:
        bcc = load_bcc()
        src = bpf_source_dir()
        cflags = [f"-DCORAL_RINGBUF_PAGES={ringbuf_pages}", f"-DCORAL_STR_MAX={string_bytes}", f"-I{src}",
                  f"-DCORAL_MAX_DEPTH={max_depth}", f"-DCORAL_DEEP_FRAMES={deep_frames}",
                  *(f"-D{name}={value}" for name, value in bpf_constants().items())]
        self._bpf = bcc.BPF(src_file=str(src / "coral_probes.c").encode(), cflags=cflags)
        self.string_bytes = string_bytes
        records = record_layouts(string_bytes)
        native, python, timing = records["native_event"], records["python_event"], records["python_timing_event"]
        self._native, self._python = native.struct, python.struct
        # Timing-only records are read as numpy columns by member name (record_dtype), the others one by one.
        self._timing_layouts = {EV_NATIVE_TIMING: records["native_timing_event"], EV_PYTHON_TIMING: timing}
        go_event = records["native_go_event"]
        self._go_tail, self._go_tail_at = records["native_go_tail"].struct, go_event.member("go").offset
        self._full_sizes = {EV_NATIVE: native.size, EV_NATIVE_GO: go_event.size, EV_PYTHON: python.size,
                            EV_STACK_WALK: records["stack_walk_event"].size, EV_STACK_COPY: records["stack_copy_event"].size}
        head = records["stack_head"]
        self._stack_head = head.struct
        self._stack_head_size = head.size
        self._py_stack = records["py_stack"].struct
        self._py_frames = records["py_stack"].member("code").count
        self._dtypes: dict[tuple[int, int], np.dtype] = {}  # by (record type, stride)
        # Where each record's values are, by member name (the header is their one definition).
        call = records["coral_call"]
        self._native_scalars = itemgetter(*(native.values(n).start for n in ("slot", "pid", "tid", "start_ns",
                                                                             "duration_ns")))
        self._native_arrays = (native.values("results"), native.values("args"), native.values("strs"))
        self._native_unread = native.values("unread").start
        self._native_lens = native.values("lens")
        self._native_stack = native.values("stack").start
        self.stack_bytes = native.member("stack").size  # CORAL_STACK_BYTES: a Go call's stack arguments copied
        at_call = python.values("call").start
        self._python_scalars = itemgetter(*(python.values(n).start for n in ("slot", "pid", "tid")), *(
            at_call + call.values(n).start for n in ("fn_id", "call_id", "start_ns", "end_ns", "flags", "args_len",
                                                     "ret_len", "args", "ret", "stack_len", "stack")))
        self._args_max, self._ret_max = call.member("args").size, call.member("ret").size
        self._stack_max = call.member("stack").size
        self._hit = self._bpf.load_func(b"coral_hit", bcc.BPF.KPROBE).fd
        self._ret = self._bpf.load_func(b"coral_return", bcc.BPF.KPROBE).fd
        self._python_hit = self._bpf.load_func(b"coral_python", bcc.BPF.KPROBE).fd  # the SDK's sites
        # coral_hit tail-calls it at the entry of a function with a --where condition (verified apart).
        self._bpf["where_calls"][ctypes.c_int(0)] = ctypes.c_int(self._bpf.load_func(b"coral_where", bcc.BPF.KPROBE).fd)
        # coral_hit and coral_return tail-call it at a return a --count-by session counts (verified apart),
        self._bpf["count_calls"][ctypes.c_int(0)] = ctypes.c_int(self._bpf.load_func(b"coral_count",
                                                                                     bcc.BPF.KPROBE).fd)
        # ... and coral_stack (they or coral_count) after a return whose call a --stack session reported.
        self._bpf["stack_calls"][ctypes.c_int(0)] = ctypes.c_int(self._bpf.load_func(b"coral_stack", bcc.BPF.KPROBE).fd)
        try:
            self._uprobes = UprobeAttacher()
            remove_stale_events()  # of agents killed before they could remove them
        except AttachError as exc:
            raise ProbeError(f"cannot make uprobes: {exc}") from exc
        self._sites = self._bpf["sites"]
        # A site's index in `sites`, the cookie of every probe attached for
        # it, by (pid, runtime_ip); given again only once the site has no slot
        # and none of those probes is open (_probes_of), so that a late hit
        # never reads another site's entry. Index 0 is never given.
        self._site_index: dict[tuple[int, int], int] = {}
        self._probes_of: dict[int, int] = {}  # index -> its probes not yet closed
        self._index_site: dict[int, tuple[int, int]] = {}  # index -> (pid, runtime_ip)
        self._free_indexes = list(range(MAX_SITES - 1, 0, -1))
        self._slot_table = self._bpf["slots"]
        self._wheres = self._bpf["wheres"]
        self._stack_slots = self._bpf["stack_slots"]  # --stack: the slots that take stacks, as a mask
        self._counts = self._bpf["counts"]  # per CPU, by slot: struct slot_counts (the ST_* counters)
        self._hist = self._bpf["hist"]
        self._by_slots_table = self._bpf["by_slots"]  # (slot set, cause) -> calls not seen completed
        self._by_slots_base: dict[tuple[int, int], int] = {}  # by (slot, cause): what earlier sessions in it left
        self._deep_frames = self._bpf["deep_frames"]
        self._deep_deleted = 0  # spilled frames the agent deleted: the kernel's count of those in use is net of them
        self._globals = self._bpf["globals"]
        self._sample_counts = self._bpf["sample_counts"]
        self._rate_windows = self._bpf["rate_windows"]
        self._budgets = self._bpf["budgets"]
        self._count_bys = self._bpf["count_bys"]
        self._count_used = self._bpf["count_used"]
        self._count_rows = self._bpf["count_rows"]
        self._stopped = self._bpf["stopped"]
        self._unwound_calls = self._bpf["unwound_calls"]
        self._unwound_read = False  # a slot has wanted such calls since unwound_calls was last found empty
        self._trap_cost = self._bpf["trap_cost"]  # struct charging
        self.trap_ns = 0
        self._budgeted = 0  # slots with a CPU budget: struct charging.budgeted
        self._charging_lock = threading.Lock()
        self.set_trap_ns(TRAP_NS)
        self._free = list(range(MAX_SLOTS - 1, -1, -1))
        self._slot_sites: dict[int, list[Site]] = {}
        self._site_masks: dict[tuple[int, int], int] = {}
        self._configs: dict[int, SlotConfig] = {}  # as last written to each slot
        self._masks_lock = threading.Lock()  # the sites' masks change on the loop and on release threads
        self._closes: dict[tuple[int, str, int, bool], threading.Event] = {}  # probes being removed: set once gone
        self._attached: dict[tuple[int, str, int, bool], tuple[Uprobe, int]] = {}  # key -> (probe, refcount)
        self._ring = RingReader(self._bpf["events"].map_fd, ringbuf_pages * mmap.PAGESIZE)
        # Closed slots whose probes are being removed, or whose records may
        # still be in the ring buffer. Each is free again once its probes are
        # gone and the drains have read past where the ring ended then, so
        # its records are never taken for a later session's on the same slot.
        self.closing: dict[int, Release] = {}
        self.freed: list[int] = []  # closing slots freed since, until the caller takes them
        self.finals: dict[int, SlotStats] = {}  # their final counts, until the caller takes them

    # ------------------------------------------------------------- slots

    def open_slot(self, config: SlotConfig, sites: list[Site], budget_ns: int = 0) -> int:
        """Start watching `sites` for a new slot; all or nothing. `budget_ns`:
        the probe time the slot may cost per second, all CPUs together (0: no limit)."""
        if not self._free:
            raise ProbeError(f"all {MAX_SLOTS} probe slots are in use")
        if config.where is not None:
            for site in sites:
                if len(self._conditioned(self._site_masks.get((site.pid, site.runtime_ip), 0))) >= \
                        where_native.WHERE_SLOTS:
                    raise ProbeError(f"another session with --where already watches this function in pid {site.pid} "
                                     f"(at most {where_native.WHERE_SLOTS} at a time): end it, or attach without --where")
        if config.count_by is not None:
            for site in sites:
                if self._counted(self._site_masks.get((site.pid, site.runtime_ip), 0)):
                    raise ProbeError(f"another session with --count-by already watches this function in pid "
                                     f"{site.pid} (one at a time): end it first")
        slot = self._free.pop()
        self._reset_slot(slot)
        self._write_config(slot, config)
        self._write_budget(slot, budget_ns)
        self._slot_sites[slot] = []
        try:
            # RET sites before entries, for the same reason as in _add_site;
            # close_slot releases in the reverse order.
            for site in sorted(sites, key=lambda s: bool(s.flags & SITE_ENTRY)):
                self._add_site(slot, site)
        except ProbeError:
            self.close_slot(slot)
            raise
        return slot

    def close_slot(self, slot: int) -> SlotStats:
        """Detach what only this slot used, clear its bit, return its final counts."""
        return self.close_slots([slot])[0]

    def close_slots(self, slots: list[int], in_background: bool = False) -> list[SlotStats]:
        """close_slot for several at once, waiting for the kernel (see
        release_slots). `in_background`: for probes nobody else calls (the
        agent's own measurements): their counts are read at once, and a
        thread removes the probes."""
        release = self._release(slots, counts_first=in_background)
        if not in_background:
            release.done.wait()
        return [self._final(release, slot) for slot in slots]

    def release_slots(self, slots: list[int]) -> None:
        """Close slots without waiting: a thread removes their probes (about
        175 ms for each uprobe here, in parallel: every entry probe first,
        then every return probe, so calls under way return and pair), then
        clears their bits from their sites and reads their final counts.
        Each slot is given again only once that is done and the drains have
        read every record it wrote (`closing`, then `freed` and `finals`)."""
        self._release(slots, counts_first=False)

    def _release(self, slots: list[int], counts_first: bool) -> Release:
        entries: list[Uprobe] = []
        returns: list[Uprobe] = []
        released: list[tuple[int, Site]] = []
        release = Release()
        for slot in slots:
            for site in reversed(self._slot_sites.pop(slot, [])):
                for retprobe in (False, True) if site.uretprobe else (False,):
                    probe = self._unref(site, retprobe)
                    if probe is not None:
                        (entries if site.flags & SITE_ENTRY and not retprobe else returns).append(probe)
                        self._closes[(site.pid, site.path, site.file_offset, retprobe)] = release.done
                released.append((slot, site))
            self.closing[slot] = release

        def finish() -> None:
            """Their bits off their sites, where the ring ends now, their counts."""
            with self._masks_lock:
                for slot, site in released:
                    self._write_site(site, self._site_masks.get((site.pid, site.runtime_ip), 0) & ~(1 << slot))
            release.produced = self._ring.produced()  # no probe of these slots writes past this now
            for slot in slots:
                release.stats[slot] = self.stats(slot)
                self._write_budget(slot, 0)
                self._clear_counts(slot)

        def remove() -> None:
            try:
                self._close_all(entries)
                self._close_all(returns)
                if not counts_first:
                    finish()
            except Exception:  # a bug: logged; the slots stay closed rather than be given again half-done
                log.exception("removing the probes of slots %s failed; they are not used again", slots)
                release.failed = True
            release.done.set()

        if counts_first:
            finish()
        threading.Thread(target=remove, name="release-probes", daemon=True).start()
        self.forget_gone_threads()
        return release

    def _free_drained(self) -> None:
        consumed = self._ring.consumed()
        for slot, release in list(self.closing.items()):
            if release.done.is_set() and (release.failed or consumed >= release.produced):
                del self.closing[slot]
                if not release.failed:
                    self._free.append(slot)
                self.freed.append(slot)
                self.finals[slot] = self._final(release, slot)
        for key, gone in list(self._closes.items()):
            if gone.is_set():
                del self._closes[key]

    def _final(self, release: Release, slot: int) -> SlotStats:
        """A released slot's final counts (read now if its thread failed before)."""
        return release.stats.get(slot) or self.stats(slot)

    def _close_all(self, probes: list[Uprobe]) -> None:
        """Close probes (in parallel: each waits for the kernel), then let
        their sites' indexes go if nothing else holds them."""
        try:
            if len(probes) <= 1:
                for probe in probes:
                    self._uprobes.close(probe)
            else:
                with ThreadPoolExecutor(max_workers=min(32, len(probes))) as pool:  # close() lets go of the GIL
                    list(pool.map(self._uprobes.close, probes))
        finally:
            with self._masks_lock:
                for probe in probes:
                    self._probes_of[probe.cookie] -= 1
                    self._free_index_if_unused(probe.cookie)

    def program_fd(self, name: str) -> int:
        """One of the loaded programs (coral_hit, coral_python, ...), by name: bench/verifier.py reads its size."""
        return int(self._bpf.load_func(name.encode(), type(self._bpf).KPROBE).fd)  # BCC returns the one it loaded

    def attached_probes(self, slot: int) -> int:
        return sum(1 + site.uretprobe for site in self._slot_sites.get(slot, []))

    def _write_config(self, slot: int, c: SlotConfig) -> None:
        self._configs[slot] = c
        self._unwound_read = self._unwound_read or c.unwound_calls
        v = self._slot_table.Leaf()
        v.sample_rate = max(1, c.sample_rate)
        v.rate_per_s = c.rate_per_s
        v.capture = int(c.capture_args) | int(c.capture_return) << 1 | (CAPTURE_COUNT_ONLY if c.count_by else 0)
        v.min_duration_ns = c.min_duration_ns
        v.fn_id = c.fn_id
        v.expires_ns = c.expires_monotonic_ns
        v.stack, v.stack_bytes = c.call_stack, c.call_stack_bytes
        v.str_arg[0], v.str_arg[1] = c.str_args
        v.blob_arg, v.blob_len, v.blob_at = c.blob
        v.str_ret, v.str_ret_at = c.str_result
        for held, (reg, data, length) in zip(v.held, c.held_args, strict=True):
            held.reg, held.data_off, held.len_off = reg, data, length
        v.held_mask = sum(1 << i for i, (reg, _, _) in enumerate(c.held_args) if reg >= 0)
        v.stack_len = c.stack_bytes if c.capture_args else 0
        v.ret_stack_off, v.ret_stack_len = c.result_stack if c.capture_return else (0, 0)
        v.held_ret.reg, v.held_ret.data_off, v.held_ret.len_off, v.held_ret.deref = -1, 0, 0, 0
        if c.held_result is not None and c.str_result[0] >= 0:
            # The kernel reads the object's data pointer into the free third result (System V) and copies the string
            # from there as from a C string's pointer (coral_probes.c, read_held_result). Go: the register (or stack
            # word) is an error's data pointer, and the object it points at holds the string (go_result_pointer).
            v.held_ret.reg, (v.held_ret.data_off, v.held_ret.len_off) = c.str_result[0], c.held_result
            v.held_ret.deref = 1
            v.str_ret = 2
        elif c.str_result[0] > 2:
            # Go: a string result in RDI..R11 or on the stack (abi.FROM_STACK plus its offset): its pointer is
            # read before the records, into the third result's place (coral_probes.c, go_result_pointer).
            v.held_ret.reg, v.str_ret = c.str_result[0], 2
        if c.where is not None:
            self._write_where(slot, c.where)  # before a site names the slot (_where_of)
        self._write_count_by(slot, c.count_by)  # likewise (_count_of)
        self._slot_table[ctypes.c_int(slot)] = v
        stacked = sum(1 << i for i, k in self._configs.items() if k.call_stack)
        self._stack_slots[ctypes.c_int(0)] = ctypes.c_uint64(stacked)

    def set_python_layout(self, pid: int, layout: pb.PythonLayout) -> None:
        """--stack in a Python process: where its interpreter keeps its
        frames, so that a call's stack carries them (bpf/coral_python.h)."""
        pyframes.set_python_layouts(self._bpf["python"], {pid: layout})

    def _write_where(self, slot: int, program: where_native.Program) -> None:
        w = self._wheres.Leaf()
        w.n_terms, w.n_code, w.entry_mask = len(program.terms), len(program.code), program.entry_mask
        w.table = 0 if program.entry_mask else program.table()  # with entry terms, the entry works it out
        returns = program.return_terms
        for j in range(where_native.WHERE_RETURN_TERMS):
            w.ret_terms[j] = returns[j] if j < len(returns) else 0xFF
        w.result = program.result
        for c, (op, a, b, dst) in zip(w.code, program.code, strict=False):
            c.a, c.b, c.dst = a, b, dst
            c.and_mask, c.or_mask, c.not_mask = (0xFFFF if op == k else 0 for k in (
                where_native.W_AND, where_native.W_OR, where_native.W_NOT))
        for t, term in zip(w.terms, program.terms, strict=False):
            t.when, t.kind, t.op, t.negate, t.width = term.when, term.kind, term.op, int(term.negate), term.width
            t.is_signed, t.reg, t.len_reg, t.deref = int(term.signed), term.reg, term.len_reg, int(term.deref)
            t.offset, t.len_off, t.value, t.text_len = term.offset, term.len_off, term.value, len(term.text)
            padded = term.text.ljust(where_native.WHERE_STR, b"\0")
            for i in range(where_native.WHERE_STR // 8):
                t.text[i] = int.from_bytes(padded[i * 8:i * 8 + 8], "little")
                t.mask[i] = (1 << 8 * max(0, min(8, len(term.text) - i * 8))) - 1
        self._wheres[ctypes.c_int(slot)] = w

    def _write_count_by(self, slot: int, key: countby.Key | None) -> None:
        """The key's struct count_by, and the slot's overflow and unread rows
        (the kernel counts there, and creates no row of those itself)."""
        self._clear_counts(slot)
        v = self._count_bys.Leaf()
        if key is not None:
            v.kind, v.when, v.reg, v.len_reg, v.deref = key.kind, key.when, key.reg, key.len_reg, int(key.deref)
            v.width, v.err_reg, v.offset, v.len_off = key.width, key.err_reg + 1, key.offset, key.len_off
            v.max_keys = countby.COUNT_MAX_KEYS
            for row in (countby.ROW_OVERFLOW, countby.ROW_UNREAD):
                k = self._count_rows.Key()
                k.slot, k.row = slot, row
                self._count_rows[k] = self._count_rows.Leaf()
        self._count_bys[ctypes.c_int(slot)] = v

    def _clear_counts(self, slot: int) -> None:
        self._count_used[ctypes.c_int(slot)] = ctypes.c_ulonglong(0)
        for k in [k for k in self._count_rows if k.slot == slot]:
            with contextlib.suppress(KeyError):
                del self._count_rows[k]

    def _read_counts(self, slot: int) -> list[tuple[int, int, bytes, countby.Row]]:
        out = []
        for k, v in self._count_rows.items():
            if k.slot != slot:
                continue
            hist = np.ctypeslib.as_array(v.hist)
            buckets = {int(b): int(hist[b]) for b in np.flatnonzero(hist)}
            out.append((int(k.row), int(k.num), bytes(k.str),
                        countby.Row(int(v.calls), int(v.errors), int(v.sum_ns), int(v.max_ns), buckets)))
        return out

    def set_expiry(self, slot: int, monotonic_ns: int) -> None:
        """From then on (CLOCK_MONOTONIC, as bpf_ktime_get_ns), the kernel
        counts and reports nothing for the slot, whenever it is detached."""
        v = self._slot_table[ctypes.c_int(slot)]
        v.expires_ns = monotonic_ns
        self._slot_table[ctypes.c_int(slot)] = v

    def _write_budget(self, slot: int, limit_ns: int) -> None:
        b = self._budgets.Leaf()
        b.limit_ns, b.window_start, b.spent_ns = limit_ns, 0, 0
        self._budgets[ctypes.c_int(slot)] = b
        # The budget first, then its bit: a hit that sees the bit finds the limit.
        with self._charging_lock:  # slots are opened on the loop and released on other threads
            self._budgeted = self._budgeted | 1 << slot if limit_ns else self._budgeted & ~(1 << slot)
            self._write_charging()
        stopped = self.stopped_slots()
        if stopped & (1 << slot):
            self._stopped[ctypes.c_int(0)] = ctypes.c_ulonglong(stopped & ~(1 << slot))

    def set_trap_ns(self, ns: int) -> None:
        with self._charging_lock:
            self.trap_ns = ns
            self._write_charging()

    def _write_charging(self) -> None:
        """struct charging: what a hit is charged, and the slots with a budget."""
        c = self._trap_cost.Leaf()
        c.trap_ns, c.budgeted = self.trap_ns, self._budgeted
        self._trap_cost[ctypes.c_int(0)] = c

    def calibrate(self, site: Site, call: Callable[[], object]) -> int:
        """Measure what one uprobe hit costs on this machine, the trap and
        this program's work together, and charge that to budgets from now
        on. `site` is `call`'s first instruction in this process: a slot of
        its own watches it, timing only, as a session would. The calls'
        added time, median of a few rounds, halved, is one hit."""

        def per_call() -> float:
            rounds = []
            for _ in range(CALIBRATION_ROUNDS):
                t0 = time.perf_counter_ns()
                for _ in range(CALIBRATION_CALLS):
                    call()
                rounds.append((time.perf_counter_ns() - t0) / CALIBRATION_CALLS)
            return statistics.median(rounds)

        bare = per_call()
        slot = self.open_slot(SlotConfig(), [site])
        try:
            probed = per_call()
        finally:
            self.close_slot(slot)
            self.drain()  # its records: nobody's
        for i in range(len(GLOBAL_NAMES)):  # its frames and returns: not the kernel counters' business
            self._globals[ctypes.c_int(i)] = self._globals.Leaf()
        ns = max(0, int((probed - bare) / 2))
        self.set_trap_ns(ns)
        return ns

    def stopped_slots(self) -> int:
        """Slots the kernel stopped because they went over their CPU budget."""
        return int(self._stopped[ctypes.c_int(0)].value)

    def _reset_slot(self, slot: int) -> None:
        self._counts[ctypes.c_int(slot)] = self._counts.Leaf()  # zero on every CPU
        for i in range(HIST_BUCKETS):
            self._hist[ctypes.c_int(slot * HIST_BUCKETS + i)] = self._hist.Leaf()
        self._sample_counts[ctypes.c_int(slot)] = ctypes.c_ulonglong(0)
        self._rate_windows[ctypes.c_int(slot)] = ctypes.c_ulonglong(0)
        for cause in (BY_UNWOUND, BY_TOO_DEEP, BY_TAIL_CALL):
            self._by_slots_base[(slot, cause)] = self._by_slots(slot, cause)

    def _by_slots(self, slot: int, cause: int) -> int:
        """A count the program keeps by cause and set of slots, for one slot."""
        return sum(int(count.value) for key, count in self._by_slots_table.items()
                   if key.cause == cause and int(key.slots) >> slot & 1)

    # ------------------------------------------------------------- sites

    def _write_site(self, site: Site, mask: int) -> None:
        """The site's entry in `sites` (under _masks_lock), giving it an index
        if it has none; with no slot left, an empty entry."""
        where = (site.pid, site.runtime_ip)
        if mask == 0:
            self._site_masks.pop(where, None)
            index = self._site_index.get(where)
            if index is not None:
                self._sites[ctypes.c_int(index)] = self._sites.Leaf()  # a late hit finds no slot there
                self._free_index_if_unused(index)
            return
        index = self._site_index.get(where)
        if index is None:
            if not self._free_indexes:
                raise ProbeError(f"all {MAX_SITES - 1} probe sites are in use (probed instructions, all processes "
                                 f"together): detach sessions you no longer need")
            index = self._site_index[where] = self._free_indexes.pop()
            self._index_site[index], self._probes_of[index] = where, 0
        value = self._sites.Leaf()
        value.slots, value.func_ip, value.held = mask, site.func_ip, self._held_of(mask)
        value.where = self._where_of(mask)
        counted = self._counted(mask)
        value.count_by = counted[0] + 1 if counted else 0
        value.flags = site.flags | (SITE_URET if site.uretprobe else 0)
        value.tgid = site.pid
        self._sites[ctypes.c_int(index)] = value
        self._site_masks[where] = mask

    def _free_index_if_unused(self, index: int) -> None:
        """Give the index again once no slot watches its site and none of its
        probes is open (under _masks_lock)."""
        where = self._index_site.get(index)
        if where is None or self._probes_of[index] > 0 or where in self._site_masks:
            return
        del self._site_index[where], self._index_site[index], self._probes_of[index]
        self._free_indexes.append(index)

    def _held_of(self, mask: int) -> int:
        """struct site.held: a slot of `mask` whose config copies strings that
        arguments' objects hold, and one whose config reads the result's (each
        plus one; 0: none), so the program reads one config, not every slot's."""
        args = result = unwound = 0
        for slot in range(MAX_SLOTS):
            c = self._configs.get(slot) if mask >> slot & 1 else None
            if c is None:
                continue
            # A Go function's sites name the slot that copies stack arguments; a native one's, held strings.
            if not args and c.capture_args and (c.stack_bytes or any(reg >= 0 for reg, _, _ in c.held_args)):
                args = slot + 1
            if not result and c.capture_return and ((c.held_result is not None and c.str_result[0] >= 0) or
                                                    c.str_result[0] > 2):
                result = slot + 1
            if c.unwound_calls:
                unwound = HELD_UNWOUND
        return args | result << 8 | unwound

    def _conditioned(self, mask: int) -> list[int]:
        return [slot for slot in range(MAX_SLOTS) if mask >> slot & 1 and (c := self._configs.get(slot)) is not None
                and c.where is not None]

    def _counted(self, mask: int) -> list[int]:
        return [slot for slot in range(MAX_SLOTS) if mask >> slot & 1 and (c := self._configs.get(slot)) is not None
                and c.count_by is not None]

    def _where_of(self, mask: int) -> int:
        """struct site.where: the slots of `mask` with a --where condition, each plus one, 8 bits each."""
        return sum((slot + 1) << 8 * k for k, slot in enumerate(self._conditioned(mask)[:where_native.WHERE_SLOTS]))

    def _add_site(self, slot: int, site: Site) -> None:
        # The map first: a probe that fires must find its site.
        with self._masks_lock:
            self._write_site(site, self._site_masks.get((site.pid, site.runtime_ip), 0) | (1 << slot))
            index = self._site_index[(site.pid, site.runtime_ip)]
        self._slot_sites[slot].append(site)
        # The return probe before the entry: an entry seen before its return
        # could be would leave a frame that looks unwound.
        probes = (True, False) if site.uretprobe else (False,)
        acquired: list[bool] = []
        try:
            for retprobe in probes:
                self._acquire(site, retprobe, index)
                acquired.append(retprobe)
        except ProbeError:
            for retprobe in acquired:
                self._release_one(site, retprobe)
            self._slot_sites[slot].remove(site)
            with self._masks_lock:
                self._write_site(site, self._site_masks.get((site.pid, site.runtime_ip), 0) & ~(1 << slot))
            raise

    def _acquire(self, site: Site, retprobe: bool, index: int) -> None:
        key = (site.pid, site.path, site.file_offset, retprobe)
        being_removed = self._closes.pop(key, None)
        if being_removed is not None:  # a session just ended there: two probes at once would see each call twice
            being_removed.wait()
        kind = "uretprobe" if retprobe else "uprobe"
        where = f"{kind} at {site.path}+{site.file_offset:#x} (pid {site.pid})"
        if key in self._attached:
            probe, refs = self._attached[key]
            if probe.cookie != index:  # one probe, one site: the same code mapped twice in the process
                raise ProbeError(f"{where}: that instruction is already probed at another address in the process")
            self._attached[key] = (probe, refs + 1)
            return
        program = self._ret if retprobe else self._python_hit if site.flags & SITE_PYTHON else self._hit
        with self._masks_lock:
            self._probes_of[index] += 1  # before it can fire: the index stays the site's until it is closed
        try:
            probe = self._uprobes.attach(program, retprobe, site.path, site.file_offset, site.pid,
                                         site.ref_ctr_offset, index)
        except AttachError as exc:
            with self._masks_lock:
                self._probes_of[index] -= 1
                self._free_index_if_unused(index)
            raise ProbeError(f"{where} refused by the kernel: {exc}") from exc
        self._attached[key] = (probe, 1)

    def _release_one(self, site: Site, retprobe: bool) -> None:
        probe = self._unref(site, retprobe)
        if probe is not None:
            self._close_all([probe])

    def _unref(self, site: Site, retprobe: bool) -> Uprobe | None:
        """One reference fewer; the probe to close if that was the last, else None."""
        key = (site.pid, site.path, site.file_offset, retprobe)
        if key not in self._attached:
            return None
        probe, refs = self._attached[key]
        if refs > 1:
            self._attached[key] = (probe, refs - 1)
            return None
        del self._attached[key]
        return probe

    @property
    def attachment_count(self) -> int:
        return len(self._attached)

    # ------------------------------------------------------------ events

    def drain(self, limit: int = 0) -> tuple[list[Drained], bool]:
        """What the kernel has submitted so far (about `limit` bytes of records
        at most, 0: all), non-blocking, as (slot, calls) in the order the records came;
        and whether more may be waiting."""
        runs, more = self._ring.read(limit)
        out = self._decode_runs(runs)
        self._free_drained()
        return out, more

    def _decode_runs(self, runs: list[np.ndarray]) -> list[Drained]:
        out: list[Drained] = []
        for rows in runs:
            kinds = rows[:, HEADER_BYTES: HEADER_BYTES + 4].copy().view("<u4")[:, 0]  # every record starts with its type
            length = int(rows[0, :4].view("<u4")[0]) & ~(BUSY_BIT | DISCARD_BIT)  # a run's records share their header
            cuts = np.flatnonzero(kinds[1:] != kinds[:-1]) + 1  # records of one size are of one kind, but never trust it
            for part in np.split(rows, cuts) if cuts.size else [rows]:
                self._decode(int(part[0, HEADER_BYTES: HEADER_BYTES + 4].view("<u4")[0]), length, part, out)
        return out

    def _decode(self, kind: int, length: int, rows: np.ndarray, out: list[Drained]) -> None:
        layout = self._timing_layouts.get(kind)
        if layout is not None and length >= layout.size:
            stride = rows.shape[1]
            dtype = self._dtypes.get((kind, stride))
            if dtype is None:
                dtype = self._dtypes[(kind, stride)] = record_dtype(layout, stride)
            rec = rows.view(dtype)[:, 0]
            slots = rec["slot"]
            pid, tid = rec["pid"].astype(np.int64), rec["tid"].astype(np.int64)
            if kind == EV_NATIVE_TIMING:
                start = rec["start_ns"].astype(np.int64)
                end = start + rec["duration_ns"].astype(np.int64)
            else:
                start, end = rec["head"][:, 2].astype(np.int64), rec["head"][:, 3].astype(np.int64)
            first = int(slots[0])
            if (slots == first).all():
                out.append((first, Timings(pid, tid, start, end)))
                return
            for slot in np.unique(slots).tolist():
                mine = slots == slot
                out.append((int(slot), Timings(pid[mine], tid[mine], start[mine], end[mine])))
            return
        if length < self._full_sizes.get(kind, 1 << 31):
            return  # not a record this program writes
        if kind in (EV_STACK_WALK, EV_STACK_COPY):
            out.append((STACKS, [self._decode_stack(kind, raw.tobytes()) for raw in rows]))
            return
        groups: list[tuple[int, list[NativeRecord | PythonRecord]]] = []  # consecutive records of one slot
        for raw in rows:
            slot, record = self._decode_full(kind, raw.tobytes())
            if groups and groups[-1][0] == slot:
                groups[-1][1].append(record)
            else:
                groups.append((slot, [record]))
        out.extend(groups)

    def _decode_stack(self, kind: int, raw: bytes) -> StackRecord:
        _, at_ret, pid, tid, start, slots, ip, sp, bp, ret, size = self._stack_head.unpack_from(raw, HEADER_BYTES)
        at_py = HEADER_BYTES + self._stack_head_size
        depth, cut = self._py_stack.unpack_from(raw, at_py)[:2]
        python = pyframes.python_pairs(raw, at_py + 8, depth, self._py_frames) if depth else ()
        body = raw[at_py + self._py_stack.size:]
        head = (pid, tid, start, slots, bool(at_ret), ip, sp, bp, ret)
        if size < 0:
            return StackRecord(*head, failed=True, python=python, python_cut=bool(cut))
        if kind == EV_STACK_COPY:
            return StackRecord(*head, copy=body[:size], python=python, python_cut=bool(cut))
        n = min(size // 8, len(body) // 8)
        return StackRecord(*head, walked=tuple(np.frombuffer(body[:n * 8], dtype="<u8").tolist()), python=python,
                           python_cut=bool(cut))

    def _decode_full(self, kind: int, raw: bytes) -> tuple[int, NativeRecord | PythonRecord]:
        """One record with captured values (after its ring-buffer header)."""
        if kind in (EV_NATIVE, EV_NATIVE_GO):
            f = self._native.unpack_from(raw, HEADER_BYTES)
            slot, pid, tid, start, duration = self._native_scalars(f)
            at_results, at_args, at_strs = self._native_arrays
            results, args, strs = f[at_results], f[at_args], f[at_strs]
            lens = f[self._native_lens]
            unread = f[self._native_unread]
            stack = b"" if unread & UNREAD_STACK else f[self._native_stack]
            stack_ret = b""
            if kind == EV_NATIVE_GO:  # Go's other result registers and its stack results follow
                *more, stack_ret = self._go_tail.unpack_from(raw, HEADER_BYTES + self._go_tail_at)
                results += tuple(more)
                if unread & UNREAD_STACK_RET:
                    stack_ret = b""
            return slot, NativeRecord(pid, tid, start, duration, results, args, (strs[0], strs[1]), unread,
                                      (lens[0], lens[1]), stack, stack_ret)
        f = self._python.unpack_from(raw, HEADER_BYTES)
        slot, pid, tid, fn_id, call_id, start, end, flags, args_len, ret_len, args, ret, stack_len, stack = \
            self._python_scalars(f)
        return slot, PythonRecord(pid, tid, fn_id, call_id, start, end, flags, args[:min(args_len, self._args_max)],
                                  ret[:min(ret_len, self._ret_max)],
                                  stack[:min(stack_len, self._stack_max)] if flags & CALL_STACK else b"")

    def drain_unwound(self) -> list[UnwoundCall]:
        """The calls the kernel kept because they left by unwinding (read and
        deleted, in the order they were entered). Their strings were never
        copied (that happens at a return): marked unread. Read only while
        some slot wants them, and until the table is found empty after: a
        read costs a system call on every drain (15-50 µs here)."""
        if not self._unwound_read:
            return []
        out = []
        for key, frame in self._unwound_calls.items_lookup_and_delete_batch():
            ident = int(key.id)
            record = NativeRecord(ident >> 32, ident & 0xFFFFFFFF, int(key.ts), 0, (0, 0, 0), tuple(frame.args),
                                  (b"", b""), 0b11, unwound_found_ns=int(key.found_ns))
            out.append(UnwoundCall(int(frame.slots), record))
        out.sort(key=lambda u: u.record.start_ns)
        live = set(self._slot_sites) | set(self.closing)  # a closing slot's last calls may still be found
        if not out and not any(self._configs[slot].unwound_calls for slot in live if slot in self._configs):
            self._unwound_read = False
        return out

    # ------------------------------------------------------------ counts

    def stats(self, slot: int, with_histogram: bool = True, with_counts: bool = True) -> SlotStats:
        """The slot's counts; `with_counts`: its --count-by rows too (a map walk)."""
        per_cpu = self._counts[ctypes.c_int(slot)]
        counters = np.array([np.ctypeslib.as_array(c.stats) for c in per_cpu], dtype=np.uint64)  # CPU x ST_*
        v = [int(n) for n in counters.sum(axis=0)]
        v[ST_MAX_NS] = int(counters[:, ST_MAX_NS].max())
        hist: dict[int, int] = {}
        hb = slot * HIST_BUCKETS
        for i in range(HIST_BUCKETS if with_histogram else 0):
            n = int(self._hist.sum(ctypes.c_int(hb + i)).value)
            if n:
                hist[i] = n
        unwound, too_deep, tail_calls = (self._by_slots(slot, cause) - self._by_slots_base.get((slot, cause), 0)
                                         for cause in (BY_UNWOUND, BY_TOO_DEEP, BY_TAIL_CALL))
        counted = self._configs.get(slot)
        rows = self._read_counts(slot) if with_counts and counted is not None and counted.count_by is not None else []
        return SlotStats(v[ST_CALLS], v[ST_SAMPLED], v[ST_FILTERED], v[ST_RINGBUF], v[ST_EMITTED], v[ST_MAX_NS],
                         v[ST_SUM_NS], hist, v[ST_UNREADABLE], v[ST_EXPIRED], unwound, too_deep,
                         tail_calls, v[ST_WHERE_ERROR], v[ST_RATE], rows)

    def global_counters(self) -> dict[str, int]:
        out = {}
        for i, name in enumerate(GLOBAL_NAMES):
            total = sum(int(v) for v in self._globals.getvalue(ctypes.c_int(i))) & (1 << 64) - 1
            out[name] = total - (1 << 64) if total >> 63 else total  # per-CPU parts of a difference may wrap
        out["deep_frames_in_use"] -= self._deep_deleted
        return out

    def forget_gone_threads(self) -> int:
        """Delete the spilled frames of threads that are gone (a thread that
        ends deep in probed calls leaves them); how many were deleted. Looked
        through only while the kernel says some are in use."""
        if self.global_counters()["deep_frames_in_use"] <= 0:
            return 0
        deleted = 0
        for key in list(self._deep_frames.keys()):
            ident = int(key.thread.id)
            # Native: pid_tgid, a thread; Go: the tgid alone (goroutines are the runtime's to reuse).
            path = f"/proc/{ident >> 32}/task/{ident & 0xFFFFFFFF}" if ident >> 32 else f"/proc/{ident}"
            if os.path.exists(path):
                continue
            with contextlib.suppress(KeyError):
                del self._deep_frames[key]
                deleted += 1
        self._deep_deleted += deleted
        return deleted

    def close(self) -> None:
        for release in list(self.closing.values()):
            release.done.wait(30)  # a thread still removing probes: before the program goes
        self._close_all([probe for probe, _ in self._attached.values()])
        self._attached.clear()
        self._ring.close()
        self._bpf.cleanup()
