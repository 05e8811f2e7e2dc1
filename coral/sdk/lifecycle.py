"""The SDK's lifecycle in a service process: start (``init``), stop
(``shutdown``, and at exit), and fork.

``init`` only starts a daemon thread: ZeroMQ and protobuf are loaded
there, so the service's start-up does not wait for them and never
blocks on the network. Everything the thread does is in coral.sdk.server.

Fork: a child must not touch its parent's ZeroMQ context or sockets (their
I/O threads did not survive the fork). The child drops them unclosed,
disarms what the parent had armed (the agent armed the parent's pid, not
the child's), and starts its own SDK thread: a new socket at
procs/<child pid>.sock and a registration of its own. So every worker of a
pre-forking server (gunicorn, multiprocessing) can be debugged.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import sys
import threading
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coral.sdk.arming import ArmRegistry

log = logging.getLogger(__name__)

STOP_TIMEOUT = 2.0


class Sdk:
    """One process's SDK: its thread, socket address and registration state."""

    def __init__(self, service: str, config_path: str | None, runtime_dir: str | None = None) -> None:
        self.service = service
        self.config_path = config_path
        self.runtime_dir = runtime_dir
        self.pid = os.getpid()
        self.address = ""
        self.stopping = False
        self._bound = threading.Event()
        self._registered = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="coral-sdk", daemon=True)

    def __repr__(self) -> str:
        return f"<coral.sdk.Sdk service={self.service!r} pid={self.pid} address={self.address!r}>"

    @property
    def registered(self) -> bool:
        """True while the agent knows this process (set and cleared by the SDK thread)."""
        return self._registered.is_set()

    @registered.setter
    def registered(self, value: bool) -> None:
        if value:
            self._registered.set()
        else:
            self._registered.clear()

    def wait_registered(self, timeout: float | None = None) -> bool:
        """True once the agent has this process's registration: from then on
        a session can arm its functions. False if ``timeout`` passed first."""
        return self._registered.wait(timeout)

    @property
    def wake_fd(self) -> int:
        return self._wake_r

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            from coral.sdk import server  # zmq + protobuf: loaded on this thread, not the caller's

            server.run(self)
        except Exception:
            log.exception("coral SDK thread failed; live debugging is off in this process")
        finally:
            self._bound.set()  # nobody waits forever on a thread that is gone

    def bound(self, address: str) -> None:
        self.address = address
        self._bound.set()

    def wait_bound(self, timeout: float | None = None) -> bool:
        """True once the process socket is listening (``address`` is set)."""
        return self._bound.wait(timeout) and bool(self.address)

    def wait_for_wake(self, timeout: float) -> None:
        select.select([self._wake_r], [], [], timeout)
        self.drain_wake()

    def drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 64):
                pass

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the thread to unregister and close, and wait for it (bounded:
        an agent that stopped answering must not hold up the exit)."""
        self.stopping = True
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is already pending
            os.write(self._wake_w, b"x")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.debug("coral SDK thread still busy at stop; leaving it")
        else:
            self.close_fds()

    def close_fds(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _arms() -> ArmRegistry | None:
    """The arm registry if anything loaded it: arming (and its imports) is
    left to the SDK thread, so init() stays quick, and fork hooks never import."""
    module = sys.modules.get("coral.sdk.arming")
    arms: ArmRegistry | None = getattr(module, "ARMS", None)
    return arms


_lock = threading.Lock()
_current: Sdk | None = None
_hooks_installed = False


def init(service: str, *, runtime_dir: str | None = None, config_path: str | None = None) -> Sdk:
    """Opt this process in to Coral live debugging as ``service``.

    Returns at once: a background thread binds the process socket and
    registers with the local agent (retrying quietly if there is none).
    Calling it again returns the running SDK.

    ``runtime_dir`` is the agent's runtime directory (``$CORAL_RUNTIME_DIR``
    wins; default /run/coral). ``config_path`` is deprecated: only its
    ``[paths] runtime_dir`` is read, and only on Python 3.11 or later."""
    if not isinstance(service, str) or not service.strip():
        raise ValueError("coral.sdk.init: service must be a non-empty name")
    if config_path is not None:
        warnings.warn("coral.sdk.init(config_path=...) is deprecated: the SDK takes its settings from the agent; "
                      "pass runtime_dir= or set $CORAL_RUNTIME_DIR", DeprecationWarning, stacklevel=2)
    global _current
    with _lock:
        _install_hooks()
        if _current is not None and _current.pid == os.getpid():
            if _current.service != service:
                log.warning("coral.sdk.init(%r) ignored: already running as service %r", service, _current.service)
            return _current
        _current = Sdk(service, config_path, runtime_dir)
        _current.start()
        return _current


def current() -> Sdk | None:
    return _current


def shutdown(timeout: float = STOP_TIMEOUT) -> None:
    """Unregister, close the socket and disarm everything. Safe to call
    more than once; ``init`` may be called again afterwards."""
    global _current
    with _lock:
        sdk, _current = _current, None
    if sdk is not None and sdk.pid == os.getpid():
        sdk.stop(timeout)
    arms = _arms()
    if arms is not None:
        arms.disarm_all()


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    atexit.register(shutdown)
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
    _hooks_installed = True


_fork_arms: ArmRegistry | None = None  # the registry whose lock is held across a fork


def _before_fork() -> None:
    # held across fork so the child never inherits them locked by a thread that is gone
    global _fork_arms
    _lock.acquire()
    _fork_arms = _arms()
    if _fork_arms is not None:
        _fork_arms.lock.acquire()


def _after_fork_in_parent() -> None:
    if _fork_arms is not None:
        _fork_arms.lock.release()
    _lock.release()


def _after_fork_in_child() -> None:
    global _current
    if _fork_arms is not None:
        _fork_arms.lock.release()
    _lock.release()
    parent, _current = _current, None
    if parent is None or parent.stopping:
        return
    parent.close_fds()  # its ZeroMQ objects are dropped unclosed: their I/O threads are not in this process
    disarmed = _fork_arms.disarm_all() if _fork_arms is not None else 0
    if disarmed:
        log.debug("forked child %d: disarmed %d functions armed for the parent", os.getpid(), disarmed)
    _current = Sdk(parent.service, parent.config_path, parent.runtime_dir)
    _current.start()
