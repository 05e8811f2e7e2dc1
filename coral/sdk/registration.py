"""A process's registration with the local agent, kept alive: register,
heartbeat, register again when the agent restarts, unregister at exit.
Used by coral-run and by the Python SDK.

Never blocks its owner: the agent may at that very moment be waiting on the
owner's own socket (asking for metadata), so a blocking call here would
stall both until a timeout. `tick` sends a request when one is due and
picks up replies without waiting; owners call it from their loop (and may
poll `socket` to hear replies at once). Never raises on a missing agent: it
logs once and keeps retrying with back-off."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable

import zmq
from google.protobuf.message import Message

from coral.daemon import wire
from coral.daemon.errors import CoralError
from coral.daemon.liveness import Backoff
from coral.daemon.sockets import configure_socket
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 2.0
MAX_MESSAGE_BYTES = 1024 * 1024


MAX_REDACT_NAMES = 1000
MAX_REDACT_NAME = 128
MIN_MESSAGE_BYTES = 65536  # the floor coral.toml allows for [limits] max_message_bytes


def agent_names(names: Iterable[str]) -> tuple[str, ...]:
    """The agent's redaction names, within bounds (a name past them is
    logged and left out: the process's own names still apply)."""
    sent = list(names)
    kept = [n for n in sent if 0 < len(n) <= MAX_REDACT_NAME and n.isprintable()][:MAX_REDACT_NAMES]
    if len(kept) < len(sent):
        log.warning("the agent sent %d redaction names; %d are past the bounds and left out", len(sent),
                    len(sent) - len(kept))
    return tuple(kept)


def agent_message_limit(value: int) -> int:
    """The agent's [limits] max_message_bytes, or 0 (keep the SDK's own)
    when it sent none (an older agent) or one below the floor."""
    if value and value < MIN_MESSAGE_BYTES:
        log.warning("the agent sent max_message_bytes %d, below %d; keeping the SDK's own", value, MIN_MESSAGE_BYTES)
        return 0
    return value


class AgentRegistration:
    def __init__(self, agent_endpoint: str, request: pb.RegisterProcessRequest,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self.endpoint = agent_endpoint
        self.request = request
        self.context = context or zmq.Context.instance()
        self.socket: zmq.Socket[bytes] | None = None
        self.registration_id = ""
        self.interval = 1.0
        self.backoff = Backoff()
        self._in_flight: tuple[bytes, str, float] | None = None  # request id, method, deadline
        self._next_attempt = 0.0
        self._warned = False
        self.redact_names: tuple[str, ...] | None = None  # the agent's, from its last RegisterProcess reply
        self.max_message_bytes = 0  # the agent's, likewise (0: none sent)

    @property
    def registered(self) -> bool:
        return bool(self.registration_id)

    def tick(self, now: float) -> bool:
        """Handle replies that have arrived; send the next request when due.
        Returns True when a registration was (re)made on this tick."""
        made = self._receive(now)
        if self._in_flight is not None:
            if now >= self._in_flight[2]:
                self._unreachable(now, f"no reply from {self.endpoint} within {REPLY_TIMEOUT:g}s")
            return made
        if now >= self._next_attempt:
            if self.registration_id:
                self._send("ProcessHeartbeat", pb.ProcessHeartbeatRequest(registration_id=self.registration_id), now)
            else:
                self._send("RegisterProcess", self.request, now)
        return made

    def _send(self, method: str, body: Message, now: float) -> None:
        if self.socket is None:
            self.socket = self.context.socket(zmq.DEALER)
            configure_socket(self.socket, MAX_MESSAGE_BYTES)
            self.socket.connect(self.endpoint)
        request_id = secrets.token_bytes(8)
        self.socket.send_multipart(wire.encode_request(request_id, method, body))
        self._in_flight = (request_id, method, now + REPLY_TIMEOUT)

    def receive(self, now: float) -> bool:
        """Only the replies that have arrived (never sends): True if one made a registration."""
        return self._receive(now)

    def _receive(self, now: float) -> bool:
        made = False
        while self.socket is not None and self._in_flight is not None:
            try:
                frames = self.socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                frame = wire.decode(frames)
            except wire.FrameError:
                continue
            request_id, method, _ = self._in_flight
            if frame.command != wire.Command.REPLY or frame.request_id != request_id:
                continue  # late or stray
            self._in_flight = None
            try:
                made = self._handle(method, frame, now) or made
            except CoralError as exc:
                log.error("unreadable reply from the agent: %s", exc.message)
                self._next_attempt = now + self.backoff.next_delay()
        return made

    def _handle(self, method: str, frame: wire.Frame, now: float) -> bool:
        if frame.name != wire.STATUS_OK:
            err = wire.parse_body(pb.Error, frame.body)
            self.registration_id = ""
            log.error("%s refused by the agent: %s: %s", method, err.code, err.message)
            self._next_attempt = now + self.backoff.next_delay()
            return False
        if method == "ProcessHeartbeat":
            if wire.parse_body(pb.ProcessHeartbeatResponse, frame.body).known:
                self._next_attempt = now + self.interval
            else:
                log.info("the agent no longer knows this process (it restarted?); registering again")
                self.registration_id = ""
                self._next_attempt = now
            return False
        reply = wire.parse_body(pb.RegisterProcessResponse, frame.body)
        self.registration_id = reply.registration_id
        self.interval = max(0.1, reply.heartbeat_interval_ms / 1000)
        self.redact_names = agent_names(reply.redact_names)
        self.max_message_bytes = agent_message_limit(reply.max_message_bytes)
        self.backoff.reset()
        self._warned = False
        self._next_attempt = now + self.interval
        log.info("registered service %r (pid %d) with the agent", self.request.service, self.request.pid)
        return True

    def _unreachable(self, now: float, why: str) -> None:
        """Drop the socket (a late reply must not be taken for the next one's)."""
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None
        self._in_flight = None
        self.registration_id = ""
        if not self._warned:
            log.warning("coral agent not reachable (%s); will keep trying", why)
            self._warned = True
        self._next_attempt = now + self.backoff.next_delay()

    def unregister(self, timeout: float = 1.0) -> None:
        """At exit: a last call on the same socket, its reply awaited for at
        most `timeout` (an agent that hangs must not hold up the exit)."""
        if self.registration_id:
            try:
                self._send("UnregisterProcess", pb.UnregisterProcessRequest(registration_id=self.registration_id),
                           time.monotonic())
                self._await_reply(timeout)
            except (zmq.ZMQError, CoralError) as exc:
                log.debug("unregister: %s", exc)
            self.registration_id = ""
        self._in_flight = None
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None

    def _await_reply(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.socket is not None and self._in_flight is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not self.socket.poll(max(1, int(left * 1000)), zmq.POLLIN):
                log.debug("unregister: no reply from %s within %gs", self.endpoint, timeout)
                return
            try:
                frame = wire.decode(self.socket.recv_multipart(flags=zmq.NOBLOCK))
            except (zmq.Again, wire.FrameError):
                continue
            if frame.command == wire.Command.REPLY and frame.request_id == self._in_flight[0]:
                if frame.name != wire.STATUS_OK:
                    err = wire.parse_body(pb.Error, frame.body)
                    log.debug("unregister refused: %s: %s", err.code, err.message)
                return
