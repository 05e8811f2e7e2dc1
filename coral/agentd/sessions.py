"""Debug sessions on this agent: attach, collect, expire, detach, query.

Knows nothing of sockets: it is given a registry, a store, a way to ask a
process things, and the probe engine. Each session owns one engine slot.
The agent enforces every session's expiry itself, colony or no colony.
"""

from __future__ import annotations

import builtins
import itertools
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from coral.agentd import abi, callstacks, conditions, countby, showvalues, where_native
from coral.agentd.callblocks import CallBlock, CallRow, calls_of, rows_in_blocks, take
from coral.agentd.engine import (
    STACK_COPY,
    STACK_WALK,
    STACKS,
    NativeRecord,
    ProbeEngine,
    ProbeError,
    PythonRecord,
    Site,
    SlotConfig,
    SlotStats,
    StackRecord,
    Timings,
)
from coral.agentd.memory import release_idle_pages, trim_heap
from coral.agentd.probecost import ProbeCosts, first_bytes
from coral.agentd.registry import ProcessRegistry, Registration
from coral.agentd.store import EventStore, SessionRow
from coral.agentd.symbolize import Symbolizer, sets_up_frame
from coral.agentd.targets import go_error_types, native_sites, python_site
from coral.agentd.totals import CallTotals
from coral.daemon.config import Config
from coral.daemon.errors import CoralError, Internal, InvalidArgument, LimitExceeded, NotFound, ProbeFailed, Unavailable
from coral.daemon.server import Later
from coral.proto import coral_pb2 as pb
from coral.redact import Rules

log = logging.getLogger(__name__)

# Bytes of records a query reads from the ring buffer first, at most (4,000
# to 6,500 timing-only calls, or 300 to 1,000 with values): its answer then has every
# call that returned before it, unless the agent is far behind.
QUERY_DRAIN = 256 * 1024

# (process, method, request, answer): never waits; `answer` gets the response or the CoralError, later.
AskProcess = Callable[[Registration, str, Any, Callable[[Any], None]], None]

ACTIVE, EXPIRED, DETACHED, FAILED = "active", "expired", "detached", "failed"
DEFAULT_PAGE, MAX_PAGE = 500, 5000
CALL_RAISED = 0x1


def wall_clock_offset_ns() -> int:
    """bpf_ktime_get_ns() reads CLOCK_MONOTONIC; add this to get Unix time."""
    return time.time_ns() - time.monotonic_ns()


MAX_CAPTURE_ONLY = 16
MAX_RATE_PER_S = 1_000_000  # --rate's largest limit (docs/protocol.md, UprobeConfig.rate_per_s)
COUNTS_EVERY = 1.0  # seconds between asks for a Python --count-by session's live rows
MAX_AWAITING = 2048  # --stack: calls held for their stack (a copy is 8 KiB); past it they go without (stack_missing)
STACK_FILES_WAIT = 30.0  # seconds an ended session's last calls wait for its files to be read, at most


def check_stack(config: pb.UprobeConfig) -> None:
    """--stack's bounds (docs/protocol.md, UprobeConfig.stack)."""
    if not config.stack:
        if config.stack_depth or config.stack_bytes or config.stack_unwind:
            raise InvalidArgument("stack_depth, stack_bytes and stack_unwind need --stack")
        return
    if config.stack_depth > callstacks.MAX_DEPTH:
        raise InvalidArgument(f"--stack-depth {config.stack_depth} is over the limit of {callstacks.MAX_DEPTH} frames")
    if config.stack_bytes > callstacks.MAX_BYTES:
        raise InvalidArgument(f"--stack-bytes {config.stack_bytes} is over the limit of {callstacks.MAX_BYTES}")
    if config.stack_unwind not in ("", *callstacks.UNWINDS):
        raise InvalidArgument(f"--stack-unwind {config.stack_unwind!r}: one of {', '.join(callstacks.UNWINDS)}")


def stack_unwind_of(config: pb.UprobeConfig, meta: pb.FunctionMetadata, first: bytes) -> str:
    """How a native session takes stacks: as asked, else frame pointers
    where the code keeps them (Go always does; a C or C++ function that
    pushes %rbp and points it at its frame was built with them), else a
    copy unwound with .eh_frame."""
    if config.stack_unwind:
        return config.stack_unwind
    if meta.kind == "go":
        return "fp"
    return "fp" if sets_up_frame(first) else "tables"


def check_capture_only(config: pb.UprobeConfig, meta: pb.FunctionMetadata, rules: Rules) -> None:
    """`--print` names the values it shows; refuse names the function does
    not have, and redacted ones (a template must not reveal them)."""
    names = list(config.capture_only)
    if not names:
        return
    if len(names) > MAX_CAPTURE_ONLY:
        raise InvalidArgument(f"--print names {len(names)} values; at most {MAX_CAPTURE_ONLY}")
    arguments = [s.name for s in abi.argument_layout(meta)] if meta.kind != "python" else \
        [a.name for a in meta.arguments]
    for name in names:
        if name == "ret":
            if not config.capture_return:
                raise InvalidArgument("capture_only names ret without capture_return")
            continue
        if name not in arguments:
            raise InvalidArgument(f"--print names {name!r}; the function's arguments are: "
                                  f"{', '.join(arguments) or 'none'}")
        if not config.capture_args:
            raise InvalidArgument(f"capture_only names {name!r} without capture_args")
        if rules.is_secret_name(name):
            raise InvalidArgument(f"--print names {name!r}, which is redacted: its value is never shown")


def native_condition(config: pb.UprobeConfig, meta: pb.FunctionMetadata, rules: Rules) -> where_native.Program | None:
    """The kernel's form of a native session's condition (--errors-only included)."""
    if conditions.unwinding_errors(config, meta):
        conditions.effective(config, meta)  # refuses --where with it
        return where_native.errors_program(meta)[0]
    return where_native.compile_condition(conditions.effective(config, meta), meta, rules)


UNWOUND_ERROR = "ended by unwinding (an exception or a panic): no return value, duration not known"


def unwound_return(rec: NativeRecord) -> dict[str, Any]:
    """The return value shown for a call that left by unwinding: an error,
    with the only bound on its duration there is (when it was found dead)."""
    after_us = max(0, rec.unwound_found_ns - rec.start_ns) / 1000
    return {"type": "", "value": "", "is_error": True,
            "error_message": f"{UNWOUND_ERROR} (found ended {after_us:.0f} µs after its entry)"}


def _condition_shown(text: str) -> str:
    return f"--where {text!r}" if text else "no --where"


@dataclass(frozen=True)
class NativeShape:
    """Where a native record holds each value of one target's function, for
    a session's capture: worked out once, not for every call."""

    slots: abi.RecordSlots
    arguments: list[abi.Slot]
    fields_of: dict[str, list[pb.FieldMetadata]]  # by argument: the struct members copied through it
    results: list[abi.Slot]
    error_types: Mapping[int, str] = field(default_factory=dict)  # Go: an `error` itab's address -> its concrete type
    pointee_of: dict[str, pb.EnumMetadata] = field(default_factory=dict)  # by argument: the Rust enum it points to

    @classmethod
    def of(cls, meta: pb.FunctionMetadata, config: pb.UprobeConfig, string_bytes: int,
           error_types: Mapping[int, str] | None = None) -> NativeShape:
        return cls(abi.record_slots(meta, config.capture_args, config.capture_return, string_bytes),
                   abi.argument_layout(meta), {a.name: list(a.fields) for a in meta.arguments if a.fields},
                   abi.result_layout(meta), {} if error_types is None else error_types,
                   {a.name: a.pointee_variants for a in meta.arguments if a.HasField("pointee_variants")})


@dataclass
class Awaiting:
    """--stack: a call drained before it could be stored with its stack."""

    record: NativeRecord | PythonRecord
    drain: int  # the collect that drained it
    stack: StackRecord | None = None


@dataclass
class Target:
    reg: Registration
    meta: pb.FunctionMetadata
    sites: list[Site]
    fn_id: int = 0  # Python: the id the SDK stamps on records
    function: str = ""  # Python: the name it was armed under
    error_types: Mapping[int, str] = field(default_factory=dict)  # Go: an `error` itab's address -> its concrete type


@dataclass
class Session:
    session_id: str
    service: str
    function: str
    config: pb.UprobeConfig
    started_ns: int
    expires_ns: int
    max_events: int
    slot: int
    targets: list[Target]
    status: str = ACTIVE
    reason: str = ""
    owner: str = ""  # who started it (uid:N; key:colony for the colony's requests)
    unanswered: list[str] = field(default_factory=list)  # instances left out at the start
    ended_ns: int = 0
    return_probe: str = ""  # uretprobe | ret | python (DebugSession.return_probe)
    entry_instruction: str = ""  # push | nop | nop5 | endbr64 | other; "" for Python
    probe_cost_ns: int = 0  # the probes' own share of each duration (DebugSession.probe_cost_ns)
    inlined_into: list[str] = field(default_factory=list)  # call sites the function was inlined into: not seen
    stored: int = 0
    lost: Counter[str] = field(default_factory=Counter)
    final: SlotStats | None = None
    shapes: dict[int, tuple[pb.FunctionMetadata, NativeShape]] = field(default_factory=dict)  # by pid, as calls come
    count_key: countby.Key | None = None  # --count-by, as the kernel reads it
    rules: Rules | None = None  # how --count-by keys are shown (redacted as any value)
    sdk_counts: dict[int, list[pb.CountRow]] | None = None  # --count-by on Python: each process's rows, by pid
    counts_pending: int = 0  # --count-by on Python: disarms sent whose answer (with the rows) has not come
    counts_asked: float = 0.0  # --count-by on Python: when the live rows were last asked for (monotonic)
    stack_unwind: str = ""  # --stack: fp | tables (DebugSession.stack_unwind); "" without
    stacks: callstacks.SessionStacks | None = None
    # --stack: calls drained before their stack (it follows them in the ring
    # buffer), or before the session's files were read; at most MAX_AWAITING.
    awaiting: builtins.list[Awaiting] = field(default_factory=list)
    unwound_calls: bool = False  # --errors-only on C++, Rust: the kernel keeps the calls that leave by unwinding
    unwound_reported: int = 0  # such calls drained for this session: not in lost.unwound
    opened_ns: int = 0  # its slot was given (unix ns): a frame entered before is an earlier session's

    @property
    def pids(self) -> list[int]:
        return [t.reg.pid for t in self.targets]

    def count_rows(self, stats: SlotStats) -> dict[countby.RowId, countby.Row]:
        """The kernel's --count-by rows as shown: keys as text, rows that read the same merged."""
        key, rules = self.count_key, self.rules or Rules()
        if self.sdk_counts is not None:
            return countby.merged(((r.key, r.overflow, r.unread, r.cut),
                                   countby.Row(r.calls, r.errors, r.sum_duration_ns, r.max_duration_ns,
                                               dict(r.histogram)))
                                  for rows in self.sdk_counts.values() for r in rows)
        if key is None:
            return {}
        out = []
        for row, num, text, counts in stats.count_rows:
            if row == countby.ROW_KEY:
                shown, cut = countby.shown(key, num, text, rules)
                out.append(((shown, False, False, cut), counts))
            else:
                out.append((("", row == countby.ROW_OVERFLOW, row == countby.ROW_UNREAD, False), counts))
        return countby.merged(out)

    def to_row(self, stats: SlotStats) -> SessionRow:
        c = self.config
        lost = {"sampled": stats.sampled, "filtered": stats.filtered, "ringbuf_full": stats.ringbuf_full,
                "unreadable": stats.unreadable, "unwound": max(0, stats.unwound - self.unwound_reported),
                "too_deep": stats.too_deep,
                "tail_call": stats.tail_calls, "where_error": stats.where_error, "rate": stats.rate, **self.lost}
        return SessionRow(
            self.session_id, self.service, self.function, self.pids, self.started_ns, self.expires_ns, self.ended_ns,
            self.status, self.reason,
            {"capture_args": c.capture_args, "capture_return": c.capture_return, "sample_rate": c.sample_rate,
             "max_events": self.max_events, "min_duration_ns": c.min_duration_ns, "predicate": c.predicate,
             "capture_only": list(c.capture_only), "rate_per_s": c.rate_per_s,
             "errors_only": c.errors_only,
             "owner": self.owner, "unanswered": self.unanswered, "return_probe": self.return_probe,
             "inlined_into": self.inlined_into, "entry_instruction": self.entry_instruction,
             "probe_cost_ns": self.probe_cost_ns,
             "count_by": c.count_by,
             "stack": c.stack, "stack_depth": c.stack_depth, "stack_bytes": c.stack_bytes,
             "stack_unwind": self.stack_unwind, "stack_unwind_asked": c.stack_unwind,
             "stats": {"calls": stats.calls, "sum_ns": stats.sum_ns, "max_ns": stats.max_ns,
                       "histogram": {str(k): v for k, v in stats.histogram.items()},
                       **({"counts": countby.to_json(self.count_rows(stats))}
                          if self.count_key or self.sdk_counts is not None else {})}},
            {k: v for k, v in lost.items() if v},
        )


@dataclass
class Starting:
    """An attach waiting on its instances' answers (one Target, or the
    reason it has none, per instance, in the registry's order)."""

    session_id: str
    req: pb.AttachUprobeRequest
    owner: str
    duration_ms: int
    events_limit: int
    targets: list[Target | None]
    waiting: int  # instances yet to answer
    unanswered: list[Unavailable] = field(default_factory=list)
    refused: CoralError | None = None  # the first refusal other than UNAVAILABLE: the attach fails
    cancelled: bool = False  # the agent is stopping
    later: Later = field(default_factory=Later)


class SessionManager:
    def __init__(self, config: Config, agent_id: str, registry: ProcessRegistry, store: EventStore,
                 ask: AskProcess, engine: ProbeEngine, symbolizer: Symbolizer | None = None) -> None:
        self.config = config
        self.symbolizer = symbolizer or Symbolizer()  # --stack: files read once, shared with the profiles
        self.agent_id = agent_id
        self.registry = registry
        self.store = store
        self.ask = ask
        self.engine = engine
        self.probe_costs = ProbeCosts(None)  # the agent's own measure (coral/agentd/probecost.py)
        self.active: dict[str, Session] = {}
        self.starting: dict[str, Starting] = {}  # attaches waiting on their processes
        self.counters: Counter[str] = Counter()
        self.totals = CallTotals()  # over this run's sessions, for /metrics
        self._by_slot: dict[int, Session] = {}
        self._pending: builtins.list[CallBlock] = []  # drained, not handed to the store yet (seq order)
        self._pending_calls = 0  # the calls in them
        self._handed: dict[str, int] = {}  # by session active in this run: the last seq handed to the store
        self.news: set[str] = set()  # sessions with new calls, or ended, since the followers were last told
        self.more_waiting = False  # the last collect stopped at its limit
        self._ended_unwritten: dict[str, Session] = {}  # ended, some of their calls still in the batch (or the ring)
        # Ended, some of their calls maybe still in the ring buffer: the drains
        # read them over the next turns (a session's end reads nothing itself),
        # with what waits for them (a DetachUprobe's answer).
        self._closing: dict[str, Session] = {}
        self._when_collected: dict[str, builtins.list[Callable[[], None]]] = {}
        # Set by the agent: may a query read the ring buffer now (its ingest
        # budget, the batch's bound).
        self.may_drain: Callable[[], bool] = lambda: True
        self._trimmed = 0.0
        self._seq = store.next_seq()
        self._drains = 0  # collects so far (--stack: how long a call has waited for its stack)
        self._finishing: builtins.list[tuple[Session, SlotStats]] = []  # ended, calls waiting for their stacks
        # Python: one fn_id per function name, shared by every session and
        # process; a function stays armed while any session uses it.
        self._fn_id_source = itertools.count(int(time.time()) << 20)
        self._fn_ids: dict[str, int] = {}
        # (pid, name) -> (sessions, args, return, the condition it is armed with, --stack's depth: 0 none)
        self._arms: dict[tuple[int, str], tuple[int, bool, bool, str, int]] = {}
        self._counting: set[tuple[int, str]] = set()  # arms counting by a key (--count-by): one session each
        self._clock_offset = wall_clock_offset_ns()
        self.rules = Rules(config.sdk.redact_patterns)  # the SDK's rules, for native values

    # ------------------------------------------------------------ attach

    def attach(self, req: pb.AttachUprobeRequest, owner: str = "") -> Later:
        """Check the request now, ask every instance of the service at once,
        and answer (the Later, with an AttachUprobeResponse) when the last has
        answered or missed its deadline: the agent serves everything else meanwhile."""
        duration_ms = self.config.sessions.session_duration_ms(req.duration_ms)
        if not req.function:
            raise InvalidArgument("a function name is required")
        limit = self.config.sessions.max_sessions_per_agent
        running = len(self.active) + len(self.starting)
        if running >= limit:
            raise LimitExceeded(f"agent {self.agent_id} already runs {running} sessions (limit {limit})")
        events_limit = self.config.sessions.max_events_per_session
        if req.config.max_events > events_limit:
            raise InvalidArgument(f"max_events {req.config.max_events} exceeds this agent's limit of {events_limit} "
                                  f"([sessions] max_events_per_session); ask for {events_limit} or less")
        check_stack(req.config)
        if req.config.rate_per_s > MAX_RATE_PER_S:
            raise InvalidArgument(f"--rate {req.config.rate_per_s}/s is over the limit of {MAX_RATE_PER_S:,}/s")
        if req.session_id and (len(req.session_id) > 64 or not req.session_id.isprintable()):
            raise InvalidArgument("session id must be up to 64 printable characters")
        session_id = req.session_id or f"dbg-{secrets.token_hex(6)}"
        if session_id in self.active or session_id in self.starting:
            raise InvalidArgument(f"session {session_id} already exists")
        instances = self.registry.instances(req.service)
        if not instances:
            known = self.registry.services()
            raise NotFound(f"service {req.service!r} is not registered on agent {self.agent_id}"
                           + (f" (registered: {', '.join(known)})" if known else " (no services registered)"), known)
        start = Starting(session_id, req, owner, duration_ms, events_limit, [None] * len(instances), len(instances))
        self.starting[session_id] = start
        for index, reg in enumerate(instances):
            self._ask_metadata(start, index, reg)
        return start.later

    def _ask_metadata(self, start: Starting, index: int, reg: Registration) -> None:
        function = start.req.function

        def on_metadata(result: Any) -> None:
            if isinstance(result, NotFound):
                hint = (f"; closest: {', '.join(result.suggestions)}" if result.suggestions
                        else f"; list them with: coralctl functions {reg.service}")
                result = NotFound(f"function {function!r} not found in service {reg.service!r} (pid {reg.pid}){hint}",
                                  result.suggestions)
            if isinstance(result, CoralError):
                self._answered(start, index, result)
                return
            meta = cast(pb.GetFunctionMetadataResponse, result).metadata
            try:
                condition = conditions.effective(start.req.config, meta)  # refused here, before anything is armed
                countby.check_config(start.req.config)
                if meta.kind == "python":
                    if condition:
                        conditions.check_python(condition, self.rules)
                    if start.req.config.count_by:
                        countby.check_python_key(start.req.config.count_by, self.rules)
                    self._ask_arm(start, index, reg, condition)
                    return
                self._answered(start, index, Target(reg, meta, native_sites(reg.pid, reg.executable, meta),
                                                    error_types=go_error_types(reg.pid, reg.executable, meta)))
            except CoralError as exc:
                self._answered(start, index, exc)

        self.ask(reg, "GetFunctionMetadata", pb.GetFunctionMetadataRequest(function=function), on_metadata)

    def _ask_arm(self, start: Starting, index: int, reg: Registration, condition: str) -> None:
        req = start.req
        fn_id = self._fn_ids.setdefault(req.function, next(self._fn_id_source))
        key = (reg.pid, req.function)
        users, args, ret, armed_with, depth = self._arms.get(key, (0, False, False, "", 0))
        if users and (req.config.count_by or key in self._counting):
            # The SDK counts every call of the armed function in one table: it would be two sessions'.
            raise InvalidArgument(f"{req.function} in pid {reg.pid} is watched by {self._watcher(reg.pid, req.function)}"
                                  f"; a Python function counted with --count-by has that one session at a time: "
                                  f"detach it first")
        if users and armed_with != condition:
            # The SDK evaluates one condition per armed function and flags the
            # record; the kernel cannot tell two sessions' verdicts apart.
            raise InvalidArgument(f"{req.function} in pid {reg.pid} is watched by {self._watcher(reg.pid, req.function)} "
                                  f"with {_condition_shown(armed_with)}; a Python function runs one condition at a "
                                  f"time: attach with the same --where, or detach that session first")
        # Build what any session of this function shows; each session shows only what it asked for.
        if req.config.stack:
            depth = max(depth, req.config.stack_depth or callstacks.DEFAULT_DEPTH)
        capture = pb.UprobeConfig(capture_args=args or req.config.capture_args, capture_return=ret or req.config.capture_return,
                                  predicate=condition, count_by=req.config.count_by, stack=bool(depth),
                                  stack_depth=depth)
        self._arms[key] = (users + 1, capture.capture_args, capture.capture_return, condition, depth)  # counted now: asks overlap
        if req.config.count_by:
            self._counting.add(key)
        target = Target(reg, pb.FunctionMetadata(), [], fn_id, req.function)

        def on_armed(result: Any) -> None:
            if isinstance(result, CoralError):
                self._disarm([target])
                self._answered(start, index, result)
                return
            target.meta = cast(pb.ArmFunctionResponse, result).metadata
            try:
                target.sites = [python_site(reg.pid, reg.executable, target.meta)]
            except CoralError as exc:
                self._disarm([target])
                self._answered(start, index, exc)
                return
            self._answered(start, index, target)

        self.ask(reg, "ArmFunction", pb.ArmFunctionRequest(function=req.function, fn_id=fn_id, config=capture), on_armed)

    def _watcher(self, pid: int, function: str) -> str:
        for s in self.active.values():
            if s.function == function and pid in s.pids:
                return f"session {s.session_id}"
        return "a session still starting"

    def _answered(self, start: Starting, index: int, outcome: Target | CoralError) -> None:
        """One instance is done; the last one opens the session."""
        if isinstance(outcome, Target):
            if start.cancelled:
                self._disarm([outcome])
                return
            start.targets[index] = outcome
        elif isinstance(outcome, Unavailable):
            log.warning("session %s: left out %s", start.session_id, outcome.message)
            start.unanswered.append(outcome)
        elif start.refused is None:
            start.refused = outcome
        start.waiting -= 1
        if start.waiting or start.cancelled:
            return
        del self.starting[start.session_id]
        targets = [t for t in start.targets if t is not None]
        try:
            start.later.resolve(pb.AttachUprobeResponse(session=self.describe(self._open(start, targets))))
        except CoralError as exc:
            self._disarm(targets)
            start.later.resolve(exc)
        except Exception as exc:
            log.error("session %s: could not open", start.session_id, exc_info=exc)
            self._disarm(targets)
            start.later.resolve(Internal("internal error; see the daemon's log"))

    def _open(self, start: Starting, targets: list[Target]) -> Session:
        """Every instance has answered: probe those that could be, in one slot."""
        req = start.req
        if start.refused is not None:
            raise start.refused
        if not targets:
            raise start.unanswered[0]
        first = targets[0].meta
        check_capture_only(req.config, first, self.rules)
        count_key = None
        if req.config.count_by and first.kind != "python":  # Python: the SDK counts (coral/sdk/countby.py)
            count_key = countby.compile_key(req.config.count_by, first, self.rules)
        record_slots = abi.record_slots(first, req.config.capture_args, req.config.capture_return,
                                        self.engine.string_bytes)
        unwind = ""
        if req.config.stack and first.kind != "python":
            unwind = stack_unwind_of(req.config, first, first_bytes(targets[0].sites[0]))
        slot_config = SlotConfig(
            sample_rate=req.config.sample_rate or 1, capture_args=req.config.capture_args,
            capture_return=req.config.capture_return, min_duration_ns=req.config.min_duration_ns,
            fn_id=targets[0].fn_id, str_args=record_slots.str_args, blob=record_slots.blob,
            str_result=record_slots.str_result, held_args=record_slots.held_args,
            held_result=record_slots.held_result,
            stack_bytes=abi.stack_bytes(first, self.engine.stack_bytes) if req.config.capture_args else 0,
            result_stack=abi.result_stack(first) if req.config.capture_return else (0, 0),
            where=None if first.kind == "python" else native_condition(req.config, first, self.rules),
            unwound_calls=conditions.unwinding_errors(req.config, first),
            count_by=count_key,
            call_stack=STACK_WALK if unwind == "fp" else STACK_COPY if unwind == "tables" else 0,
            call_stack_bytes=req.config.stack_bytes or callstacks.DEFAULT_BYTES,
            rate_per_s=req.config.rate_per_s,
        )
        opened_ns = time.time_ns()  # before its probes: the calls it may report entered after this
        try:
            slot = self.engine.open_slot(slot_config, [s for t in targets for s in t.sites],
                                         self.config.sessions.cpu_budget_ns)
        except ProbeError as exc:
            raise ProbeFailed(str(exc)) from None
        now, mono = time.time_ns(), time.monotonic_ns()
        self.engine.set_expiry(slot, mono + start.duration_ms * 1_000_000)  # the kernel keeps the end, too
        events_limit = start.events_limit
        session = Session(
            session_id=start.session_id, service=req.service, function=req.function, config=req.config,
            started_ns=now, expires_ns=now + start.duration_ms * 1_000_000, slot=slot, targets=targets,
            max_events=min(req.config.max_events, events_limit) if req.config.max_events else events_limit,
            owner=start.owner, unanswered=[e.message for e in start.unanswered],
            return_probe="python" if first.kind == "python" else
            "uretprobe" if any(s.uretprobe for t in targets for s in t.sites) else "ret",
            inlined_into=list(first.inlined_into), count_key=count_key, rules=self.rules,
            sdk_counts={} if req.config.count_by and first.kind == "python" else None,
            unwound_calls=slot_config.unwound_calls, opened_ns=opened_ns,
        )
        if first.kind != "python":
            session.entry_instruction, session.probe_cost_ns = self.probe_costs.of(
                first_bytes(targets[0].sites[0]), session.return_probe)
        if req.config.stack and first.kind == "python":
            session.stack_unwind = "python"
        if unwind:
            session.stack_unwind = unwind
            entries = {t.reg.pid: next((s.func_ip or s.runtime_ip for s in t.sites), 0) for t in targets}
            # A native function in a Python process: its stacks carry the Python frames above it.
            layouts = {t.reg.pid: t.reg.python_layout for t in targets if t.reg.python_layout is not None}
            for pid, layout in layouts.items():
                self.engine.set_python_layout(pid, layout)
            session.stacks = callstacks.SessionStacks(self.symbolizer, session.pids, entries,
                                                      req.config.stack_depth or callstacks.DEFAULT_DEPTH,
                                                      unwinds=unwind == "tables", python=layouts)
        self.active[session.session_id] = session
        self._finish_closed()  # the slot may have been freed since the last drain: its last session is done
        self._by_slot[slot] = session
        self.store.set_idle(False)
        self.store.save_session(session.to_row(SlotStats()))
        log.info("session %s: %s %s on pids %s for %gs (slot %d)", session.session_id, req.service, req.function,
                 session.pids, start.duration_ms / 1000, slot)
        if session.unwound_calls:
            log.info("session %s: --errors-only reports the %s", session.session_id,
                     where_native.errors_program(first)[1])
        return session

    def _disarm(self, targets: list[Target], session: Session | None = None) -> None:
        """A session is done with its Python targets: disarm those no other
        session uses. Not waited for: a process that does not take it keeps
        the function wrapped, with no probe attached, until it registers again.
        A --count-by session's rows come with the answer."""
        counting = session if session is not None and session.sdk_counts is not None else None
        for t in targets:
            if not t.fn_id:
                continue
            key = (t.reg.pid, t.function)
            users, args, ret, condition, depth = self._arms.pop(key, (1, False, False, "", 0))
            if users > 1:
                self._arms[key] = (users - 1, args, ret, condition, depth)
                continue
            self._counting.discard(key)

            if counting is not None:
                counting.counts_pending += 1

            def on_disarmed(result: Any, t: Target = t) -> None:
                if isinstance(result, CoralError):  # the process may be gone; its wrapper went with it
                    self.counters["process_asks.disarm_failed"] += 1
                    log.info("disarm %s in pid %d: %s", t.function, t.reg.pid, result.message)
                elif counting is not None and counting.sdk_counts is not None:
                    counting.sdk_counts[t.reg.pid] = list(cast(pb.DisarmFunctionResponse, result).counts)
                if counting is not None:
                    self._counts_in(counting)

            self.ask(t.reg, "DisarmFunction", pb.DisarmFunctionRequest(fn_id=t.fn_id), on_disarmed)

    # ----------------------------------------------------------- collect

    def collect(self, limit: int = 0) -> int:
        """Drain the ring buffer into the pending batch (about `limit` bytes
        of records at most, 0: all; `more_waiting` says if it stopped there)."""
        n = 0
        drained, self.more_waiting = self.engine.drain(limit)
        self._drains += 1
        stacks: dict[tuple[int, int, int], StackRecord] = {}
        for slot, calls in drained:
            if slot == STACKS:
                stacks.update(((r.pid, r.tid, r.start_ns), r) for r in cast(builtins.list[StackRecord], calls))
        for slot, calls in drained:
            session = self._by_slot.get(slot)  # active, or ended with calls still to read
            if session is None:
                continue
            n += len(calls)
            if session.stacks is not None and not isinstance(calls, Timings):
                session.awaiting += [Awaiting(cast(NativeRecord, r), self._drains) for r in calls]
                continue
            self._store_calls(session, cast("Timings | builtins.list[NativeRecord | PythonRecord]", calls))
        for session in list(self._by_slot.values()):
            if session.awaiting:
                self._store_stacked(session, stacks, final=False)
        n += self._collect_unwound()
        self._finish_closed()
        return n

    def _collect_unwound(self) -> int:
        """--errors-only on C++ and Rust: the calls the kernel kept because
        they left by unwinding, each stored for the sessions that want it."""
        unwound = self.engine.drain_unwound()
        if not unwound:
            return 0
        by_session: dict[str, tuple[Session, builtins.list[NativeRecord | PythonRecord]]] = {}
        for call in unwound:
            rec = call.record
            for slot, session in self._by_slot.items():
                # A frame pushed before this session had its slot is an earlier session's.
                if not session.unwound_calls or not call.slots >> slot & 1 or rec.pid not in session.pids or \
                        rec.start_ns + self._clock_offset < session.opened_ns:
                    continue
                session.unwound_reported += 1
                by_session.setdefault(session.session_id, (session, []))[1].append(rec)
        for session, records in by_session.values():
            self._store_calls(session, records)
        return sum(len(records) for _, records in by_session.values())

    def _store_stacked(self, s: Session, stacks: dict[tuple[int, int, int], StackRecord], final: bool) -> None:
        """--stack: store the calls whose stack has come (it follows their
        records in the ring buffer, in the same or the next drain), and those
        that waited a drain longer for it, without (lost: stack_missing);
        none until the session's files are read, unless `final` or too many wait."""
        for a in s.awaiting:
            if a.stack is None:
                r = a.record
                a.stack = stacks.get((r.pid, r.tid, r.start_ns))
        stacker = s.stacks
        if stacker is None:
            return
        ready = stacker.ready()
        if not ready and not final and len(s.awaiting) <= MAX_AWAITING:
            return
        done = 0
        for a in s.awaiting:
            if a.stack is None and a.drain == self._drains and not final:
                break  # its stack may be in the next drain
            done += 1
        taken, s.awaiting = s.awaiting[:done], s.awaiting[done:]
        texts = []
        for a in taken:
            if a.stack is None or not ready:
                s.lost["stack_missing"] += 1
                texts.append("")
            else:
                texts.append(stacker.symbolize(a.stack).to_json())
        self._store_calls(s, [a.record for a in taken], texts)

    def _store_calls(self, session: Session, calls: Timings | builtins.list[NativeRecord | PythonRecord],
                     stacks: builtins.list[str] | None = None) -> None:
        kept = min(len(calls), max(session.max_events - session.stored, 0))
        if kept < len(calls):
            session.lost["max_events"] += len(calls) - kept
        if not kept:
            return
        session.stored += kept
        if isinstance(calls, Timings):
            t = calls.head(kept)
            block = CallBlock(session.session_id, self._seq, t.start_ns + self._clock_offset, t.end_ns - t.start_ns,
                              t.pid, t.tid)
        else:
            block = self._values_block(session, calls[:kept], None if stacks is None else stacks[:kept])
        self._pending.append(block)
        self._pending_calls += kept
        self._seq += kept
        self.news.add(session.session_id)

    def _finish_closed(self) -> None:
        """The ended sessions whose probes are gone and whose every call has
        been read from the ring buffer: their final counts are saved."""
        freed, self.engine.freed = self.engine.freed, []
        for slot in freed:
            final = self.engine.finals.pop(slot)
            session = self._by_slot.get(slot)
            if session is None or session.session_id in self.active:
                continue  # a slot whose opening failed, or the agent's own
            del self._by_slot[slot]
            self._finishing.append((session, final))
        waiting = []
        for session, final in self._finishing:
            if session.awaiting and session.stacks is not None and not session.stacks.ready() and \
                    time.monotonic() - session.stacks.started < STACK_FILES_WAIT:
                waiting.append((session, final))  # its calls wait for the session's files, read in a thread
                continue
            if session.awaiting:
                self._store_stacked(session, {}, final=True)
            self._finish(session, final)
        self._finishing = waiting

    @property
    def finishing(self) -> bool:
        """Ended sessions whose last calls wait for their stacks to be symbolized."""
        return bool(self._finishing)

    def _finish(self, session: Session, final: SlotStats) -> None:
        if not session.counts_pending:  # else it closes when the SDKs' rows are in (_counts_in)
            self._closing.pop(session.session_id, None)
        session.final = final
        row = session.to_row(final)
        self.totals.session_final(final.calls, row.lost)
        self.store.save_session(row)
        self.news.add(session.session_id)
        log.info("session %s %s%s: %d calls", session.session_id, session.status,
                 f" ({session.reason})" if session.reason else "", final.calls)
        if final.expired:
            log.info("session %s: %d calls returned after its expiry, before its probes were detached: the "
                     "kernel counted none of them", session.session_id, final.expired)
        if not session.counts_pending:
            for waiter in self._when_collected.pop(session.session_id, []):
                waiter()

    def _counts_in(self, session: Session) -> None:
        """One SDK answered a --count-by session's disarm: once all have and
        its final counts are saved, it is closed (its summary is complete)."""
        session.counts_pending -= 1
        if session.counts_pending or session.final is None:
            return
        self.store.save_session(session.to_row(session.final))
        self.news.add(session.session_id)
        self._closing.pop(session.session_id, None)
        for waiter in self._when_collected.pop(session.session_id, []):
            waiter()

    def closing(self, session_id: str) -> bool:
        """Has this session ended with calls maybe still in the ring buffer?"""
        return session_id in self._closing

    def when_collected(self, session_id: str, answer: Callable[[], None]) -> None:
        """`answer` once every call of the session is read (at once if it is)."""
        if session_id in self._closing:
            self._when_collected.setdefault(session_id, []).append(answer)
        else:
            answer()

    def _values_block(self, s: Session, records: builtins.list[NativeRecord | PythonRecord],
                      stacks: builtins.list[str] | None = None) -> CallBlock:
        """Calls with captured values (or a Python exception), one by one."""
        columns: builtins.list[builtins.list[Any]] = [[], [], [], [], [], []]
        python_stacks: builtins.list[str] | None = [] if s.config.stack and stacks is None else None
        for rec in records:
            if python_stacks is not None:
                python_stacks.append(callstacks.python_stack(rec.stack, rec.flags) if isinstance(rec, PythonRecord)
                                     else "")
            if isinstance(rec, PythonRecord):
                start, end = rec.start_ns, rec.end_ns
                args = [dict(zip(("name", "value"), a.decode(errors="replace").split("=", 1), strict=False)) |
                        {"type": ""} for a in rec.args.split(b"\0") if a] if s.config.capture_args else []
                for a in args:  # the SDK redacted by name and card numbers; the agent adds the value patterns
                    a["value"] = self.rules.value(a["name"], a.get("value", ""))
                ret: dict[str, Any] = {}
                text = rec.ret.decode(errors="replace")
                if rec.flags & CALL_RAISED:  # the SDK redacted it; the value patterns once more, as for native text
                    ret = {"type": text.split(":", 1)[0], "value": "", "is_error": True,
                           "error_message": self.rules.text(text)}
                elif s.config.capture_return:
                    ret = {"type": "", "value": self.rules.text(text)}
            else:
                start, end = rec.start_ns, rec.start_ns + rec.duration_ns
                known = s.shapes.get(rec.pid)
                if known is None:
                    target = next((t for t in s.targets if t.reg.pid == rec.pid), s.targets[0])
                    known = s.shapes[rec.pid] = (target.meta, NativeShape.of(target.meta, s.config,
                                                                             self.engine.string_bytes,
                                                                             target.error_types))
                args, ret = self._native_values(s, *known, rec)
                if rec.unwound_found_ns:
                    ret = unwound_return(rec)
            if s.config.capture_only:  # --print: only what it names is kept
                named = set(s.config.capture_only)
                args = [a for a in args if a["name"] in named]
                if "ret" not in named and not ret.get("is_error"):
                    ret = {}
            row = (start + self._clock_offset, end - start, rec.pid, rec.tid, json.dumps(args) if args else "",
                   json.dumps(ret) if ret else "")
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        start_ns, duration_ns, pids, tids, args_json, ret_json = columns
        return CallBlock.of_values(s.session_id, self._seq, start_ns, duration_ns, pids, tids, args_json, ret_json,
                                   stacks if python_stacks is None else python_stacks)

    def _native_values(
        self, s: Session, meta: pb.FunctionMetadata, shape: NativeShape, rec: NativeRecord
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        string_bytes = self.engine.string_bytes
        args: list[dict[str, Any]] = []
        slots, fields_of = shape.slots, shape.fields_of
        if s.config.capture_args:  # redacted here, before anything is stored or sent
            strings = slots.strings_of_args(rec.strings, rec.unread, rec.lengths)
            lengths = slots.lengths_of_args(rec.lengths)
            blob_reg = slots.blob[0]
            for a in shape.arguments:
                if blob_reg >= 0 and a.regs and a.regs[0] == blob_reg and a.name in fields_of:
                    text = showvalues.show_fields(rec.args[blob_reg], fields_of[a.name], slots.blob_of(rec.strings, rec.unread),
                                           self.rules.value, meta.kind == "go")
                elif blob_reg >= 0 and a.regs and a.regs[0] == blob_reg and a.name in shape.pointee_of:
                    text = showvalues.show_pointee_variant(rec.args[blob_reg], shape.pointee_of[a.name],
                                                           slots.blob_of(rec.strings, rec.unread))
                else:
                    text = showvalues.show(a, rec.args, strings, string_bytes, lengths, self.rules.value, rec.stack,
                                           shape.error_types)
                args.append({"name": a.name, "type": a.type or "u64", "value": self.rules.value(a.name, text)})
        ret: dict[str, Any] = {}
        results = shape.results
        if s.config.capture_return and (results or not meta.return_values):
            strings = slots.string_of_result(rec.strings, rec.unread, rec.lengths)
            lengths = slots.length_of_result(rec.lengths)
            shown = [(r, showvalues.show(r, rec.results, strings, string_bytes, lengths, self.rules.value, rec.stack_ret,
                                         shape.error_types))
                     for r in results] or \
                [(abi.Slot("", "u64", "int", (0,)), f"{rec.results[0]:#x}")]
            errors = [(r, v) for r, v in shown if (r.type == "error" and v != "nil") or showvalues.is_error_variant(r, v)]
            ret = {"type": ", ".join(r.type for r, _ in shown),
                   "value": self.rules.text(", ".join(self.rules.value(r.name, v) for r, v in shown)),
                   "is_error": bool(errors), "error_message": self.rules.text(errors[0][1]) if errors else ""}
        return args, ret

    def flush(self, force: bool = True, limit: int = 0) -> int:
        """Write the pending batch to agent.duckdb in one go, or its first
        `limit` calls (the store holds them if the disk is full; calls it
        cannot hold are counted as lost)."""
        batch, self._pending = take(self._pending, limit)
        handed = sum(len(b) for b in batch)
        self._pending_calls -= handed
        for block in batch:  # seqs increase: each session's last one stays
            self._handed[block.session_id] = block.last_seq
        dropped = self.store.append(batch, force)
        self.totals.flushed(handed, sum(dropped.values()))
        for session_id, n in dropped.items():
            session = self.active.get(session_id) or self._ended_unwritten.get(session_id)
            if session is None:
                continue
            session.lost["storage"] += n
            if session_id not in self.active and session.final is not None:  # its row is saved: again, with the loss
                self.store.save_session(session.to_row(session.final))
        waiting = {b.session_id for b in self._pending} | set(self._closing)
        for session_id in [s for s in self._ended_unwritten if s not in waiting]:
            del self._ended_unwritten[session_id]  # all its calls are with the store now
        if not self.active and not self._pending and not self.store.holding:
            self.store.set_idle(True)  # and DuckDB gives its cached blocks back
            release_idle_pages()
        return handed

    @property
    def pending(self) -> int:
        return self._pending_calls

    def call_totals(self) -> tuple[int, Counter[str]]:
        """Calls seen by the kernel and lost by cause, over this run: the
        ended sessions', and the counts so far of those still active or
        whose last calls are still being read."""
        live = []
        for slot, session in self._by_slot.items():
            stats = self.engine.stats(slot, with_histogram=False, with_counts=False)
            live.append((stats.calls, session.to_row(stats).lost))
        return self.totals.with_live(live)

    # -------------------------------------------------------------- end

    def expire_due(self, now_ns: int, check_targets: bool = True) -> list[str]:
        """End sessions whose time is up or (if `check_targets`: it reads
        /proc) whose every target has exited."""
        ended = []
        for session in list(self.active.values()):
            if now_ns >= session.expires_ns:
                self._end(session, EXPIRED, "")
                ended.append(session.session_id)
                continue
            if not check_targets:
                continue
            losses = [self.registry.loss(t.reg) for t in session.targets]
            if all(losses):
                self._end(session, FAILED, losses[0])
                ended.append(session.session_id)
        return ended

    def ask_counts(self, now: float) -> None:
        """--count-by on Python: ask each process for its rows so far, once a
        second at most (the live table); the final ones come with the disarm."""
        for session in self.active.values():
            if session.sdk_counts is None or now - session.counts_asked < COUNTS_EVERY:
                continue
            session.counts_asked = now
            for t in session.targets:
                def on_counts(result: Any, t: Target = t, session: Session = session) -> None:
                    if isinstance(result, CoralError) or session.session_id not in self.active:
                        return  # ended since: its final rows come with the disarm's answer
                    if session.sdk_counts is not None:
                        session.sdk_counts[t.reg.pid] = list(cast(pb.CountCallsResponse, result).counts)
                        self.news.add(session.session_id)

                self.ask(t.reg, "CountCalls", pb.CountCallsRequest(fn_id=t.fn_id), on_counts)

    def stop_over_budget(self) -> list[str]:
        """End the sessions the kernel stopped for going over their CPU budget."""
        stopped = self.engine.stopped_slots()
        ended = []
        for slot, session in list(self._by_slot.items()):
            if stopped & (1 << slot) and session.session_id in self.active:
                log.warning("session %s: %s %s went over its CPU budget (%g%% of one CPU); detached", session.session_id,
                            session.service, session.function, self.config.sessions.cpu_budget_percent)
                self._end(session, FAILED, "budget exceeded")
                ended.append(session.session_id)
        return ended

    def detach(self, session_id: str) -> pb.DebugSession:
        session = self.active.get(session_id)
        if session is None:
            return self.session(session_id)  # already ended: report it as it ended
        self._end(session, DETACHED, "")
        return self.session(session_id)

    def shutdown(self) -> None:
        for start in list(self.starting.values()):
            start.cancelled = True
            self._disarm([t for t in start.targets if t is not None])
            start.later.resolve(Unavailable(f"agent {self.agent_id} is stopping"))
        self.starting.clear()
        for session in list(self.active.values()):
            self._end(session, FAILED, "agent stopped")
        for release in list(self.engine.closing.values()):
            release.done.wait(30)  # their probes gone (in parallel, as at any end)
        self.collect()  # then every call the kernel has (no bound), read before the store closes

    def _end(self, session: Session, status: str, reason: str) -> None:
        """Detach at once. What the kernel already wrote to the ring buffer is
        the session's: the next drains read it, a bounded batch a turn, and
        the slot is given again only after (the engine's `closing`)."""
        self._closing[session.session_id] = session
        self._ended_unwritten[session.session_id] = session  # a loss when its calls are written is still its
        self.engine.release_slots([session.slot])  # its probes are removed by a thread: the loop goes on
        self._disarm(session.targets, session)
        del self.active[session.session_id]
        session.status, session.reason, session.ended_ns = status, reason, time.time_ns()
        self.totals.session_ended(status)
        self.news.add(session.session_id)
        self.store.save_session(session.to_row(self.engine.stats(session.slot)))  # final once its probes are gone
        if time.monotonic() - self._trimmed >= 1.0:  # once a second at most: many sessions may end together
            self._trimmed = time.monotonic()
            trim_heap()  # a large session's decoding leaves free heap behind

    # ------------------------------------------------------------ query

    def describe(self, session: Session) -> pb.DebugSession:
        stats = self.engine.stats(session.slot, with_histogram=False)
        # Its calls kept so far, counted in memory: the store's count is a query.
        msg = self.describe_row(session.to_row(stats), session.stored - session.lost["storage"])
        msg.probes = self.engine.attached_probes(session.slot)
        if self.store.health.error:
            msg.status_reason = f"storage: {self.store.health.error}"
        return msg

    def describe_row(self, row: SessionRow, calls: int | None = None) -> pb.DebugSession:
        if calls is None:  # those written, and those still in the batch
            calls = self.store.call_count(row.session_id) + calls_of(self._pending, row.session_id)
        c = row.config
        stats = cast(dict[str, Any], c.get("stats", {}))
        return pb.DebugSession(
            session_id=row.session_id, service=row.service, function=row.function, agent_id=self.agent_id,
            pids=row.pids, started_unix_ns=row.started_ns, expires_unix_ns=row.expires_ns, ended_unix_ns=row.ended_ns,
            status=row.status, status_reason=row.reason, calls=calls, lost=row.lost,
            config=pb.UprobeConfig(capture_args=bool(c.get("capture_args")), capture_return=bool(c.get("capture_return")),
                                   sample_rate=int(cast(int, c.get("sample_rate", 0))),
                                   rate_per_s=int(cast(int, c.get("rate_per_s", 0))),
                                   max_events=int(cast(int, c.get("max_events", 0))),
                                   min_duration_ns=int(cast(int, c.get("min_duration_ns", 0))),
                                   predicate=str(c.get("predicate", "")), errors_only=bool(c.get("errors_only")),
                                   capture_only=[str(n) for n in cast(list[object], c.get("capture_only", []))],
                                   count_by=str(c.get("count_by", "")),
                                   stack=bool(c.get("stack")), stack_depth=int(cast(int, c.get("stack_depth", 0))),
                                   stack_bytes=int(cast(int, c.get("stack_bytes", 0))),
                                   stack_unwind=str(c.get("stack_unwind_asked", ""))),
            total_calls=int(stats.get("calls", 0)), sum_duration_ns=int(stats.get("sum_ns", 0)),
            max_duration_ns=int(stats.get("max_ns", 0)),
            histogram={int(k): int(v) for k, v in cast(dict[str, int], stats.get("histogram", {})).items()},
            counts=countby.from_json(cast(list[dict[str, object]], stats.get("counts", []))),
            owner=str(c.get("owner", "")),
            unanswered=[str(u) for u in cast(list[object], c.get("unanswered", []))],
            return_probe=str(c.get("return_probe", "")),
            inlined_into=[str(x) for x in cast(list[object], c.get("inlined_into", []))],
            entry_instruction=str(c.get("entry_instruction", "")),
            probe_cost_ns=int(cast(int, c.get("probe_cost_ns", 0))),
            stack_unwind=str(c.get("stack_unwind", "")),
        )

    def session(self, session_id: str) -> pb.DebugSession:
        if session_id in self.active:
            return self.describe(self.active[session_id])
        for row in self.store.sessions():
            if row.session_id == session_id:
                return self.describe_row(row)
        raise NotFound(f"no session {session_id!r} on agent {self.agent_id}")

    def list(self, req: pb.ListDebugSessionsRequest) -> pb.ListDebugSessionsResponse:
        self._retry_held()
        out = []
        for row in self.store.sessions():
            if (req.service and row.service != req.service) or (req.active_only and row.status != ACTIVE):
                continue
            live = self.active.get(row.session_id)
            out.append(self.describe(live) if live else self.describe_row(row))
        return pb.ListDebugSessionsResponse(sessions=out)

    def query(self, req: pb.QueryUprobeEventsRequest) -> pb.QueryUprobeEventsResponse:
        session = self.session(req.session_id)  # NotFound before anything else
        limit = max(1, min(req.max_events or DEFAULT_PAGE, MAX_PAGE))
        self._retry_held()
        rows: builtins.list[CallRow] = []
        if not req.wait_ms and (req.session_id in self.active or self.closing(req.session_id)) and self.may_drain():
            # A call that returned before the question is in the answer, unless
            # the agent is that far behind (or over its ingest budget).
            more = self.more_waiting
            self.collect(QUERY_DRAIN)  # charged with the whole question by the agent
            self.more_waiting = more or self.more_waiting
        if req.session_id not in self.active or self._handed.get(req.session_id, -1) > req.cursor:
            rows = self.store.query(req.session_id, req.cursor, req.since_unix_ns, req.until_unix_ns, limit)
        if len(rows) < limit:  # then the batch not written yet, which comes after
            rows += rows_in_blocks(self._pending, req.session_id, rows[-1].seq if rows else req.cursor,
                                    req.since_unix_ns, req.until_unix_ns, limit - len(rows))
        calls = [self._call(r, session) for r in rows]
        next_cursor = rows[-1].seq if rows else req.cursor
        more = len(rows) == limit or self.closing(req.session_id)  # ended, and calls still to read from the ring
        return pb.QueryUprobeEventsResponse(calls=calls, next_cursor=next_cursor, has_more=more,
                                            session=self.session(req.session_id))

    def _retry_held(self) -> None:
        """A client asks: what the store holds since a failed write (a full disk) is tried again at once."""
        if self.store.holding:
            self.store.retry()


    def _call(self, r: CallRow, s: pb.DebugSession) -> pb.Call:
        call = pb.Call(seq=r.seq, session_id=r.session_id, agent_id=self.agent_id, service=s.service,
                       function=s.function, pid=r.pid, tid=r.tid, start_unix_ns=r.start_ns,
                       end_unix_ns=r.start_ns + r.duration_ns, duration_ns=r.duration_ns)
        if r.args:
            call.args.extend(pb.FunctionArgument(**a) for a in json.loads(r.args))
        if r.ret:
            call.return_value.CopyFrom(pb.FunctionReturnValue(**json.loads(r.ret)))
        if r.stack:
            stack = json.loads(r.stack)
            call.stack.extend(pb.StackFrame(function=f[0], file=f[1], line=f[2], module=f[3]) for f in stack["frames"])
            call.stack_truncated = bool(stack["truncated"])
        return call
