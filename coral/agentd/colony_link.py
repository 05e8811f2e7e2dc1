"""The agent's worker link to the colony backend (DEALER): READY on connect,
heartbeats both ways, reconnect with doubling back-off, and the colony's
REQUESTs served through the agent's dispatcher."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable

import zmq
from zmq.utils.monitor import recv_monitor_message

from coral.daemon import curve, wire
from coral.daemon.liveness import Backoff, is_dead
from coral.daemon.paging import entry_bytes
from coral.daemon.runtime import configure_socket
from coral.daemon.server import Dispatcher, Peer
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)

COLONY_PEER = Peer(key="colony", trusted=True)


REPLY_QUEUE = 100_000  # messages the link queues for the colony before dropping
BATCH = 100  # messages from the colony served in one turn of the agent's loop
PAGE_BYTES = 1 << 20  # services in one READY or SERVICES message (docs/protocol.md)


def pages(instances: Iterable[pb.ServiceInstance], limit: int = PAGE_BYTES) -> list[list[pb.ServiceInstance]]:
    """Instances in pages of at most `limit` bytes encoded (one at least;
    the first may be empty)."""
    out: list[list[pb.ServiceInstance]] = [[]]
    size = 0
    for instance in instances:
        n = entry_bytes(instance)
        if out[-1] and size + n > limit:
            out.append([])
            size = 0
        out[-1].append(instance)
        size += n
    return out


class ColonyLink:
    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        hello: Callable[[], pb.AgentHello],
        dispatcher: Dispatcher,
        interval: float,
        liveness: int,
        max_message_bytes: int,
        keys: curve.ClientKeys | None = None,
    ) -> None:
        self.context = context
        self.endpoint = endpoint
        self.hello = hello
        self.dispatcher = dispatcher
        self.interval = interval
        self.liveness = liveness
        self.max_message_bytes = max_message_bytes
        self.keys = keys
        self.socket: zmq.Socket[bytes] | None = None
        self.monitor: zmq.Socket[bytes] | None = None  # CURVE handshake outcomes, on tcp
        self._handshake = curve.HandshakeWatch()
        self.backoff = Backoff()
        self.connected = False  # heard from the colony since the last (re)connect
        self._reconnect_at = 0.0
        self._last_heard = 0.0
        self._last_sent = 0.0
        self.dropped = 0  # messages to the colony dropped at the high-water mark
        self.resync = False  # a SERVICES message was dropped: READY and the whole list again
        self.page_bytes = min(PAGE_BYTES, max_message_bytes // 4)

    def _send(self, frames: list[bytes], now: float) -> bool:
        if self.socket is None:
            return False
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK)
            self._last_sent = now
            return True
        except zmq.Again:
            self.dropped += 1  # high-water mark while the colony is away: heartbeats will tell
            return False

    def _reply(self, frames: list[bytes]) -> None:
        """A reply to the colony, now or later (an attach that waited on processes)."""
        self._send(frames, time.monotonic())

    def send_ready(self, now: float) -> None:
        """READY with the first page of services, SERVICES with the rest."""
        hello = self.hello()
        first, *rest = pages(hello.services, self.page_bytes)
        del hello.services[:]
        hello.services.extend(first)
        sent = self._send(wire.encode_ready(hello), now)
        for page in rest:
            sent = sent and self._send(wire.encode_services(pb.ServicesChanged(added=page)), now)
        self.resync = not sent

    def announce(self, changed: pb.ServicesChanged, now: float) -> None:
        """Services changed: only what changed, unless the colony may have
        missed some of it."""
        if self.socket is None:
            return  # connect() sends everything
        if self.resync:
            self.send_ready(now)
            return
        added = pages(changed.added, self.page_bytes)
        removed = list(changed.removed)
        per = self.page_bytes // 5  # a pid takes at most 5 bytes
        cut = [removed[i : i + per] for i in range(0, len(removed), per)] or [[]]
        # Page i holds the i-th page of each: one message for a small change.
        messages = [pb.ServicesChanged(added=added[i] if i < len(added) else [], removed=cut[i] if i < len(cut) else [])
                    for i in range(max(len(added), len(cut)))]
        for message in messages:
            if not self._send(wire.encode_services(message), now):
                self.resync = True
                return

    def connect(self, now: float) -> None:
        s = self.context.socket(zmq.DEALER)
        # Replies to a burst of pipelined requests all go out in one loop
        # turn; a full queue would drop them (found by 10,000 attaches at once).
        configure_socket(s, self.max_message_bytes, REPLY_QUEUE)
        if self.keys is not None:
            curve.connect_curve(s, self.keys)
            curve.set_heartbeats(s, self.interval)
            self.monitor = s.get_monitor_socket(curve.HANDSHAKE_EVENTS)
            self._handshake = curve.HandshakeWatch()
        s.connect(self.endpoint)
        self.socket = s
        self._last_heard = now
        self.connected = False
        self.send_ready(now)
        log.debug("connecting to colony at %s", self.endpoint)

    def _close_monitor(self) -> None:
        if self.monitor is not None and self.socket is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.socket.disable_monitor()
        if self.monitor is not None:
            self.monitor.close(linger=0)
            self.monitor = None

    def _check_handshakes(self) -> None:
        """Say once per connection attempt why the colony refused us."""
        while self.monitor is not None:
            try:
                event = recv_monitor_message(self.monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            outcome = self._handshake.see(event["event"])
            if not outcome:
                continue
            if outcome == "refused" and self.keys is not None:
                log.error(
                    "the colony at %s refused this agent's key %s: add its public key file to the colony's "
                    "[colony] agent_keys_dir",
                    self.endpoint,
                    curve.fingerprint(self.keys.keys.public),
                )
            elif outcome == "closed":
                log.error(
                    "the colony at %s closed the connection during the CURVE handshake: "
                    "is [agent] colony_public_key_file the colony's public key?",
                    self.endpoint,
                )
            self._close_monitor()  # once is enough until the next reconnect

    def _drop(self, now: float, why: str) -> None:
        self._close_monitor()
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None
        delay = self.backoff.next_delay()
        self._reconnect_at = now + delay
        if self.connected:
            log.warning("colony link lost (%s); reconnecting in %gs", why, delay)
        self.connected = False

    def audit(self, entry: pb.AuditEntry, now: float) -> None:
        """An audit row for the colony's log (dropped, and counted, while the colony is away)."""
        if self.connected:
            self._send(wire.encode_audit(entry), now)
        else:
            self.dropped += 1

    def on_readable(self, now: float) -> None:
        """Serve at most BATCH messages: the loop's other duties (the ring
        buffer, expiry, heartbeats) come between two batches, however many
        requests the colony pipelines (10,000 at once took one turn of over
        5 s, and the agent took the colony for dead)."""
        for _ in range(BATCH):
            if self.socket is None:
                return
            try:
                frames = self.socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_heard = time.monotonic()  # not the turn's start: a batch of attaches can take seconds
            if not self.connected:
                self.connected = True
                self.backoff.reset()
                log.info("connected to colony at %s", self.endpoint)
            try:
                frame = wire.decode(frames)
            except wire.FrameError as exc:
                self.dispatcher.bad_frame(exc)  # counted; nothing is owed to the colony
                continue
            if frame.command == wire.Command.REQUEST:
                self.dispatcher.handle(frame, COLONY_PEER, self._reply)
            elif frame.command == wire.Command.DISCONNECT:
                # The colony does not know us (it restarted): announce again.
                self.connected = True
                self.send_ready(now)

    def tick(self, now: float) -> None:
        if self.socket is None:
            if now >= self._reconnect_at:
                self.connect(now)
            return
        self._check_handshakes()
        if is_dead(self._last_heard, now, self.interval, self.liveness):
            self._drop(now, f"no heartbeat for {self.interval * self.liveness:g}s")
            return
        if now - self._last_sent >= self.interval:
            self._send(wire.encode_signal(wire.Command.HEARTBEAT), now)

    def close(self) -> None:
        self._close_monitor()
        if self.socket is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.socket.send_multipart(wire.encode_signal(wire.Command.DISCONNECT), flags=zmq.NOBLOCK)
            self.socket.close(linger=200)  # let DISCONNECT leave
            self.socket = None
