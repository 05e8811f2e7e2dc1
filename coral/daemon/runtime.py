"""What every Coral daemon shares: logging, sd_notify, signals, the lock
that keeps two copies apart, and ipc sockets with the right permissions."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Protocol

import sdnotify

from coral.daemon.config import Config, ConfigError, load_config

# The ipc socket helpers moved to coral.daemon.sockets (the SDK's distribution
# ships that module, not this one, which needs sdnotify and the config); the
# daemons' imports of them from here keep working.
from coral.daemon.sockets import HANDSHAKE_MS as HANDSHAKE_MS
from coral.daemon.sockets import PROCESS_DIR_MODE as PROCESS_DIR_MODE
from coral.daemon.sockets import SOCKET_GROUP as SOCKET_GROUP
from coral.daemon.sockets import bind_process_socket as bind_process_socket
from coral.daemon.sockets import bind_socket as bind_socket
from coral.daemon.sockets import configure_socket as configure_socket
from coral.daemon.sockets import ensure_process_dir as ensure_process_dir
from coral.daemon.sockets import give_to_coral_group as give_to_coral_group
from coral.daemon.sockets import remove_process_socket as remove_process_socket
from coral.daemon.sockets import unlink_ipc as unlink_ipc

log = logging.getLogger(__name__)

def setup_logging(verbose: bool = False) -> None:
    """Plain lines on stderr: the journal adds timestamps and the unit."""
    level = logging.DEBUG if verbose or os.environ.get("CORAL_DEBUG") else logging.INFO
    logging.basicConfig(stream=sys.stderr, level=level, format="%(levelname)s %(name)s: %(message)s")


class Notifier:
    """sd_notify: READY, STATUS, WATCHDOG (at half the interval systemd asks
    for), STOPPING. A no-op when NOTIFY_SOCKET is unset."""

    def __init__(self) -> None:
        self._sd = sdnotify.SystemdNotifier()
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else 0.0
        self._last_watchdog = 0.0

    def send(self, state: str) -> None:
        self._sd.notify(state)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self, now: float) -> None:
        if self.watchdog_interval and now - self._last_watchdog >= self.watchdog_interval:
            self.send("WATCHDOG=1")
            self._last_watchdog = now


class ShutdownSignals:
    """SIGTERM/SIGINT set ``requested``; the main loop drains and exits. A
    second signal while draining exits at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            os._exit(1)
        self.requested = True
        self.signal_name = signal.Signals(signum).name


class DaemonLock:
    """An flock on <its runtime dir>/<name>.lock: a second copy of a daemon
    with the same runtime directory refuses to start instead of stealing
    sockets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "?"
            raise RuntimeError(f"another instance (pid {holder}) holds {self.path}") from None
        try:
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder released and removed it between our open and flock: try again
            os.close(fd)
            return self.acquire()
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def ensure_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # not ours to change: use as is
        os.chmod(path, mode)


def raise_descriptor_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit. libzmq's ipc listener aborts
    the process when accept() fails with EMFILE, so a daemon must never run
    out: at the usual soft limit of 1024, a thousand idle connections did it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        logging.getLogger(__name__).info("file descriptors: soft limit raised from %d to %d", soft, hard)


class Server(Protocol):
    def run(self, signals: ShutdownSignals, notifier: Notifier) -> None: ...


def run_daemon(argv: list[str] | None, name: str, description: str, lock_name: str,
               dirs: Callable[[Config], list[tuple[Path, int]]], check: Callable[[], None],
               make_server: Callable[[Config], Server]) -> int:
    """A daemon's whole life: arguments, logging, config, directories, the
    lock, signals, the server's run, and one-line fatal errors (exit 1),
    with the traceback in the log at debug level. The lock file goes in
    the first of `dirs`, the daemon's own runtime directory."""
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("--config", help="configuration file (default: $CORAL_CONFIG or /etc/coral/coral.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    raise_descriptor_limit()
    try:
        config = load_config(args.config)
        check()
        lock = DaemonLock(dirs(config)[0][0] / lock_name)
        for path, mode in dirs(config):
            ensure_dir(path, mode)
        lock.acquire()
    except (ConfigError, RuntimeError, OSError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    signals = ShutdownSignals()
    signals.install()
    try:
        make_server(config).run(signals, Notifier())
    except ConfigError as exc:  # found while setting up (e.g. a CURVE key file)
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # BCC and DuckDB raise plain exceptions too
        log.error("fatal: %s", exc)
        log.debug("traceback", exc_info=True)
        return 1
    finally:
        lock.release()
    return 0
