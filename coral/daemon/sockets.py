"""ipc sockets with the right permissions, and the options every Coral
socket sets: shared by the daemons, coral-run and the SDK (which ships this
module in its own distribution, so it imports only pyzmq and the stdlib)."""

from __future__ import annotations

import contextlib
import grp
import os
import secrets
import stat
from pathlib import Path

import zmq

SOCKET_GROUP = "coral"


def _coral_gid() -> int | None:
    try:
        return grp.getgrnam(SOCKET_GROUP).gr_gid
    except KeyError:
        return None


def give_to_coral_group(path: Path) -> None:
    """Group `coral` for a file this process made: set by root, and by any
    process that is in the coral group itself (no capability needed)."""
    gid = _coral_gid()
    if gid is not None and (gid == os.getegid() or gid in os.getgroups()):
        os.chown(path, -1, gid)
    elif gid is not None and os.geteuid() == 0:
        os.chown(path, 0, gid)


# procs/: root and group coral only (no one else can put a file there), and
# sticky, so that only a socket's owner, or the directory's (the agent),
# removes it.
PROCESS_DIR_MODE = 0o1770


def ensure_process_dir(path: Path) -> None:
    """procs/, made by the agent (or by the first registrant, if it is first)."""
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # not ours: use it as it is
        os.chmod(path, PROCESS_DIR_MODE)
        give_to_coral_group(path)


def bind_process_socket(sock: zmq.Socket[bytes], directory: Path, pid: int) -> str:
    """Bind procs/PID.sock and return its address. A file left there by a
    process of another user (a reused pid; the sticky bit keeps it) is not
    ours to remove: then PID-RANDOM.sock, since the agent learns the address
    from the registration anyway."""
    address = f"ipc://{directory / f'{pid}.sock'}"
    try:
        bind_socket(sock, address)
    except PermissionError:
        address = f"ipc://{directory / f'{pid}-{secrets.token_hex(4)}.sock'}"
        bind_socket(sock, address)
    return address


def remove_process_socket(directory: Path, address: str, owner: int | None = None) -> bool:
    """Remove the socket of a process that is gone: only a socket in procs/
    (never a path elsewhere), and with `owner`, only one that uid owns (a
    registrant may name another's socket; its exit must not remove that)."""
    path = Path(address.removeprefix("ipc://"))
    if not address.startswith("ipc://") or path.parent != directory:
        return False
    try:
        st = path.lstat()
        if not stat.S_ISSOCK(st.st_mode) or (owner is not None and st.st_uid != owner):
            return False
        path.unlink()
    except OSError:
        return False
    return True


def bind_socket(sock: zmq.Socket[bytes], endpoint: str) -> None:
    """Bind; for ipc, replace a stale socket file (the daemon lock proves no
    one else owns it) and admit only the owner and the coral group.

    The group is set by root, and by any process that is in the coral group
    itself (no capability needed for that): a service's socket then admits
    an agent that holds the group, without CAP_DAC_OVERRIDE."""
    if not endpoint.startswith("ipc://"):
        sock.bind(endpoint)
        return
    path = Path(endpoint[len("ipc://") :])
    path.unlink(missing_ok=True)
    sock.bind(endpoint)
    give_to_coral_group(path)
    os.chmod(path, 0o660)


def unlink_ipc(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        Path(endpoint[len("ipc://") :]).unlink(missing_ok=True)


# A connection that has not finished ZeroMQ's greeting (and CURVE's, on
# tcp) in this time is closed: idle sockets cannot pile up (libzmq: 30 s).
HANDSHAKE_MS = 5000


def configure_socket(sock: zmq.Socket[bytes], max_message_bytes: int, send_queue: int | None = None) -> None:
    """Options of a daemon's socket; call it before bind or connect. libzmq
    copies a socket's options into each listener and connection as that is
    made, so a queue size (SNDHWM) set after bind never reaches a peer."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
    if send_queue is not None:
        sock.setsockopt(zmq.SNDHWM, send_queue)
