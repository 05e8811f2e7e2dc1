"""A blocking request/reply client for any Coral socket (coralctl, SDKs,
coral-run, the agent calling a process). One request in flight at a time."""

from __future__ import annotations

import os
import secrets
import time

import zmq
from google.protobuf.message import Message

from coral.daemon import wire
from coral.daemon.errors import CoralError, Unavailable, error_from_code
from coral.daemon.methods import METHODS
from coral.proto import coral_pb2 as pb

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
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
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = None

    def _open(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            s = self._context.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            s.connect(self.endpoint)
            self._socket = s
        return self._socket

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, request: Message, timeout: float | None = None) -> Message:
        """Send one request, wait for its reply; raise the typed error on failure."""
        spec = METHODS[method]
        sock = self._open()
        request_id = secrets.token_bytes(8)
        sock.send_multipart(wire.encode_request(request_id, method, request))
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            left_ms = max(0, int(1000 * (deadline - time.monotonic())))
            # In slices: a signal (Ctrl-C) that lands just before the wait
            # begins does not interrupt it; between slices Python acts on it.
            if not sock.poll(min(left_ms, POLL_SLICE_MS)):
                if left_ms > POLL_SLICE_MS:
                    continue
                self.close()
                raise Unreachable(f"no reply from {describe_endpoint(self.endpoint)} within {limit:g}s")
            try:
                frame = wire.decode(sock.recv_multipart())
            except wire.FrameError as exc:
                raise CoralError(f"unreadable reply from {self.endpoint}: {exc.reason}") from None
            if frame.command != wire.Command.REPLY or frame.request_id != request_id:
                continue  # a stray or late message: not ours
            if frame.name == wire.STATUS_OK:
                return wire.parse_body(spec.response, frame.body)
            err = wire.parse_body(pb.Error, frame.body)
            raise error_from_code(err.code or frame.name, err.message, list(err.suggestions))
