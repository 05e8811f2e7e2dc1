"""Per-uid caps on the connections to a daemon's ipc socket.

ZeroMQ accepts every connection before any code of ours runs, and its ipc
listener aborts the process when accept() fails with EMFILE. So the count
is kept where it can be: the socket's monitor reports each accepted and
each closed descriptor; the uid comes from SO_PEERCRED on that descriptor,
and a connection past its uid's cap is shut down at once (libzmq then
closes it as it would any peer that hung up). Root and the exempt uids are
counted, never cut."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
REPORT_EVERY = 60.0  # seconds between two reports of one uid's cut connections
BATCH = 1000  # monitor events read in one call


def peer_uid(fd: int, path: str) -> tuple[int, int] | None:
    """(uid, pid) of the peer on descriptor `fd`, if it is a connection
    accepted on the socket bound at `path` (the descriptor may have been
    closed, or reused for something else, by the time the event is read)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            if s.family != socket.AF_UNIX or s.getsockname() != path:
                return None
            pid, uid, _ = CRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, CRED.size))
            return uid, pid
    except OSError:
        return None


def cut(fd: int) -> None:
    """Shut the connection down; libzmq sees its peer hang up and closes it."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as s:
        s.shutdown(socket.SHUT_RDWR)


@dataclass
class _Uid:
    open: int = 0
    cut: int = 0  # since the last report
    reported: float = float("-inf")


@dataclass
class ConnectionCap:
    """Counts one ipc socket's connections per uid; cuts those past `cap`.
    `report(uid, pid, count)` is told of cut connections at most once per
    uid every REPORT_EVERY seconds, with how many since the last time."""

    monitor: zmq.Socket[bytes]
    path: str
    cap: int
    exempt: frozenset[int] = frozenset({0})
    report: Callable[[int, int, int], None] = lambda uid, pid, count: None
    uids: dict[int, _Uid] = field(default_factory=dict)
    by_fd: dict[int, int] = field(default_factory=dict)  # descriptor -> uid
    total_cut: int = 0

    @classmethod
    def watch(cls, sock: zmq.Socket[bytes], endpoint: str, cap: int, exempt: frozenset[int] = frozenset({0}),
              report: Callable[[int, int, int], None] | None = None) -> ConnectionCap | None:
        """A cap on an ipc endpoint (None on tcp, where peers are keys)."""
        if not endpoint.startswith("ipc://"):
            return None
        monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        cap_ = cls(monitor, endpoint.removeprefix("ipc://"), cap, exempt | {0})
        if report is not None:
            cap_.report = report
        return cap_

    def held(self, uid: int) -> int:
        state = self.uids.get(uid)
        return state.open if state else 0

    def on_readable(self, now: float) -> None:
        for _ in range(BATCH):
            try:
                event = recv_monitor_message(self.monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._closed(fd)  # a descriptor reused before its close was read
                self._accepted(fd, now)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._closed(fd)

    def _accepted(self, fd: int, now: float) -> None:
        peer = peer_uid(fd, self.path)
        if peer is None:
            return
        uid, pid = peer
        state = self.uids.setdefault(uid, _Uid())
        state.open += 1
        self.by_fd[fd] = uid
        if state.open <= self.cap or uid in self.exempt:
            return
        cut(fd)
        state.cut += 1
        self.total_cut += 1
        if now - state.reported >= REPORT_EVERY:
            self.report(uid, pid, state.cut)
            state.cut, state.reported = 0, now

    def _closed(self, fd: int) -> None:
        uid = self.by_fd.pop(fd, None)
        if uid is None:
            return
        state = self.uids[uid]
        state.open -= 1
        if not state.open and not state.cut:
            del self.uids[uid]

    def close(self, sock: zmq.Socket[bytes]) -> None:
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()
        self.monitor.close(linger=0)


def uids_of(users: tuple[str, ...]) -> frozenset[int]:
    """The uids of user names and numbers (names not on this host are skipped)."""
    out = set()
    for user in users:
        if user.isdigit():
            out.add(int(user))
            continue
        with contextlib.suppress(KeyError):
            out.add(pwd.getpwnam(user).pw_uid)
    return frozenset(out)
