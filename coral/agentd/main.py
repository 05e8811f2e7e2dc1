"""coral-agentd: one per host. Local ROUTER API on ipc, worker link to the
colony, BCC uprobes, calls in agent.duckdb. One thread, one loop that never
waits for a process: poll sockets -> answers from processes -> drain the
ring buffer (every drain_interval while a session runs) -> answer followers
-> flush batches -> expire -> heartbeats."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import duckdb
import zmq
from google.protobuf.message import DecodeError, Message

from coral import __version__
from coral.agentd import profiles
from coral.agentd.colony_link import ColonyLink
from coral.agentd.engine import TRAP_NS, ProbeEngine, ProbeError
from coral.agentd.ingest import IngestBudget
from coral.agentd.memory import release_compiler_pages, release_idle_pages, rss_bytes
from coral.agentd.metrics import agent_snapshot
from coral.agentd.probecost import ProbeCosts
from coral.agentd.probes import check_bpf_support
from coral.agentd.process_calls import ProcessCalls
from coral.agentd.profiler import Profiles
from coral.agentd.registry import ProcessRegistry, Registration
from coral.agentd.sessions import SessionManager
from coral.agentd.store import EventStore
from coral.agentd.symbolize import Symbolizer
from coral.agentd.targets import own_function_site
from coral.daemon import access, curve, profiling
from coral.daemon.config import Config
from coral.daemon.connections import ConnectionCap
from coral.daemon.errors import CoralError, Internal, LimitExceeded, NotFound
from coral.daemon.methods import AGENT_FROM_COLONY_METHODS, AGENT_LOCAL_METHODS, METHODS
from coral.daemon.paging import services_page
from coral.daemon.retention import PurgeSchedule, Retention, parse_age, purge_once
from coral.daemon.runtime import (
    Notifier,
    ShutdownSignals,
    bind_socket,
    configure_socket,
    ensure_process_dir,
    remove_process_socket,
    run_daemon,
    unlink_ipc,
)
from coral.daemon.server import Dispatcher, Handler, Later, Peer, serve_router
from coral.daemon.waiters import Waiters

if TYPE_CHECKING:
    from coral.daemon.prometheus import Metrics
from coral.proto import coral_pb2 as pb

log = logging.getLogger("coral.agentd")

# Local requests the colony's audit log records when they succeed (any refusal is recorded).
AUDITED_LOCAL = frozenset({"AttachUprobe", "DetachUprobe", "ProfileCpu"})

# Messages served from the local socket in one turn of the loop: the ring
# buffer, expiry and heartbeats come between two batches.
LOCAL_BATCH = 100
# A burst of registrations is one READY (each READY lists every process), and
# exited processes are looked for twice a second, not on every turn: neither
# costs more per registration as more processes register.
ANNOUNCE_EVERY = 0.1
PRUNE_EVERY = 0.5
# Bytes of records read from the ring buffer in one turn at most: 30,000
# to 50,000 timing-only calls (a few ms: numpy columns) or 2,500 to 8,000
# with values (decoded one by one, tens of ms). The sockets are served
# between two batches.
DRAIN_BATCH = 2 * 1024 * 1024
# Calls written to agent.duckdb in one turn at most (about 0.3 µs each for
# timing only, 0.5 µs with values, and 1.5 ms a statement): a backlog is
# written over the next turns, within the ingest budget.
FLUSH_BATCH = 50_000
# While this many calls wait to be written, the ring buffer is not read: the
# kernel sheds and counts what does not fit, and the agent's memory stays bounded.
MAX_PENDING = 2 * FLUSH_BATCH
# Questions for calls waiting for the ingest budget to refill, at most;
# more are answered at once (over the budget) rather than held in memory.
MAX_DEFERRED = 1000
# A session's targets are looked for in /proc this often (as often as the
# loop turned before it drained every drain_interval), not on every turn.
TARGETS_EVERY = 0.05
# After this long with no session and no question answered from the store,
# the pages of the libraries that served them are given back (memory.py).
IDLE_RELEASE_AFTER = 10.0
SETTLE_AT_STOP = 1.0  # seconds the stopping agent gives processes to answer its last disarms


def answer_safely(answer: Callable[[], Message | Later]) -> Message | Later | CoralError:
    """A question answered after its handler returned: its error is its
    answer, and a bug answers it INTERNAL; the loop goes on."""
    try:
        return answer()
    except CoralError as err:  # purged meanwhile
        return err
    except Exception as exc:  # a bug: this question is answered, the others and the loop go on
        log.error("answering a held or deferred QueryUprobeEvents failed", exc_info=exc)
        return Internal("internal error; see the daemon's log")


def resolve(later: Later, result: Message | Later | CoralError) -> None:
    if isinstance(result, Later):
        result.then(later.resolve)
    else:
        later.resolve(result)


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        keys = curve.agent_keys(config)  # a tcp colony endpoint without keys stops the start here
        self.agent_id = config.agent.id or socket.gethostname()
        self.context = zmq.Context()
        self.registry = ProcessRegistry(config.process_socket_dir, config.agent.max_registrations_per_uid, config.services)
        self._changes: dict[int, Registration | None] = {}  # by pid, for SERVICES: at most every ANNOUNCE_EVERY
        self._announced = 0.0
        self._pruned = 0.0
        self._targets_checked = 0.0
        self._answered_at: float | None = None  # the last question answered from the store, until the release
        self.store = EventStore(config.agent_state_dir / "agent.duckdb")
        self.engine = ProbeEngine(config.sessions.ring_buffer_pages, config.sessions.string_bytes,
                                  config.sessions.max_call_depth, config.sessions.deep_frames)
        self._calibrate()
        before = rss_bytes()
        released = release_compiler_pages()
        log.info("compiled the BPF program; released the compiler's pages (%d MiB mapped): RSS %d MiB -> %d MiB",
                 released >> 20, before >> 20, rss_bytes() >> 20)
        self.calls = ProcessCalls(self.context, config.limits.max_message_bytes)
        self.sessions = SessionManager(config, self.agent_id, self.registry, self.store,
                                       lambda reg, method, request, answer: self.calls.ask(
                                           reg, method, request, answer, time.monotonic()),
                                       self.engine)
        self.sessions.probe_costs = ProbeCosts(self.engine)  # measured as sessions need them
        self.counters: dict[str, int] = {}
        self.ingest = IngestBudget(config.agent.ingest_cpu_percent)  # reading, storing and handing out calls
        self.sessions.may_drain = lambda: self.ingest.allows(time.monotonic()) and self.sessions.pending < MAX_PENDING
        self._deferred: list[Callable[[], None]] = []  # questions for calls that wait for the budget to refill
        self._deferred_total = 0
        self.followers = Waiters()  # QueryUprobeEvents with wait_ms, held until their session has news
        self.profiles = Profiles()  # each in its own thread; answered from the loop
        self.sessions.symbolizer = self.profiles.symbolizer  # --stack: the same files, read once
        self.retention = Retention(parse_age(config.agent.retention))
        self.purges = PurgeSchedule(config.agent.purge_interval)
        handlers: dict[str, Handler] = {
            "Ping": self.ping,
            "ListServices": self.list_services,
            "ListFunctions": self.list_functions,
            "AttachUprobe": lambda r, p: self.sessions.attach(r, p.who),
            "DetachUprobe": self.detach,
            "QueryUprobeEvents": self.query_events,
            "ListDebugSessions": lambda r, p: self.sessions.list(r),
            "ProfileCpu": self.profile_cpu,
            "RegisterProcess": self.register_process,
            "UnregisterProcess": self.unregister_process,
            "ProcessHeartbeat": self.process_heartbeat,
        }
        self.local = Dispatcher(handlers, AGENT_LOCAL_METHODS,
                                lambda method, request, peer: access.check(config.access, peer, method, request),
                                self.audit_local)
        self.from_colony = Dispatcher(handlers, AGENT_FROM_COLONY_METHODS)
        self.cap: ConnectionCap | None = None  # on the local socket, once it is bound
        self.metrics: Metrics | None = None  # /metrics, if [agent] metrics_listen says where
        self._metrics_published = -math.inf
        if config.agent.metrics_listen:
            from coral.daemon.prometheus import Metrics  # imported only when used: prometheus_client costs memory

            self.metrics = Metrics("coral_agent", config.agent.metrics_listen, "[agent] metrics_listen",
                                   {"local": AGENT_LOCAL_METHODS, "colony": AGENT_FROM_COLONY_METHODS})
            self.local.latency = self.metrics.timer("local")
            self.from_colony.latency = self.metrics.timer("colony")
        self.link = ColonyLink(
            self.context,
            config.agent_colony_endpoint,
            self.hello,
            self.from_colony,
            config.agent.heartbeat_interval,
            config.agent.heartbeat_liveness,
            config.limits.max_message_bytes,
            keys,
        )

    # ------------------------------------------------------------ handlers

    def _calibrate(self) -> None:
        """What a uprobe hit costs here, for the CPU budgets: measured on
        libc's getppid in this process, about 0.1 s at start-up."""
        getppid = ctypes.CDLL(None).getppid
        try:
            ns = self.engine.calibrate(own_function_site(getppid), getppid)
        except (ProbeError, CoralError, OSError) as exc:
            log.warning("could not measure what a uprobe hit costs (%s); CPU budgets charge %d ns a hit", exc, TRAP_NS)
            return
        log.info("a uprobe hit costs %d ns here, the trap and the BPF program; CPU budgets charge that", ns)

    def ping(self, req: Message, peer: Peer) -> pb.PingResponse:
        return pb.PingResponse(
            daemon="coral-agentd", version=__version__, pid=os.getpid(), agent_id=self.agent_id, counters=self.counters_now()
        )

    def counters_now(self) -> dict[str, int]:
        """What `coralctl ping` shows (and /metrics, coral/agentd/metrics.py)."""
        counters = {f"local.{k}": v for k, v in self.local.counters.items()}
        counters.update({f"colony.{k}": v for k, v in self.from_colony.counters.items()})
        counters["sessions.active"] = len(self.sessions.active)
        counters["processes"] = len(self.registry.instances())
        counters["colony.connected"] = int(self.link.connected)
        counters["colony.dropped"] = self.link.dropped
        counters.update(self.followers.counters())
        counters["ingest.paused_windows"] = self.ingest.paused_windows
        counters["ingest.deferred_questions"] = self._deferred_total  # questions for calls that waited for the budget
        counters["connections.cut"] = self.cap.total_cut if self.cap is not None else 0
        counters.update(self.counters)
        counters.update(self.calls.counters)
        counters.update(self.sessions.counters)
        counters.update({f"kernel.{k}": v for k, v in self.engine.global_counters().items()})
        counters["kernel.attached_probes"] = self.engine.attachment_count
        counters["kernel.trap_ns"] = self.engine.trap_ns
        counters.update({f"kernel.{k}": v for k, v in self.sessions.probe_costs.counters().items()})
        counters["storage.failing"] = int(bool(self.store.health.error))
        counters["storage.write_failures"] = self.store.health.failures
        counters["storage.held_calls"] = self.store.held_calls
        counters["storage.pending_calls"] = self.sessions.pending  # drained, to be written within flush_interval
        return counters

    @property
    def deferred_questions(self) -> int:
        return len(self._deferred)

    def publish_metrics(self, now: float) -> None:
        """Once per heartbeat: a new snapshot for /metrics (read by its own
        thread; the loop never waits for a scrape)."""
        if self.metrics is None or now - self._metrics_published < self.config.agent.heartbeat_interval:
            return
        self._metrics_published = now
        try:
            self.metrics.publish(agent_snapshot(self))
        except Exception:  # a bug: the last snapshot stays; the agent serves on
            log.exception("could not update /metrics")

    def audit_local(self, method: str, body: bytes, peer: Peer, outcome: str, detail: str) -> None:
        """The colony's audit log also covers this host's local socket: every
        refusal, and every session started or ended with --local."""
        if outcome == "OK" and method not in AUDITED_LOCAL:
            return
        if outcome != "OK":
            log.warning("refused %s from pid %s (%s): %s", method, peer.pid, peer.who, detail)
        entry = pb.AuditEntry(timestamp_unix_ns=time.time_ns(), who=peer.who,
                              peer_pid=peer.pid or 0, method=method, outcome=outcome, detail=detail[:500])
        request = METHODS[method].request() if method in METHODS else None
        if request is not None:
            with contextlib.suppress(DecodeError, ValueError, RuntimeError):
                request.ParseFromString(body)
                entry.service = str(getattr(request, "service", ""))[:200]
                entry.function = str(getattr(request, "function", ""))[:200]
                entry.session_id = str(getattr(request, "session_id", ""))[:64]
                asked = access.values_asked(request)
                if asked:
                    entry.detail = (f"{detail}; {asked}" if detail else asked)[:500]
        self.link.audit(entry, time.monotonic())

    def on_connections_cut(self, uid: int, pid: int, count: int) -> None:
        """A uid past [limits] max_connections_per_uid (reported at most once a minute per uid)."""
        cap = self.config.limits.max_connections_per_uid
        why = f"cut {count} connection(s) past uid {uid}'s {cap} ([limits] max_connections_per_uid)"
        self.audit_local("CONNECT", b"", Peer(uid=uid, pid=pid), "LIMIT_EXCEEDED", why)

    def detach(self, req: pb.DetachUprobeRequest, peer: Peer) -> pb.DetachUprobeResponse | Later:
        """Answered once the session's calls still in the ring buffer are read
        (the next drains), so its count is final; the loop serves on meanwhile."""
        self.sessions.detach(req.session_id)  # NotFound at once
        later = Later()
        self.sessions.when_collected(req.session_id, lambda: resolve(later, answer_safely(
            lambda: pb.DetachUprobeResponse(session=self.sessions.session(req.session_id)))))
        return later

    def profile_cpu(self, req: pb.ProfileCpuRequest, peer: Peer) -> Later:
        """Checked now; sampled and symbolized in a thread; answered by the
        loop when it has ended (docs/protocol.md, "Profiles")."""
        duration_ms = profiling.duration_ms(self.config.sessions, req.duration_ms)
        frequency = profiling.frequency(req.frequency_hz)
        instances = self.registry.instances(req.service)
        if not instances:
            self._instance(req.service)  # NotFound, naming what is registered
        if len(self.profiles.running) >= self.profiles.max_running:
            raise LimitExceeded(f"{len(self.profiles.running)} profiles already run on agent {self.agent_id}; "
                                "wait for one to end")
        plan = profiles.ProfilePlan(req.session_id or profiles.new_id(), req.service, self.agent_id,
                                    tuple(r.pid for r in instances), {r.pid: r.executable for r in instances},
                                    frequency, duration_ms, peer.who,
                                    {r.pid: r.python_layout for r in instances if r.python_layout is not None})
        later = Later()
        limit = self.config.limits.max_message_bytes // 4

        def work(stop: threading.Event, symbolizer: Symbolizer) -> Callable[[], None]:
            try:
                result: Message | CoralError = profiles.run(plan, stop, symbolizer, limit)
            except Exception as exc:  # a bug: this profile is answered, the agent goes on
                log.error("profile %s failed", plan.session_id, exc_info=exc)
                result = Internal("internal error; see the daemon's log")
            return lambda: later.resolve(result)

        self.profiles.start(plan.session_id, work)
        return later

    def query_events(self, req: pb.QueryUprobeEventsRequest, peer: Peer) -> pb.QueryUprobeEventsResponse | Later:
        """A page of calls; with wait_ms and nothing new on a running
        session, held until it has news (docs/protocol.md). Handing calls
        out is charged to the ingest budget; past it, the question waits
        until the budget refills (ingest.py)."""
        if len(self._deferred) >= MAX_DEFERRED or (not self._deferred and self.ingest.allows(time.monotonic())):
            return self._query_events(req, peer)  # (past the bound: answered now, over the budget)
        later = Later()  # in turn after those already waiting

        self._deferred.append(lambda: resolve(later, answer_safely(lambda: self._query_events(req, peer))))
        self._deferred_total += 1
        return later

    def _query_events(self, req: pb.QueryUprobeEventsRequest, peer: Peer) -> pb.QueryUprobeEventsResponse | Later:
        response = self._events(req, peer)
        if response.calls or not req.wait_ms or response.session.status != "active":
            return response
        later = Later()

        def answer() -> None:
            resolve(later, answer_safely(lambda: self._events(req, peer)))

        # The colony's pulls (one held per part) are not bounded with the followers'.
        if not self.followers.hold(req.session_id, req.wait_ms, time.monotonic(), answer, bounded=not peer.trusted):
            self.counters["followers.refused"] = self.counters.get("followers.refused", 0) + 1
            return response
        return later

    def _events(self, req: pb.QueryUprobeEventsRequest, peer: Peer) -> pb.QueryUprobeEventsResponse:
        """Values only for the session's owner and holders of capture (the
        colony's pulls are trusted: it applies the rule per reader). Its
        CPU is the ingest budget's: reading, storing and handing out calls."""
        cpu = time.process_time()
        self._answered_at = time.monotonic()
        try:
            response = self.sessions.query(req)
            access.values_for(self.config.access, peer, response.session.owner, response.calls)
            return response
        finally:
            self.ingest.charge(time.monotonic(), time.process_time() - cpu)

    def answer_deferred(self, now: float) -> int:
        """The questions for calls that waited for the ingest budget, once it allows (or at the end)."""
        answered = 0
        while self._deferred and (now == math.inf or self.ingest.allows(time.monotonic())):
            self._deferred.pop(0)()  # each answer is charged: the budget is looked at again before the next
            answered += 1
        return answered

    def tell_followers(self, now: float) -> None:
        """Answer the held questions whose session has new calls or ended
        (past the ingest budget: once it refills), and those whose wait
        is over."""
        news = self.sessions.news
        while news and (now == math.inf or self.ingest.allows(time.monotonic())):
            self.followers.wake(news.pop())  # each answer is charged: the budget is looked at again before the next
        self.followers.expire(now)

    def hello(self) -> pb.AgentHello:
        return pb.AgentHello(
            agent_id=self.agent_id,
            hostname=socket.gethostname(),
            version=__version__,
            services=[r.to_proto(self.agent_id) for r in self.registry.instances()],
            heartbeat_interval_ms=int(self.config.agent.heartbeat_interval * 1000),
        )

    def list_services(self, req: pb.ListServicesRequest, peer: Peer) -> pb.ListServicesResponse:
        live = (r.to_proto(self.agent_id) for r in self.registry.live_instances())
        return services_page(live, req.after, self.config.limits.max_message_bytes // 4)

    def _instance(self, service: str) -> Registration:
        instances = self.registry.instances(service)
        if not instances:
            known = self.registry.services()
            raise NotFound(
                f"service {service!r} is not registered on agent {self.agent_id}"
                + (f" (registered: {', '.join(known)})" if known else " (no services registered)"),
                known,
            )
        return instances[0]

    def list_functions(self, req: pb.ListFunctionsRequest, peer: Peer) -> Later:
        later = Later()
        self.calls.ask(self._instance(req.service), "ListFunctions", req, later.resolve, time.monotonic())
        return later

    def register_process(self, req: pb.RegisterProcessRequest, peer: Peer) -> pb.RegisterProcessResponse:
        previous = self.registry.by_pid(req.pid)
        reg = self.registry.register(req, peer)
        if previous is not None and previous.address != reg.address:  # re-registered elsewhere: drop the old link
            self.calls.forget(previous.address, f"process {previous.pid} registered again at {reg.address}")
        self.calls.forget(reg.address, f"process {reg.pid} registered again")  # a new registration is asked afresh
        log.info("registered %s pid %d (%s) at %s", reg.service, reg.pid, reg.kind, reg.address)
        self._changes[reg.pid] = reg
        return pb.RegisterProcessResponse(
            registration_id=reg.registration_id,
            heartbeat_interval_ms=int(self.config.agent.heartbeat_interval * 1000),
            redact_names=self.config.sdk.redact_patterns,  # the process redacts what the agent would
            max_message_bytes=self.config.limits.max_message_bytes,  # the SDK reads no config of its own
        )

    def unregister_process(self, req: pb.UnregisterProcessRequest, peer: Peer) -> pb.UnregisterProcessResponse:
        reg = self.registry.unregister(req.registration_id)
        if reg is not None:
            self._forget(reg)
        return pb.UnregisterProcessResponse()

    def process_heartbeat(self, req: pb.ProcessHeartbeatRequest, peer: Peer) -> pb.ProcessHeartbeatResponse:
        return pb.ProcessHeartbeatResponse(known=self.registry.known(req.registration_id))

    def _forget(self, reg: Registration) -> None:
        log.info("unregistered %s pid %d", reg.service, reg.pid)
        self.calls.forget(reg.address, f"process {reg.pid} of service {reg.service!r} is no longer registered")
        # Its SDK may have had no chance to (SIGTERM, SIGKILL): only a socket of the registrant's own uid.
        remove_process_socket(self.config.process_socket_dir, reg.address, reg.uid)
        if self.registry.by_pid(reg.pid) is None:  # not replaced by a new registration of the same pid
            self._changes[reg.pid] = None

    def sweep_process_sockets(self) -> int:
        """At start: sockets in procs/ whose process is gone (killed, or the
        agent was down when it exited). The agent owns procs/, so the sticky
        bit lets it remove them."""
        removed = 0
        for path in self.config.process_socket_dir.glob("*.sock"):
            pid = path.name.split(".")[0].split("-")[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                removed += remove_process_socket(self.config.process_socket_dir, f"ipc://{path}")
        return removed

    def announce_changes(self, now: float) -> None:
        """What changed since the last SERVICES, or READY again if the colony
        may have missed a message."""
        if (self._changes or self.link.resync) and now - self._announced >= ANNOUNCE_EVERY:
            changed = pb.ServicesChanged(
                added=[r.to_proto(self.agent_id) for r in self._changes.values() if r is not None],
                removed=[pid for pid, r in self._changes.items() if r is None],
            )
            self._changes.clear()
            self._announced = now
            self.link.announce(changed, now)

    def purge(self, now: float) -> int:
        """One bounded run of retention: ended sessions past [agent] retention go, with their calls."""
        if not self.purges.due(now):
            return 0
        try:
            sessions, calls, more = purge_once(self.retention, self.store.purge_candidates, self.store.purge,
                                               time.time_ns())
        except duckdb.Error as exc:  # the sessions stay for the next run; the agent serves on
            log.warning("retention: could not purge agent.duckdb (%s); trying again in %gs", exc,
                        self.config.agent.purge_interval)
            self.purges.done(now, False)
            return 0
        if sessions:
            log.info(
                "retention: purged %d session(s) and %d call(s) that ended more than %s ago",
                sessions,
                calls,
                self.config.agent.retention,
            )
        self.purges.done(now, more)
        return sessions

    # ---------------------------------------------------------------- loop

    def release_when_idle(self, now: float) -> None:
        """Once the store has answered its last question and no session runs."""
        if self._answered_at is None or now - self._answered_at < IDLE_RELEASE_AFTER or self.sessions.active or \
                self.sessions.pending or self.store.holding:
            return
        self._answered_at = None
        release_idle_pages()

    def _poll_ms(self, now: float) -> int:
        """Until the next turn: the poll interval, or a question's deadline if sooner."""
        wait = self.config.agent.poll_interval
        for deadline in (self.calls.next_deadline(), self.followers.next_deadline()):
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
        return math.ceil(wait * 1000)

    def run(self, signals: ShutdownSignals, notifier: Notifier) -> None:
        cfg = self.config
        if self.metrics is not None:
            self.metrics.start()  # first: a port that cannot be had stops the start here, with nothing to undo
        rep = self.context.socket(zmq.ROUTER)
        configure_socket(rep, cfg.limits.max_message_bytes)
        self.cap = ConnectionCap.watch(rep, cfg.agent_endpoint, cfg.limits.max_connections_per_uid,
                                       report=self.on_connections_cut)
        bind_socket(rep, cfg.agent_endpoint)
        ensure_process_dir(cfg.process_socket_dir)
        swept = self.sweep_process_sockets()
        if swept:
            log.info("removed %d socket(s) of exited processes from %s", swept, cfg.process_socket_dir)
        failed = self.store.fail_active_sessions("agent restarted", time.time_ns())
        if failed:
            log.warning("%d session(s) left active by a previous run marked failed (agent restarted)", failed)
        self.link.connect(time.monotonic())
        self.publish_metrics(time.monotonic())
        notifier.ready(f"serving {cfg.agent_endpoint}")
        log.info(
            "coral-agentd %s ready on %s (agent id %s, colony %s)",
            __version__,
            cfg.agent_endpoint,
            self.agent_id,
            cfg.agent_colony_endpoint,
        )
        last_flush = time.monotonic()
        # The kernel never wakes the agent (a wake-up would be paid inside
        # the probed call: bench/wakeup.py); while a session runs, the ring
        # buffer is drained every drain_interval instead.
        last_drained = -math.inf
        try:
            while not signals.requested:
                poller = zmq.Poller()
                poller.register(rep, zmq.POLLIN)
                wait_ms = self._poll_ms(time.monotonic())
                if self.sessions.active or self.engine.closing or self.sessions.finishing:
                    t = time.monotonic()
                    next_drain = max(last_drained + cfg.agent.drain_interval, self.ingest.resume_at(t))
                    if self.sessions.pending >= FLUSH_BATCH:  # a backlog to write, when the budget allows
                        next_drain = min(next_drain, self.ingest.resume_at(t))
                    wait_ms = min(wait_ms, math.ceil(1000 * max(0.0, next_drain - t)))
                if self.link.socket is not None:
                    poller.register(self.link.socket, zmq.POLLIN)
                if self.cap is not None:
                    poller.register(self.cap.monitor, zmq.POLLIN)
                for sock in self.calls.sockets():
                    poller.register(sock, zmq.POLLIN)
                ready = dict(poller.poll(wait_ms))
                now = time.monotonic()
                if self.cap is not None and self.cap.monitor in ready:
                    self.cap.on_readable(now)
                self.answer_deferred(now)  # before new questions: those that waited go first
                if rep in ready:
                    serve_router(rep, self.local, LOCAL_BATCH)
                if self.link.socket is not None and self.link.socket in ready:
                    self.link.on_readable(now)
                for sock in ready:
                    self.calls.on_readable(sock)  # ignores the sockets that are not a process's
                self.calls.expire(time.monotonic())
                for answer in self.profiles.finished():
                    answer()
                cpu = time.process_time()
                if now - last_drained >= cfg.agent.drain_interval and self.ingest.allows(now) and \
                        self.sessions.pending < MAX_PENDING:
                    got = self.sessions.collect(DRAIN_BATCH)
                    # A bounded batch: what is still waiting is read at the next turn, after the sockets.
                    last_drained = -math.inf if self.sessions.more_waiting else now
                    if got:
                        self.tell_followers(now)  # from memory, before the batch is written
                self.ingest.charge(now, time.process_time() - cpu)
                cpu = time.process_time()
                # Past the budget, what is drained waits in memory (no more is drained meanwhile).
                backlog = self.sessions.pending >= FLUSH_BATCH
                if (self.sessions.pending or self.store.holding) and self.ingest.allows(time.monotonic()) and \
                        (backlog or now - last_flush >= cfg.agent.flush_interval):
                    self.sessions.flush(force=False, limit=FLUSH_BATCH)  # a bounded write: the sockets come first
                    last_flush = now
                self.ingest.charge(now, time.process_time() - cpu)
                self.sessions.stop_over_budget()
                self.sessions.ask_counts(now)
                targets_due = now - self._targets_checked >= TARGETS_EVERY
                if targets_due:
                    self._targets_checked = now
                self.sessions.expire_due(time.time_ns(), check_targets=targets_due)
                self.tell_followers(time.monotonic())
                if now - self._pruned >= PRUNE_EVERY:
                    self._pruned = now
                    for reg in self.registry.prune_exited():
                        self._forget(reg)
                self.announce_changes(now)
                self.purge(now)
                self.release_when_idle(now)
                self.link.tick(now)
                self.publish_metrics(now)
                notifier.watchdog(now)
        finally:
            notifier.stopping()
            if self.metrics is not None:
                self.metrics.close()
            log.info("stopping (%s): detaching %d session(s)", signals.signal_name or "shutdown", len(self.sessions.active))
            self.sessions.shutdown()
            for answer in self.profiles.shutdown():
                answer()
            self.sessions.flush()  # every call drained, written before the database closes
            self.answer_deferred(math.inf)
            self.tell_followers(math.inf)  # every held question is answered, with its session as it ended
            self.calls.settle(SETTLE_AT_STOP)  # the disarms of the sessions just ended, answered or not
            self.link.close()
            if self.cap is not None:
                self.cap.close(rep)
            rep.close(linger=0)
            self.calls.close()
            unlink_ipc(cfg.agent_endpoint)
            self.engine.close()
            self.store.close()
            self.registry.close()
            self.context.term()


def main(argv: list[str] | None = None) -> int:
    return run_daemon(
        argv, "coral-agentd", "Coral agent: runs uprobes for one host.", "agent.lock",
        lambda c: [(c.runtime_dir, 0o755), (c.state_dir, 0o755), (c.agent_state_dir, 0o750)],
        check_bpf_support, Agent,
    )


if __name__ == "__main__":
    sys.exit(main())
