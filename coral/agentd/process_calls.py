"""The agent's questions to registered processes, never waited for.

Each process gets a DEALER socket of the agent's own (its REP answers in
order). A question is sent at once and answered later, through a callback:
with the process's reply, or UNAVAILABLE at its deadline. A process that
missed a deadline has everything then waiting on it answered UNAVAILABLE
and is not asked again until its breaker's cooldown has passed, so a stream
of questions about a hung process costs one deadline per cooldown.
Knows nothing of sessions (docs/protocol.md, "The agent never waits")."""

from __future__ import annotations

import collections
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
from google.protobuf.message import Message

from coral.agentd.registry import Registration
from coral.daemon import wire
from coral.daemon.errors import CoralError, Unavailable, error_from_code
from coral.daemon.liveness import Breaker
from coral.daemon.methods import METHODS
from coral.daemon.runtime import configure_socket
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)

PROCESS_TIMEOUT = 1.5  # each question's deadline
MAX_WAITING = 32  # questions waiting on one process

Answer = Callable[[Message | CoralError], None]


@dataclass
class _Question:
    method: str
    deadline: float
    answer: Answer


@dataclass
class _Process:
    """One process's socket and the questions waiting on it."""

    address: str
    pid: int
    service: str
    socket: zmq.Socket[bytes] | None = None
    waiting: dict[bytes, _Question] = field(default_factory=dict)  # by request id
    breaker: Breaker = field(default_factory=Breaker)


class ProcessCalls:
    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], max_message_bytes: int,
                 timeout: float = PROCESS_TIMEOUT) -> None:
        self.context = context
        self.max_message_bytes = max_message_bytes
        self.timeout = timeout
        self._processes: dict[str, _Process] = {}  # by address
        self._by_socket: dict[zmq.Socket[bytes], _Process] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self._closed = False

    def ask(self, reg: Registration, method: str, request: Message, answer: Answer, now: float) -> None:
        """Send `method` to the process; `answer` is called once, later (or
        now, if the process may not be asked)."""
        if self._closed:
            answer(Unavailable("the agent is stopping"))
            return
        proc = self._processes.get(reg.address)
        if proc is None:
            proc = self._processes[reg.address] = _Process(reg.address, reg.pid, reg.service)
        who = f"process {reg.pid} of service {reg.service!r}"
        if not proc.breaker.closed(now):
            self.counters["process_asks.refused"] += 1
            answer(Unavailable(f"{who} did not answer at {reg.address} "
                               f"(not asked again for {proc.breaker.open_until - now:.0f}s)"))
            return
        if len(proc.waiting) >= MAX_WAITING:
            self.counters["process_asks.refused"] += 1
            answer(Unavailable(f"{who} has {len(proc.waiting)} questions waiting already at {reg.address}"))
            return
        sock = self._socket(proc)
        request_id = secrets.token_bytes(8)
        try:
            sock.send_multipart(wire.encode_request(request_id, method, request), flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.counters["process_asks.unsent"] += 1
            answer(Unavailable(f"could not send {method} to {who} at {reg.address}: {exc}"))
            return
        self.counters["process_asks.sent"] += 1
        proc.waiting[request_id] = _Question(method, now + self.timeout, answer)

    def _socket(self, proc: _Process) -> zmq.Socket[bytes]:
        if proc.socket is None:
            s = self.context.socket(zmq.DEALER)
            configure_socket(s, self.max_message_bytes, MAX_WAITING * 2)
            s.connect(proc.address)
            proc.socket = s
            self._by_socket[s] = proc
        return proc.socket

    def sockets(self) -> list[zmq.Socket[bytes]]:
        """The sockets with questions waiting on them, for the agent's poller."""
        return [p.socket for p in self._processes.values() if p.waiting and p.socket is not None]

    @property
    def waiting(self) -> int:
        """Questions sent to processes and not answered yet."""
        return sum(len(p.waiting) for p in self._processes.values())

    def next_deadline(self) -> float | None:
        return min((q.deadline for p in self._processes.values() for q in p.waiting.values()), default=None)

    def on_readable(self, sock: zmq.Socket[bytes]) -> None:
        """Answer the questions whose replies have come; anything else (a
        late reply to a question already answered, a bad frame) is dropped."""
        proc = self._by_socket.get(sock)
        while proc is not None and proc.socket is sock:
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                frame = wire.decode(frames)
            except wire.FrameError as exc:
                self.counters["process_asks.bad_replies"] += 1
                log.debug("unreadable reply from %s: %s", proc.address, exc.reason)
                continue
            question = proc.waiting.pop(frame.request_id, None)
            if frame.command != wire.Command.REPLY or question is None:
                continue
            proc.breaker.answered()
            question.answer(self._result(question.method, frame))

    @staticmethod
    def _result(method: str, frame: wire.Frame) -> Message | CoralError:
        try:
            if frame.name == wire.STATUS_OK:
                return wire.parse_body(METHODS[method].response, frame.body)
            err = wire.parse_body(pb.Error, frame.body)
        except CoralError as exc:
            return CoralError(f"unreadable reply to {method}: {exc.message}")
        return error_from_code(err.code or frame.name, err.message, list(err.suggestions))

    def expire(self, now: float) -> int:
        """Processes with a question past its deadline: answer everything
        waiting on them UNAVAILABLE and open their breakers. Returns how
        many questions were answered so."""
        expired = 0
        for proc in list(self._processes.values()):
            if not any(now >= q.deadline for q in proc.waiting.values()):
                continue
            cooldown = proc.breaker.failed(now)
            methods = sorted({q.method for q in proc.waiting.values()})
            log.warning("process %d of service %r did not answer %s within %gs; not asked again for %gs",
                        proc.pid, proc.service, ", ".join(methods), self.timeout, cooldown)
            self.counters["process_asks.timed_out"] += len(proc.waiting)
            expired += len(proc.waiting)
            self._fail(proc, f"process {proc.pid} of service {proc.service!r} did not answer at {proc.address}")
        return expired

    def _fail(self, proc: _Process, why: str) -> None:
        """Answer every waiting question with `why` and drop the socket: what
        is still queued for the process goes, and a late reply cannot come."""
        waiting, proc.waiting = proc.waiting, {}
        if proc.socket is not None:
            del self._by_socket[proc.socket]
            proc.socket.close(linger=0)
            proc.socket = None
        for question in waiting.values():
            question.answer(Unavailable(why))

    def forget(self, address: str, why: str) -> None:
        """The registration at `address` is gone (or replaced): its waiting
        questions are answered UNAVAILABLE, and a new one is asked afresh."""
        proc = self._processes.pop(address, None)
        if proc is not None:
            self._fail(proc, why)

    def settle(self, timeout: float) -> None:
        """At shutdown only (the one wait here): up to `timeout` seconds for
        the questions still waiting, so the last disarms reach their processes."""
        end = time.monotonic() + timeout
        while self.sockets() and time.monotonic() < end:
            poller = zmq.Poller()
            for sock in self.sockets():
                poller.register(sock, zmq.POLLIN)
            for sock, _ in poller.poll(max(1, int(1000 * (end - time.monotonic())))):
                self.on_readable(sock)
            self.expire(time.monotonic())

    def close(self) -> None:
        self._closed = True
        processes, self._processes = self._processes, {}
        for proc in processes.values():
            self._fail(proc, "the agent is stopping")
