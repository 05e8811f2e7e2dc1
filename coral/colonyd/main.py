"""coral-colonyd: the control plane. ROUTER frontend for clients, ROUTER
backend for agents; the Broker decides, this loop moves bytes."""

from __future__ import annotations

import logging
import sys
import time

import zmq

from coral import __version__
from coral.colonyd.broker import Broker, Outgoing
from coral.colonyd.store import ColonyStore
from coral.daemon import wire
from coral.daemon.config import Config
from coral.daemon.errors import BadRequest
from coral.daemon.runtime import (
    Notifier,
    ShutdownSignals,
    bind_socket,
    configure_socket,
    run_daemon,
    unlink_ipc,
)
from coral.daemon.server import recv_with_peer
from coral.proto import coral_pb2 as pb

log = logging.getLogger("coral.colonyd")

TICK_SECONDS = 0.1
BATCH = 100  # messages handled between two audit writes
REPLY_QUEUE = 100_000  # replies queued for one client


class Colony:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.context = zmq.Context()
        self.store = ColonyStore(config.state_dir / "colony.duckdb")
        self.broker = Broker(config, self.store)
        self.frontend = self._socket(config.colony_frontend)
        self.backend = self._socket(config.colony_backend)
        self.backend.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A client may pipeline thousands of requests: their replies (or the
        # UNAVAILABLEs of one tick) must not be dropped silently at the
        # default high-water mark of 1000. A reply that still does not fit is
        # counted (unroutable.frontend), not lost without a trace.
        self.frontend.setsockopt(zmq.SNDHWM, REPLY_QUEUE)
        self.frontend.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._outbox: list[Outgoing] = []

    def _socket(self, endpoint: str) -> zmq.Socket[bytes]:
        s = self.context.socket(zmq.ROUTER)
        configure_socket(s, self.config.limits.max_message_bytes)
        bind_socket(s, endpoint)
        return s

    def send(self, messages: list[Outgoing]) -> None:
        self._outbox.extend(messages)

    def flush(self) -> None:
        """Audit rows first, then the replies they describe."""
        self.broker.flush_audit()
        messages, self._outbox = self._outbox, []
        for m in messages:
            sock = self.frontend if m.socket == "frontend" else self.backend
            try:
                sock.send_multipart(m.frames, flags=zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError) as exc:
                # ROUTER_MANDATORY: the peer went away; nothing else to do.
                self.broker.count(f"unroutable.{m.socket}")
                log.debug("could not send to a %s peer: %s", m.socket, exc)

    def on_frontend(self, now: float) -> None:
        frames, peer = recv_with_peer(self.frontend)
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
        self.send(self.broker.handle_request(frame, peer, now))

    def on_backend(self, now: float) -> None:
        frames, _peer = recv_with_peer(self.backend)
        try:
            frame = wire.decode(frames)
        except wire.FrameError as exc:
            self.broker.count("bad_frames.backend")
            log.debug("bad frame from an agent: %s", exc.reason)
            return
        identity = frame.envelope[:1]
        if frame.command == wire.Command.READY:
            try:
                hello = wire.parse_body(pb.AgentHello, frame.body)
            except BadRequest:
                self.broker.count("bad_frames.backend")
                return
            if hello.agent_id:
                self.broker.agent_ready(identity[0], hello, now)
            return
        if frame.command == wire.Command.DISCONNECT:
            self.send(self.broker.agent_gone(identity[0], "agent disconnected"))
            return
        if not self.broker.agent_heard(identity[0], now):
            # Not known (e.g. the colony restarted): ask it to announce itself.
            self.send([Outgoing("backend", wire.encode_signal(wire.Command.DISCONNECT, identity))])
            return
        if frame.command == wire.Command.REPLY:
            self.send(self.broker.handle_reply(frame, now))
        elif frame.command == wire.Command.AUDIT:
            try:
                self.broker.record_agent_audit(wire.parse_body(pb.AuditEntry, frame.body))
            except BadRequest:
                self.broker.count("bad_frames.backend")

    def run(self, signals: ShutdownSignals, notifier: Notifier) -> None:
        notifier.ready(f"frontend {self.config.colony_frontend}")
        log.info(
            "coral-colonyd %s ready: frontend %s, backend %s",
            __version__,
            self.config.colony_frontend,
            self.config.colony_backend,
        )
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        try:
            while not signals.requested:
                poller.poll(int(TICK_SECONDS * 1000))  # wait for work or the next tick
                now = time.monotonic()
                # Take what is waiting (a bounded batch), then write its audit rows in one go.
                for _ in range(BATCH):
                    busy = False
                    if self.backend.poll(0, zmq.POLLIN):
                        self.on_backend(now)
                        busy = True
                    if self.frontend.poll(0, zmq.POLLIN):
                        self.on_frontend(now)
                        busy = True
                    if not busy:
                        break
                self.send(self.broker.tick(now))
                self.flush()
                notifier.watchdog(now)
        finally:
            notifier.stopping()
            log.info("stopping (%s)", signals.signal_name or "shutdown")
            self.frontend.close(linger=0)
            self.backend.close(linger=0)
            unlink_ipc(self.config.colony_frontend)
            unlink_ipc(self.config.colony_backend)
            self.store.close()
            self.context.term()


def main(argv: list[str] | None = None) -> int:
    return run_daemon(
        argv, "coral-colonyd", "Coral colony: sessions, routing, audit.", "colony.lock",
        lambda c: [(c.runtime_dir, 0o755), (c.state_dir, 0o750)], lambda: None, Colony,
    )


if __name__ == "__main__":
    sys.exit(main())
