"""Request dispatch shared by every Coral server: check the allow-list,
decode, authorize, call a plain handler (AllowList, used by every daemon
and process), then encode the reply or the error (Dispatcher, for the
sockets that answer with a message). Handlers take a decoded request and a
Peer; they know nothing of sockets."""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import zmq
from google.protobuf.message import Message

from coral.daemon import wire
from coral.daemon.errors import BadRequest, CoralError, Internal, UnknownMethod
from coral.daemon.methods import METHODS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    """Who sent a message. On ipc, uid/gid/pid come from SO_PEERCRED; on
    tcp, ``key`` is the name of the peer's CURVE key in the allow-list."""

    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    key: str = ""
    trusted: bool = False  # the colony relaying a request it has already checked

    @property
    def who(self) -> str:
        if self.key:
            return f"key:{self.key}"
        if self.uid is None:
            return "unknown"
        return f"uid:{self.uid}"


@functools.lru_cache(maxsize=4096)  # a Peer is frozen; the same few clients send most requests
def peer_from_address(address: str | None) -> Peer:
    """Parse libzmq's Peer-Address property. For ipc it is
    ``<path or host>:UID:GID:PID`` (libzmq appends SO_PEERCRED)."""
    if not address:
        return Peer()
    parts = address.rsplit(":", 3)
    if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
        return Peer(uid=int(parts[1]), gid=int(parts[2]), pid=int(parts[3]))
    return Peer()


class Later:
    """An answer that comes after the handler has returned: the agent asks a
    process and serves others meanwhile. Resolved once, with the response or
    the error; whoever waits for it is told then (or at once if it already is)."""

    def __init__(self) -> None:
        self._result: Message | CoralError | None = None
        self._waiter: Callable[[Message | CoralError], None] | None = None

    def resolve(self, result: Message | CoralError) -> None:
        if self._result is not None:
            return  # the first answer stands
        self._result = result
        if self._waiter is not None:
            self._waiter(result)

    def then(self, waiter: Callable[[Message | CoralError], None]) -> None:
        self._waiter = waiter
        if self._result is not None:
            waiter(self._result)


R = TypeVar("R")


class AllowList(Generic[R]):
    """The methods one server exposes, by explicit allow-list (never "any
    method not on a deny-list"): a request for another is UNKNOWN_METHOD
    before its body is read. A body is decoded as its method's request
    message, checked by `authorize`, and handed to the method's handler,
    whose result (R) is returned."""

    def __init__(self, handlers: Mapping[str, Callable[[Any, Peer], R]], allowed: Iterable[str],
                 authorize: Callable[[str, Message, Peer], None] | None = None, where: str = "here") -> None:
        allowed = frozenset(allowed)
        missing = allowed - handlers.keys()
        if missing:
            raise ValueError(f"no handler for allowed methods: {sorted(missing)}")
        self.handlers = {name: h for name, h in handlers.items() if name in allowed}
        self.authorize = authorize
        self.where = where  # for the refusal: "method 'X' is not served here"
        self.counters: collections.Counter[str] = collections.Counter()

    def __contains__(self, method: str) -> bool:
        return method in self.handlers

    def parse(self, method: str, body: bytes) -> Message:
        """The request, decoded (raises CoralError: an unknown method, a bad body)."""
        if method not in self.handlers:
            raise UnknownMethod(f"method {method!r} is not served {self.where}")
        try:
            return wire.parse_body(METHODS[method].request, body)
        except BadRequest:
            self.counters["bad_requests"] += 1
            raise

    def check(self, method: str, request: Message, peer: Peer) -> None:
        """May `peer` make this request? (raises CoralError if not)"""
        if self.authorize is not None:
            self.authorize(method, request, peer)

    def decode(self, method: str, body: bytes, peer: Peer) -> Message:
        """The request, decoded and authorized (raises CoralError)."""
        request = self.parse(method, body)
        self.check(method, request, peer)
        return request

    def call(self, method: str, body: bytes, peer: Peer) -> R:
        request = self.decode(method, body, peer)  # first: an unknown method is refused, not looked up
        return self.handlers[method](request, peer)


# A handler takes its method's decoded request message (typed by the method
# table) and the peer, and returns the response message, or a Later for it.
Handler = Callable[[Any, Peer], Message | Later]
Send = Callable[[list[bytes]], None]


class Dispatcher(AllowList[Message | Later]):
    """Serves one socket's allow-listed methods with plain handlers that
    answer with a message (now, or later)."""

    def __init__(self, handlers: Mapping[str, Handler], allowed: Iterable[str],
                 authorize: Callable[[str, Message, Peer], None] | None = None,
                 outcome: Callable[[str, bytes, Peer, str, str], None] | None = None) -> None:
        super().__init__(handlers, allowed, authorize)
        self.outcome = outcome  # told (method, body, peer, "OK" or an error code, message) of every request
        # Told (method, seconds) when each reply is sent, a deferred one too
        # (coral/daemon/metrics.py); None: nothing is timed.
        self.latency: Callable[[str, float], None] | None = None

    def handle(self, frame: wire.Frame, peer: Peer, send: Send) -> None:
        """Answer one REQUEST frame through `send`: now, or when a Later
        resolves. Never raises for bad input."""
        self.counters["requests"] += 1
        if self.latency is not None:
            send = timed(send, frame.name, self.latency)
        try:
            response = self.call(frame.name, frame.body, peer)
        except CoralError as err:
            send(self.answer(frame, peer, err))
            return
        except Exception as exc:
            send(self.answer(frame, peer, self._internal(frame, exc)))
            return
        if isinstance(response, Later):
            self.counters["deferred"] += 1
            response.then(lambda result: send(self.answer(frame, peer, result)))
        else:
            send(self.answer(frame, peer, response))

    def _internal(self, frame: wire.Frame, exc: BaseException) -> CoralError:
        log.error("handler for %s failed", frame.name, exc_info=exc)
        return Internal("internal error; see the daemon's log")

    def answer(self, frame: wire.Frame, peer: Peer, result: Message | CoralError) -> list[bytes]:
        if isinstance(result, CoralError):
            self.counters[f"errors.{result.code}"] += 1
            self._tell(frame, peer, result.code, "internal error" if isinstance(result, Internal) else result.message)
            return wire.encode_error(frame.request_id, result, frame.envelope)
        self._tell(frame, peer, "OK", "")
        return wire.encode_reply(frame.request_id, result, frame.envelope)

    def _tell(self, frame: wire.Frame, peer: Peer, outcome: str, detail: str) -> None:
        if self.outcome is not None:
            self.outcome(frame.name, frame.body, peer, outcome, detail)

    def bad_frame(self, exc: wire.FrameError, envelope: tuple[bytes, ...] = ()) -> list[bytes]:
        """Count an unparseable message and build the BAD_REQUEST reply."""
        self.counters["bad_frames"] += 1
        log.debug("bad frame: %s", exc.reason)
        return wire.encode_error(exc.request_id or b"?", BadRequest(f"bad frame: {exc.reason}"), envelope)


def timed(send: Send, method: str, observe: Callable[[str, float], None]) -> Send:
    """`send`, telling `observe` how long after now it was called (the first time)."""
    start = time.monotonic()
    told = False

    def send_timed(frames: list[bytes]) -> None:
        nonlocal told
        if not told:
            told = True
            observe(method, time.monotonic() - start)
        send(frames)

    return send_timed


def recv_with_peer(socket: zmq.Socket[bytes], flags: int = 0) -> tuple[list[bytes], Peer]:
    """Receive a multipart message and the sender's credentials."""
    frames, first = recv_frames(socket, flags)
    return frames, peer_of(first)


def recv_frames(socket: zmq.Socket[bytes], flags: int = 0) -> tuple[list[bytes], zmq.Frame]:
    """Receive a multipart message as bytes, and its first frame as a
    zmq.Frame, whose properties say who sent it (``peer_of``). Each frame's
    own flag says whether more follow: recv_multipart asks the socket
    (getsockopt RCVMORE, which makes an enum of the option every time), and
    makes every frame a Frame and the properties read cost too. A five-frame
    message took 4.4 us this way here, 13 to 19 us through recv_multipart
    and the properties."""
    frame = first = socket.recv(flags, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = socket.recv(flags, copy=False)
        frames.append(frame.bytes)
    return frames, first


def peer_of(frame: zmq.Frame, curve: bool = True) -> Peer:
    """Who sent the message of this frame: the CURVE key's name the ZAP
    handler set, or the ipc peer's credentials. `curve=False` (an ipc
    socket) skips asking for a key: libzmq refuses, and the ZMQError
    raised for that cost 3 us a message here."""
    address: int | str | None = None
    user: int | str | None = None
    if curve:
        with contextlib.suppress(zmq.ZMQError):
            user = frame.get("User-Id")  # set by the colony's ZAP handler for CURVE peers
    if isinstance(user, str) and user:
        return Peer(key=user)
    with contextlib.suppress(zmq.ZMQError):
        address = frame.get("Peer-Address")
    return peer_from_address(address if isinstance(address, str) else None)


def serve_rep_once(rep: zmq.Socket[bytes], dispatcher: Dispatcher) -> None:
    """Serve one message on a REP socket: exactly one reply per receive,
    whatever arrived (a REP that does not reply is stuck for good)."""
    frames, peer = recv_with_peer(rep)
    try:
        frame = wire.decode([b"", *frames])  # REP strips the delimiter
        if frame.command != wire.Command.REQUEST:
            raise wire.FrameError(f"{frame.command.name} is not served on this socket")
    except wire.FrameError as exc:
        rep.send_multipart(dispatcher.bad_frame(exc)[1:])
        return
    replies: list[list[bytes]] = []
    dispatcher.handle(frame, peer, replies.append)
    if not replies:  # a handler here must answer at once
        replies.append(dispatcher.answer(frame, peer, Internal(f"{frame.name} did not answer at once")))
    rep.send_multipart(replies[0][1:])


def serve_router(router: zmq.Socket[bytes], dispatcher: Dispatcher, batch: int) -> int:
    """Serve up to `batch` waiting messages on a ROUTER socket; a reply that
    comes later (a Later) goes out on the same socket to the same peer.
    A reply to a peer that has gone is dropped by ZeroMQ. Returns how many
    were served."""

    def send(frames: list[bytes]) -> None:
        try:
            router.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the peer's queue is full: it is not reading its replies
            dispatcher.counters["replies_dropped"] += 1
            log.debug("reply dropped: %s", exc)

    served = 0
    while served < batch:
        try:
            frames, peer = recv_with_peer(router, zmq.NOBLOCK)
        except zmq.Again:
            break
        served += 1
        identity = frames[0]
        try:
            frame = wire.decode(frames)
            if frame.envelope != (identity,):
                raise wire.FrameError("routing frames before the delimiter")
            if frame.command != wire.Command.REQUEST:
                raise wire.FrameError(f"{frame.command.name} is not served on this socket")
        except wire.FrameError as exc:
            send(dispatcher.bad_frame(exc, (identity,)))
            continue
        dispatcher.handle(frame, peer, send)
    return served
