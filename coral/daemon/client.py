"""A blocking request/reply client for any Coral socket (coralctl, SDKs,
coral-run, the agent calling a process). One request in flight at a time."""

from __future__ import annotations

import contextlib
import os
import secrets
import time

import zmq
from google.protobuf.message import Message
from zmq.utils.monitor import recv_monitor_message

from coral.daemon import curve, wire
from coral.daemon.errors import CoralError, Unavailable, error_from_code
from coral.daemon.methods import METHODS
from coral.daemon.server import recv_frames
from coral.proto import coral_pb2 as pb

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_send = zmq.backend.Socket.send
_MORE = int(zmq.SNDMORE)
POLL_SLICE_MS = 100


def describe_endpoint(endpoint: str) -> str:
    """Why an endpoint may be unreachable, for error messages."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        if not os.path.exists(path):
            return f"{endpoint} (no socket file there)"
    return endpoint


class Unreachable(Unavailable):
    """No reply at all from the endpoint (not running, or stuck)."""


class HandshakeFailed(Unreachable):
    """The endpoint is there but refused the CURVE handshake (tcp only)."""


# How long a CURVE handshake may take before the client says why it did not happen.
HANDSHAKE_TIMEOUT = 5.0


class Client:
    """DEALER-based client: works against REP and ROUTER sockets alike.

    After a timeout the socket is closed and reopened (a late reply must not
    be taken for the answer to the next request)."""

    def __init__(
        self,
        endpoint: str,
        timeout: float = 10.0,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keys: curve.ClientKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.keys = keys
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None  # until the CURVE handshake succeeds
        self._handshake = curve.HandshakeWatch()

    def _open(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            s = self._context.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            if self.keys is not None:
                curve.connect_curve(s, self.keys)
                self._monitor = s.get_monitor_socket(curve.HANDSHAKE_EVENTS)
                self._handshake = curve.HandshakeWatch()
            s.connect(self.endpoint)
            self._socket = s
        return self._socket

    def _close_monitor(self) -> None:
        if self._monitor is not None:
            if self._socket is not None:
                with contextlib.suppress(zmq.ZMQError):
                    self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def close(self) -> None:
        self._close_monitor()
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _handshake_event(self) -> None:
        """Read one monitor event; raise at once if the colony refused us."""
        if self._monitor is None or self.keys is None:
            return
        outcome = self._handshake.see(recv_monitor_message(self._monitor)["event"])
        if outcome == "ok":
            self._close_monitor()
        elif outcome == "refused":
            self.close()
            raise HandshakeFailed(
                f"{self.endpoint} refused this client's key {curve.fingerprint(self.keys.keys.public)}: "
                "its public key file is not in the colony's [colony] client_keys_dir"
            )
        elif outcome == "closed":
            self.close()
            raise HandshakeFailed(
                f"{self.endpoint} closed the connection during the CURVE handshake: "
                "is [client] colony_public_key_file (--colony-key) the colony's public key?"
            )

    def _wait(self, sock: zmq.Socket[bytes], deadline: float, limit: float) -> None:
        """Until a reply is readable; over CURVE, watch the handshake too, and
        give up on it after HANDSHAKE_TIMEOUT with the likely cause."""
        handshake_deadline = time.monotonic() + min(limit, HANDSHAKE_TIMEOUT)
        while True:
            monitor = self._monitor
            until = handshake_deadline if monitor is not None else deadline
            left_ms = max(0, int(1000 * (until - time.monotonic())))
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            if monitor is not None:
                poller.register(monitor, zmq.POLLIN)
            # In slices: a signal (Ctrl-C) that lands just before the wait
            # begins does not interrupt it; between slices Python acts on it.
            ready = dict(poller.poll(min(left_ms, POLL_SLICE_MS)))
            if not ready and left_ms > POLL_SLICE_MS:
                continue
            if sock in ready:
                self._close_monitor()  # a reply proves the handshake
                return
            if monitor is not None and monitor in ready:
                self._handshake_event()
                continue
            if monitor is not None:
                self.close()
                raise HandshakeFailed(
                    f"no CURVE handshake with {self.endpoint} within {min(limit, HANDSHAKE_TIMEOUT):g}s: "
                    + (
                        "the connection opened but nothing answered the handshake; is that the colony's frontend port?"
                        if self._handshake.tcp_connected
                        else "nothing accepted the connection; is coral-colonyd running there, and the port open?"
                    )
                )
            self.close()
            raise Unreachable(f"no reply from {describe_endpoint(self.endpoint)} within {limit:g}s")

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, request: Message, timeout: float | None = None) -> Message:
        """Send one request, wait for its reply; raise the typed error on failure."""
        spec = METHODS[method]
        sock = self._open()
        request_id = secrets.token_bytes(8)
        frames = wire.encode_request(request_id, method, request)
        # send_multipart(frames), without the Python layer that makes an
        # enum of the flags for every frame (4 us of a call's 6 us send).
        for f in frames[:-1]:
            _send(sock, f, _MORE)
        _send(sock, frames[-1], 0)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            self._wait(sock, deadline, limit)
            try:
                frame = wire.decode(recv_frames(sock)[0])
            except wire.FrameError as exc:
                raise CoralError(f"unreadable reply from {self.endpoint}: {exc.reason}") from None
            if frame.command != wire.Command.REPLY or frame.request_id != request_id:
                continue  # a stray or late message: not ours
            if frame.name == wire.STATUS_OK:
                return wire.parse_body(spec.response, frame.body)
            err = wire.parse_body(pb.Error, frame.body)
            raise error_from_code(err.code or frame.name, err.message, list(err.suggestions))
