"""coral-colonyd: the control plane. ROUTER frontend for clients, ROUTER
backend for agents; the Broker decides, this loop moves bytes."""

from __future__ import annotations

import collections
import logging
import math
import sys
import time
from typing import TYPE_CHECKING, cast

import zmq
from zmq.backend import zmq_poll
from zmq.utils.monitor import recv_monitor_message

from coral import __version__
from coral.colonyd.broker import Broker, Outgoing
from coral.colonyd.metrics import colony_snapshot
from coral.colonyd.store import ColonyStore
from coral.daemon import curve, wire
from coral.daemon.config import Config
from coral.daemon.connections import ConnectionCap, uids_of
from coral.daemon.errors import BadRequest
from coral.daemon.methods import COLONY_FRONTEND_METHODS
from coral.daemon.metrics import RequestTimes
from coral.daemon.runtime import (
    Notifier,
    ShutdownSignals,
    bind_socket,
    configure_socket,
    run_daemon,
    unlink_ipc,
)
from coral.daemon.server import peer_of, recv_frames
from coral.proto import coral_pb2 as pb

if TYPE_CHECKING:
    from coral.daemon.prometheus import Metrics

log = logging.getLogger("coral.colonyd")

TICK_SECONDS = 0.1
BATCH = 100  # messages handled between two audit writes
SEND_QUEUE = 100_000  # messages queued for one client or agent
_MORE, _LAST = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK)
_REPLY = bytes([wire.Command.REPLY])
# pyzmq's Socket.send without its Python layer, which looks at the data's
# type and the socket's kind on every frame: 1.2 us a 7-frame message
# instead of 2.4 (a micro-bench). The frames are always bytes here.
_send_frame = zmq.backend.Socket.send
_POLLIN = int(zmq.POLLIN)


_HEARTBEAT_TAIL = wire.encode_signal(wire.Command.HEARTBEAT)  # b"", header, command: after the identity


# What each body-carrying command from an agent holds.
BACKEND_BODIES: dict[wire.Command, type[pb.AgentHello] | type[pb.ServicesChanged] | type[pb.AuditEntry]] = {
    wire.Command.READY: pb.AgentHello,
    wire.Command.SERVICES: pb.ServicesChanged,
    wire.Command.AUDIT: pb.AuditEntry,
}


class Colony:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.keys = curve.colony_keys(config)  # a tcp endpoint without keys stops the start here
        self.metrics: Metrics | None = None  # /metrics, if [colony] metrics_listen says where
        self.times: RequestTimes | None = None  # when each client's request came, until its reply is sent
        self._metrics_published = -math.inf
        if config.colony.metrics_listen:
            from coral.daemon.prometheus import Metrics  # only when used: prometheus_client costs memory

            self.metrics = Metrics("coral_colony", config.colony.metrics_listen, "[colony] metrics_listen",
                                   {"frontend": COLONY_FRONTEND_METHODS})
            self.metrics.start()  # before the sockets: a port that cannot be had stops the start with nothing to undo
            self.times = RequestTimes(self.metrics.timer("frontend"))
        self.context = zmq.Context()
        self.store = ColonyStore(config.colony_state_dir / "colony.duckdb")
        self.broker = Broker(config, self.store)
        # The ZAP handler is bound before any CURVE socket: without one, libzmq admits every key.
        self.zap: zmq.Socket[bytes] | None = None
        if self.keys is not None:
            self.zap = self.context.socket(zmq.REP)
            self.zap.setsockopt(zmq.LINGER, 0)
            self.zap.bind(curve.ZAP_ENDPOINT)
        self.denials = curve.DenialThrottle()
        self.monitors: dict[zmq.Socket[bytes], str] = {}  # tcp sockets' failed handshakes, by domain
        self.curve: dict[zmq.Socket[bytes], bool] = {}  # whether a socket's peers have CURVE keys
        self.caps: list[tuple[ConnectionCap, zmq.Socket[bytes]]] = []  # ipc sockets' connections per uid
        self.frontend = self._socket(config.colony_frontend, curve.FRONTEND)
        self.backend = self._socket(config.colony_backend, curve.BACKEND)
        self._outbox: list[Outgoing] = []
        self._waiting: collections.deque[tuple[int, Outgoing]] = collections.deque()  # (batch, reply) for a write
        self._waiting_own: list[tuple[int, Outgoing]] = []  # held followers' answers, each for its own row's batch

    def _socket(self, endpoint: str, domain: str) -> zmq.Socket[bytes]:
        """A ROUTER whose queue to each peer holds SEND_QUEUE messages: a
        client may pipeline thousands of requests, and their replies (or one
        tick's UNAVAILABLEs) go out in one turn. ROUTER_MANDATORY makes a
        message that still does not fit an error the loop handles, not a
        silent drop."""
        s = self.context.socket(zmq.ROUTER)
        configure_socket(s, self.config.limits.max_message_bytes, SEND_QUEUE)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.curve[s] = False
        if curve.is_tcp(endpoint) and self.keys is not None:
            self.curve[s] = True
            curve.serve_curve(s, self.keys, domain, self.config.colony.heartbeat_interval)
            self.monitors[s.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)] = domain
        exempt = uids_of(self.config.colony.agent_users) if domain == curve.BACKEND else frozenset()
        report = lambda uid, pid, count: self.on_connections_cut(domain, uid, pid, count)  # noqa: E731
        cap = ConnectionCap.watch(s, endpoint, self.config.limits.max_connections_per_uid, exempt, report)
        if cap is not None:  # watching before bind: no connection is missed
            self.caps.append((cap, s))
        bind_socket(s, endpoint)
        return s

    def on_connections_cut(self, domain: str, uid: int, pid: int, count: int) -> None:
        """A uid past [limits] max_connections_per_uid (reported at most once a minute per uid)."""
        cap = self.config.limits.max_connections_per_uid
        why = f"{domain}: cut {count} connection(s) past uid {uid}'s {cap} ([limits] max_connections_per_uid)"
        log.warning("%s; last from pid %d", why, pid)
        self.broker.audit.connection_cut(uid, pid, why)

    def on_handshake_failed(self, monitor: zmq.Socket[bytes], now: float) -> None:
        """A tcp peer that never reached ZAP: no CURVE, or the wrong colony
        key. libzmq does not say who; audited like a refused key."""
        domain = self.monitors[monitor]
        event = recv_monitor_message(monitor)
        if event["event"] != zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            return
        why = curve.handshake_failure(int(event["value"]))
        self.broker.count(f"handshake_failed.{domain}")
        if self.denials.should_audit(domain, "unknown", why, now):
            log.warning("refused a %s connection: %s", domain, why)
            self.broker.audit.refused_connection("unknown", domain, why)

    def on_zap(self, now: float) -> None:
        """Admit or refuse one new tcp connection; a refusal is audited (at
        most once a minute per key and address: refused peers retry)."""
        if self.zap is None or self.keys is None:
            return
        frames = self.zap.recv_multipart()
        try:
            request = curve.parse_zap(frames)
        except ValueError as exc:
            self.broker.count("zap.bad_requests")
            request_id = frames[1] if len(frames) > 1 else b""
            self.zap.send_multipart(curve.zap_reply(request_id, curve.ZapAnswer("500", str(exc), "", "")))
            return
        answer = curve.decide(request, self.keys.allow)
        self.zap.send_multipart(curve.zap_reply(request.request_id, answer))
        if answer.status == "200":
            log.debug("admitted %s on the %s from %s", answer.who, request.domain, request.address)
            return
        self.broker.count(f"zap.denied.{request.domain}")
        if self.denials.should_audit(request.domain, answer.who, request.address, now):
            log.warning("refused a %s connection from %s: %s", request.domain, request.address, answer.text)
            self.broker.audit.refused_connection(answer.who, request.domain, f"from {request.address}: {answer.text}")

    def send(self, messages: list[Outgoing]) -> None:
        """Messages to agents go now: they wait for no write, and the agent
        works on one while the loop handles the rest of its batch (held to
        the turn's end, a forwarded attach waited 0.3 ms there at the
        median, bench/routing_trace.py). Messages to clients go at flush()."""
        for m in messages:
            if m.socket == "backend":
                self._send_now(m)
            else:
                self._outbox.append(m)

    def flush(self) -> None:
        """Audit rows go to the journal's thread, one append at a time, and
        with session states and calls to the writer thread, one batch at a
        time (group commit); the loop serves on. A reply to a client goes
        out once the audit rows before it are in the journal, on disk;
        messages to agents, and answers to counted reads (Ping,
        ListServices, ListDebugSessions), do not wait."""
        self.store.on_written()
        self.store.journal.on_written()
        self._release()  # first: not behind the next append's hand-over and the turn's other sends
        self._outbox.extend(self.broker.take_woken())  # followers whose session had news
        while True:
            self.broker.audit.hand_over()
            self.store.journal.behind()
            self.store.write_behind()
            batch = self.store.journal.batch_of_pending()
            for ticket in self.broker.streams.tickets:
                ticket.batch = batch
            self.broker.streams.tickets.clear()
            messages, self._outbox = self._outbox, []
            for m in messages:
                if m.socket == "frontend" and m.after_batch is not None:
                    if m.after_batch <= self.store.journal.written:
                        self._send_now(m)
                    else:
                        self._waiting_own.append((m.after_batch, m))  # not behind replies waiting for later batches
                elif m.socket == "frontend" and m.after_write:
                    self._waiting.append((batch, m))
                else:
                    self._send_now(m)
            self._release()
            if not self._outbox:  # answers to requests that could not be sent
                return

    def _release(self) -> None:
        """The replies whose audit rows are in the journal (or whose append failed: counted, logged)."""
        written = self.store.journal.written
        while self._waiting and self._waiting[0][0] <= written:
            self._send_now(self._waiting.popleft()[1])
        if self._waiting_own:
            ready = [m for batch, m in self._waiting_own if batch <= written]
            self._waiting_own = [(batch, m) for batch, m in self._waiting_own if batch > written]
            for m in ready:
                self._send_now(m)

    def _send_now(self, m: Outgoing) -> None:
        sock = self.frontend if m.socket == "frontend" else self.backend
        if self.times is not None and m.socket == "frontend" and len(m.frames) >= 4 and m.frames[-4] == _REPLY:
            self.times.finish((m.frames[0], m.frames[-3]))  # a reply: [identity, "", header, REPLY, id, status, body]
        try:
            # What send_multipart does, with flags as plain ints: it ORs
            # enum flags for every frame, 4.5 us of a 7 us send here.
            frames = m.frames
            for frame in frames[:-1]:
                _send_frame(sock, frame, _MORE)
            _send_frame(sock, frames[-1], _LAST)
        except zmq.ZMQError as exc:
            # ROUTER_MANDATORY: the peer went away, or its queue is full.
            why = "its queue is full" if isinstance(exc, zmq.Again) else "it is gone"
            self.broker.count(f"unroutable.{m.socket}")
            (log.warning if m.socket == "backend" else log.debug)("could not send to a %s peer: %s (%s)", m.socket, why, exc)
            if m.request_id:  # a request for an agent: its client is answered now
                self._outbox.extend(self.broker.not_sent(m.request_id, why))

    def on_frontend(self, now: float) -> None:
        frames, first = recv_frames(self.frontend)
        peer = peer_of(first, curve=self.curve[self.frontend])
        identity = frames[:1]
        try:
            frame = wire.decode(frames)
            if frame.command != wire.Command.REQUEST:
                raise wire.FrameError(f"{frame.command.name} is not served on the frontend", frame.request_id)
        except wire.FrameError as exc:
            self.broker.audit_bad_frame(peer, exc.reason)
            err = BadRequest(f"bad frame: {exc.reason}")
            self.send([Outgoing("frontend", wire.encode_error(exc.request_id or b"?", err, tuple(identity)))])
            return
        if self.times is not None and len(frame.envelope) == 1:
            self.times.start((frame.envelope[0], frame.request_id), frame.name, time.monotonic())
        self.send(self.broker.handle_request(frame, peer, now))

    def on_backend(self, now: float) -> None:
        frames, first = recv_frames(self.backend)  # who sent it is read for a READY only
        if frames[1:] == _HEARTBEAT_TAIL and frames[0]:
            # A heartbeat (a thousand agents' each second): only who sent
            # it is needed, not a decoded Frame (what decode() would find).
            if not self.broker.agent_heard(frames[0], now):
                self._disconnect((frames[0],))
            return
        try:
            frame = wire.decode(frames)
            body = wire.parse_body(BACKEND_BODIES[frame.command], frame.body) if frame.command in BACKEND_BODIES else None
        except (wire.FrameError, BadRequest) as exc:
            self.broker.count("bad_frames.backend")
            log.debug("bad frame from an agent: %s", exc)
            return
        identity = frame.envelope[0] if frame.envelope else b""
        if isinstance(body, pb.AgentHello):
            if body.agent_id:
                self.send(self.broker.agent_ready(identity, body, peer_of(first, curve=self.curve[self.backend]), now))
        elif frame.command == wire.Command.DISCONNECT:
            self.send(self.broker.agent_gone(identity, "agent disconnected"))
        elif isinstance(body, pb.ServicesChanged):
            if not self.broker.agent_services(identity, body, now):
                self._disconnect(frame.envelope[:1])
        elif not self.broker.agent_heard(identity, now):
            self._disconnect(frame.envelope[:1])  # not known (e.g. the colony restarted): ask it to announce itself
        elif frame.command == wire.Command.REPLY:
            self.send(self.broker.handle_reply(frame, now))
        elif isinstance(body, pb.AuditEntry):
            self.broker.record_agent_audit(identity, body)

    def _disconnect(self, envelope: tuple[bytes, ...]) -> None:
        """Ask a link that is not a known agent to announce itself again."""
        self.send([Outgoing("backend", wire.encode_signal(wire.Command.DISCONNECT, envelope))])

    def publish_metrics(self, now: float) -> None:
        """Once per heartbeat: a new snapshot for /metrics (read by its own
        thread; the loop never waits for a scrape)."""
        if self.metrics is None or now - self._metrics_published < self.config.colony.heartbeat_interval:
            return
        self._metrics_published = now
        try:
            self.metrics.publish(colony_snapshot(self.broker))
        except Exception:  # a bug: the last snapshot stays; the colony serves on
            log.exception("could not update /metrics")

    def run(self, signals: ShutdownSignals, notifier: Notifier) -> None:
        self.publish_metrics(time.monotonic())
        notifier.ready(f"frontend {self.config.colony_frontend}")
        log.info(
            "coral-colonyd %s ready: frontend %s, backend %s",
            __version__,
            self.config.colony_frontend,
            self.config.colony_backend,
        )
        poller = zmq.Poller()
        for sock in (self.backend, self.frontend, self.zap, *self.monitors, *(cap.monitor for cap, _ in self.caps)):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        poller.register(self.store.writer_fd(), zmq.POLLIN)  # a write behind has finished
        poller.register(self.store.journal.fileno(), zmq.POLLIN)  # an append has finished
        # zmq_poll takes a file descriptor as libzmq's does, which its stub does not say.
        in_batch = cast("list[tuple[zmq.backend.Socket, int]]",
                        [(self.backend, _POLLIN), (self.frontend, _POLLIN), (self.store.journal.fileno(), _POLLIN)])
        next_tick = time.monotonic()
        try:
            while not signals.requested:
                # Wait for work or the next tick; what it finds is the batch's first round.
                ready = dict(poller.poll(max(0, int(1000 * (next_tick - time.monotonic())))))
                now = time.monotonic()
                if self.zap is not None and self.zap in ready:
                    self.on_zap(now)
                for monitor in self.monitors:
                    if monitor in ready:
                        self.on_handshake_failed(monitor, now)
                for cap, _ in self.caps:
                    if cap.monitor in ready:
                        cap.on_readable(now)
                        self.broker.counters["connections.cut"] = sum(c.total_cut for c, _ in self.caps)
                # Take the messages waiting (a bounded batch), then write their
                # audit rows in one go. Within the batch only the two sockets
                # that carry requests and replies, and the journal's pipe,
                # are polled, through zmq_poll itself (1.8 us for the two
                # sockets, where Poller.poll of every socket took 4 to 8 us,
                # about ten times an attach); the others wait for the next
                # turn's poll, which returns at once if they are ready. An
                # append done within the batch sends the replies it held
                # then, not at the batch's end (the loop saw it 0.05 ms
                # after it at the median, against 0.07 to 0.33 ms,
                # bench/routing_trace.py); the rows that came meanwhile
                # are still handed over together at the batch's end.
                backend, frontend = self.backend in ready, self.frontend in ready
                journal = self.store.journal
                for _ in range(BATCH):
                    if backend:
                        self.on_backend(now)
                    if frontend:
                        self.on_frontend(now)
                    polled = zmq_poll(in_batch, 0)
                    if not polled:
                        break
                    backend = frontend = False
                    for item, _ in polled:
                        if item is self.backend:
                            backend = True
                        elif item is self.frontend:
                            frontend = True
                        else:  # the journal's pipe
                            journal.on_written()
                            self._release()
                if now >= next_tick:  # timers, not per message: a thousand agents' heartbeats wake us often
                    self.send(self.broker.tick(now))
                    next_tick = now + TICK_SECONDS
                    self.publish_metrics(now)
                elif self.broker.replies_since_pull:
                    self.send(self.broker.pull(now))
                self.flush()
                notifier.watchdog(now)
        finally:
            notifier.stopping()
            if self.metrics is not None:
                self.metrics.close()
            log.info("stopping (%s)", signals.signal_name or "shutdown")
            self.broker.followers.expire(math.inf)  # held followers are answered with what is here
            self.flush()
            self.broker.audit.flush(final=True)  # every write done: the replies waiting for one go out
            self._release()
            for cap, sock in self.caps:
                cap.close(sock)
            self.frontend.close(linger=200)  # the last replies, released above, leave
            self.backend.close(linger=0)
            if self.zap is not None:
                self.zap.close(linger=0)
            for monitor in self.monitors:
                monitor.close(linger=0)
            unlink_ipc(self.config.colony_frontend)
            unlink_ipc(self.config.colony_backend)
            self.store.close()
            self.context.term()


def main(argv: list[str] | None = None) -> int:
    return run_daemon(
        argv, "coral-colonyd", "Coral colony: sessions, routing, audit.", "colony.lock",
        lambda c: [(c.colony_runtime_dir, 0o755), (c.colony_state_dir, 0o750)], lambda: None, Colony,
    )


if __name__ == "__main__":
    sys.exit(main())
