"""Debug sessions on this agent: attach, collect, expire, detach, query.

Knows nothing of sockets: it is given a registry, a store, a way to ask a
process for function metadata, and a probe factory (real BCC in the daemon).
The agent enforces every session's expiry itself, colony or no colony.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from coral.agentd.probes import ENTRY, NativeProbe, ProbeSpec, RawEvent
from coral.agentd.registry import ProcessRegistry, Registration
from coral.agentd.store import EventRow, EventStore, SessionRow
from coral.agentd.values import format_register
from coral.daemon.config import Config
from coral.daemon.errors import InvalidArgument, LimitExceeded, NotFound, PermissionDenied, ProbeFailed
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)

MetadataLookup = Callable[[Registration, str], pb.FunctionMetadata]
ProbeFactory = Callable[[ProbeSpec], NativeProbe]

ACTIVE, EXPIRED, DETACHED, FAILED = "active", "expired", "detached", "failed"
DEFAULT_PAGE, MAX_PAGE = 500, 5000


def wall_clock_offset_ns() -> int:
    """bpf_ktime_get_ns() reads CLOCK_MONOTONIC; add this to get Unix time."""
    return time.time_ns() - time.monotonic_ns()


def probe_path(reg: Registration, meta: pb.FunctionMetadata) -> str:
    """The path BCC attaches through, resolved inside the process's own mount
    namespace. Only the process's executable or a file it has mapped."""
    if meta.pid and meta.pid != reg.pid:
        raise PermissionDenied(f"metadata names pid {meta.pid}, registered process is {reg.pid}")
    if not meta.binary_path or meta.binary_path == reg.executable:
        return f"/proc/{reg.pid}/exe"
    try:
        with open(f"/proc/{reg.pid}/maps") as f:
            mapped = {line.split(maxsplit=5)[5].strip() for line in f if len(line.split(maxsplit=5)) == 6}
    except OSError:
        mapped = set()
    if meta.binary_path not in mapped:
        raise PermissionDenied(f"{meta.binary_path} is not mapped in process {reg.pid}")
    return f"/proc/{reg.pid}/root{meta.binary_path}"


@dataclass
class Session:
    session_id: str
    service: str
    function: str
    config: pb.UprobeConfig
    started_ns: int
    expires_ns: int
    max_events: int
    targets: list[tuple[Registration, NativeProbe, pb.FunctionMetadata]]
    status: str = ACTIVE
    reason: str = ""
    ended_ns: int = 0
    stored: int = 0
    lost: Counter[str] = field(default_factory=Counter)
    kernel_lost: dict[str, int] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return [reg.pid for reg, _, _ in self.targets]

    def lost_by_cause(self) -> dict[str, int]:
        counts = {**self.kernel_lost, **self.lost}
        return {cause: n for cause, n in counts.items() if n}

    def to_row(self) -> SessionRow:
        return SessionRow(
            self.session_id,
            self.service,
            self.function,
            self.pids,
            self.started_ns,
            self.expires_ns,
            self.ended_ns,
            self.status,
            self.reason,
            {
                "capture_args": self.config.capture_args,
                "capture_return": self.config.capture_return,
                "sample_rate": self.config.sample_rate,
                "max_events": self.max_events,
            },
            self.lost_by_cause(),
        )


class SessionManager:
    def __init__(
        self,
        config: Config,
        agent_id: str,
        registry: ProcessRegistry,
        store: EventStore,
        metadata: MetadataLookup,
        probe_factory: ProbeFactory = NativeProbe,
    ) -> None:
        self.config = config
        self.agent_id = agent_id
        self.registry = registry
        self.store = store
        self.metadata = metadata
        self.probe_factory = probe_factory
        self.active: dict[str, Session] = {}
        self._pending: list[EventRow] = []
        self._seq = store.next_seq()
        self._clock_offset = wall_clock_offset_ns()

    # ------------------------------------------------------------ attach

    def attach(self, req: pb.AttachUprobeRequest) -> pb.DebugSession:
        duration_ms = self.config.sessions.session_duration_ms(req.duration_ms)
        if not req.function:
            raise InvalidArgument("a function name is required")
        if len(self.active) >= self.config.sessions.max_sessions_per_agent:
            limit = self.config.sessions.max_sessions_per_agent
            raise LimitExceeded(f"agent {self.agent_id} already runs {len(self.active)} sessions (limit {limit})")
        instances = self.registry.instances(req.service)
        if not instances:
            known = self.registry.services()
            raise NotFound(
                f"service {req.service!r} is not registered on agent {self.agent_id}"
                + (f" (registered: {', '.join(known)})" if known else " (no services registered)"),
                known,
            )
        cfg = req.config
        if req.session_id and (len(req.session_id) > 64 or not req.session_id.isprintable()):
            raise InvalidArgument("session id must be up to 64 printable characters")
        session_id = req.session_id or f"dbg-{secrets.token_hex(6)}"
        if session_id in self.active:
            raise InvalidArgument(f"session {session_id} already exists")
        targets: list[tuple[Registration, NativeProbe, pb.FunctionMetadata]] = []
        try:
            for reg in instances:
                meta = self.metadata(reg, req.function)
                spec = ProbeSpec(
                    path=probe_path(reg, meta),
                    address=meta.address,
                    pids=(reg.pid,),
                    capture_args=cfg.capture_args,
                    capture_return=cfg.capture_return,
                    sample_rate=cfg.sample_rate,
                    ringbuf_pages=self.config.sessions.ring_buffer_pages,
                )
                try:
                    probe = self.probe_factory(spec)
                except RuntimeError as exc:
                    raise ProbeFailed(str(exc)) from None
                targets.append((reg, probe, meta))
        except Exception:
            for _, probe, _ in targets:
                probe.close()
            raise
        now = time.time_ns()
        limit = self.config.sessions.max_events_per_session
        session = Session(
            session_id=session_id,
            service=req.service,
            function=req.function,
            config=cfg,
            started_ns=now,
            expires_ns=now + duration_ms * 1_000_000,
            targets=targets,
            max_events=min(cfg.max_events, limit) if cfg.max_events else limit,
        )
        self.active[session_id] = session
        self.store.save_session(session.to_row())
        log.info("session %s: %s %s on pids %s for %ds", session_id, req.service, req.function, session.pids, duration_ms // 1000)
        return self.describe(session)

    # ----------------------------------------------------------- collect

    def collect(self) -> int:
        """Drain every session's ring buffer into the pending batch."""
        n = 0
        for session in self.active.values():
            for _reg, probe, meta in session.targets:
                for raw in probe.drain():
                    n += 1
                    if session.stored >= session.max_events:
                        session.lost["max_events"] += 1
                        continue
                    session.stored += 1
                    self._pending.append(self._row(session, meta, raw))
        return n

    def _row(self, session: Session, meta: pb.FunctionMetadata, raw: RawEvent) -> EventRow:
        args, ret = "", ""
        if raw.kind == ENTRY and session.config.capture_args:
            names = [(a.name, a.type) for a in meta.arguments][:6] or [(f"arg{i}", "") for i in range(6)]
            args = json.dumps(
                [
                    {"name": n, "type": t or "u64", "value": format_register(v, t)}
                    for (n, t), v in zip(names, raw.args, strict=False)
                ]
            )
        if raw.kind != ENTRY and session.config.capture_return:
            rtype = meta.return_values[0].type if meta.return_values else ""
            if rtype != "void":
                ret = json.dumps({"type": rtype or "u64", "value": format_register(raw.retval, rtype)})
        row = EventRow(
            self._seq,
            session.session_id,
            "entry" if raw.kind == ENTRY else "return",
            raw.ts_ns + self._clock_offset,
            raw.pid,
            raw.tid,
            raw.duration_ns,
            args,
            ret,
        )
        self._seq += 1
        return row

    def flush(self) -> int:
        """Write the pending batch to agent.duckdb in one go."""
        batch, self._pending = self._pending, []
        if batch:
            self.store.append(batch)
        return len(batch)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -------------------------------------------------------------- end

    def expire_due(self, now_ns: int) -> list[str]:
        """End sessions whose time is up or whose every target has exited."""
        ended = []
        for session in list(self.active.values()):
            if now_ns >= session.expires_ns:
                self._end(session, EXPIRED, "")
                ended.append(session.session_id)
            elif not any(self.registry.is_alive(reg) for reg, _, _ in session.targets):
                self._end(session, FAILED, "target exited")
                ended.append(session.session_id)
        return ended

    def detach(self, session_id: str) -> pb.DebugSession:
        session = self.active.get(session_id)
        if session is None:
            return self.session(session_id)  # already ended: report it as it ended
        self._end(session, DETACHED, "")
        return self.describe_row(session.to_row())

    def shutdown(self) -> None:
        for session in list(self.active.values()):
            self._end(session, FAILED, "agent stopped")

    def _end(self, session: Session, status: str, reason: str) -> None:
        self.collect()  # what the kernel already has belongs to the session
        session.kernel_lost = self._kernel_lost(session)
        for _, probe, _ in session.targets:
            probe.close()
        self.flush()
        session.status, session.reason, session.ended_ns = status, reason, time.time_ns()
        del self.active[session.session_id]
        self.store.save_session(session.to_row())
        log.info("session %s %s%s", session.session_id, status, f" ({reason})" if reason else "")

    @staticmethod
    def _kernel_lost(session: Session) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for _, probe, _ in session.targets:
            c = probe.counters()
            totals["ringbuf_full"] += c["lost_ringbuf"]
            totals["sampled"] += c["sampled_out"]
        return dict(totals)

    # ------------------------------------------------------------ query

    def describe(self, session: Session) -> pb.DebugSession:
        session.kernel_lost = self._kernel_lost(session)
        msg = self.describe_row(session.to_row())
        msg.probes = sum(probe.attached for _, probe, _ in session.targets)
        return msg

    def describe_row(self, row: SessionRow) -> pb.DebugSession:
        events, calls = self.store.counts(row.session_id)
        c = row.config
        return pb.DebugSession(
            session_id=row.session_id,
            service=row.service,
            function=row.function,
            agent_id=self.agent_id,
            pids=row.pids,
            started_unix_ns=row.started_ns,
            expires_unix_ns=row.expires_ns,
            ended_unix_ns=row.ended_ns,
            status=row.status,
            status_reason=row.reason,
            event_count=events,
            calls=calls,
            lost=row.lost,
            config=pb.UprobeConfig(
                capture_args=bool(c.get("capture_args")),
                capture_return=bool(c.get("capture_return")),
                sample_rate=int(str(c.get("sample_rate", 0))),
                max_events=int(str(c.get("max_events", 0))),
            ),
        )

    def session(self, session_id: str) -> pb.DebugSession:
        if session_id in self.active:
            return self.describe(self.active[session_id])
        for row in self.store.sessions():
            if row.session_id == session_id:
                return self.describe_row(row)
        raise NotFound(f"no session {session_id!r} on agent {self.agent_id}")

    def list(self, req: pb.ListDebugSessionsRequest) -> pb.ListDebugSessionsResponse:
        self.flush()
        out = []
        for row in self.store.sessions():
            if req.service and row.service != req.service:
                continue
            if req.active_only and row.status != ACTIVE:
                continue
            live = self.active.get(row.session_id)
            out.append(self.describe(live) if live else self.describe_row(row))
        return pb.ListDebugSessionsResponse(sessions=out)

    def query(self, req: pb.QueryUprobeEventsRequest) -> pb.QueryUprobeEventsResponse:
        session = self.session(req.session_id)  # NotFound before anything else
        self.flush()
        limit = min(req.max_events or DEFAULT_PAGE, MAX_PAGE)
        rows = self.store.query(req.session_id, req.cursor, req.since_unix_ns, req.until_unix_ns, limit)
        events = [self._event(r, session) for r in rows]
        next_cursor = rows[-1].seq if rows else req.cursor
        return pb.QueryUprobeEventsResponse(
            events=events, next_cursor=next_cursor, has_more=len(rows) == limit, session=self.session(req.session_id)
        )

    def _event(self, r: EventRow, s: pb.DebugSession) -> pb.UprobeEvent:
        ev = pb.UprobeEvent(
            timestamp_unix_ns=r.ts_ns,
            session_id=r.session_id,
            agent_id=self.agent_id,
            service=s.service,
            function=s.function,
            event_type=r.event_type,
            duration_ns=r.duration_ns,
            pid=r.pid,
            tid=r.tid,
            seq=r.seq,
        )
        if r.args:
            ev.args.extend(pb.FunctionArgument(**a) for a in json.loads(r.args))
        if r.ret:
            ev.return_value.CopyFrom(pb.FunctionReturnValue(**json.loads(r.ret)))
        return ev
