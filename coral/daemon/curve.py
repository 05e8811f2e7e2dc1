"""CURVE on tcp:// links: key files, allow-lists, socket set-up, and the
ZAP decision the colony makes for each new connection (a pure function).

A key pair is two files made by ``coralctl keys generate NAME``:
``NAME.key`` (public, 0644) and ``NAME.key_secret`` (both keys, 0600). An
allow-list is a directory of ``NAME.key`` files; a peer admitted by one is
known by NAME ("key:NAME" in the audit log and in [access])."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth

from coral.daemon.config import Config, ConfigError

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks; fixed by ZAP (ZeroMQ RFC 27)
FRONTEND = "frontend"  # ZAP domains: which allow-list decides
BACKEND = "backend"
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PLAINTEXT = "Coral does not use plaintext TCP"


def is_tcp(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


def fingerprint(public_z85: bytes) -> str:
    """A short, stable name for a public key (shown for keys not in an allow-list)."""
    return hashlib.sha256(zmq.utils.z85.decode(public_z85)).hexdigest()[:16]


@dataclass(frozen=True)
class KeyPair:
    public: bytes
    secret: bytes


def _read(path: str, where: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        reason = "no such file" if not os.path.exists(path) else str(exc)
        raise ConfigError(f"{where} {path}: cannot read a CURVE key: {reason}") from None
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise ConfigError(f"{where} {path}: cannot read a CURVE key: not a 40-character Z85 key")
    return public, secret


def load_key_pair(path: str, where: str) -> KeyPair:
    public, secret = _read(path, where)
    if secret is None:
        raise ConfigError(f"{where} {path}: this is a public key; give the NAME.key_secret file")
    return KeyPair(public, secret)


def load_public_key(path: str, where: str) -> bytes:
    return _read(path, where)[0]


def write_key_pair(directory: Path, name: str) -> tuple[Path, Path, bytes]:
    """Write NAME.key (0644) and NAME.key_secret (0600); never overwrite."""
    if not KEY_NAME.match(name):
        raise ValueError(f"key name {name!r} must be 1 to 64 letters, digits, '.', '_' or '-' (not starting with one of those)")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    paths = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in paths:
        if path.exists():
            raise ValueError(f"{path} already exists; remove it or choose another name")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    texts = (
        f"#   Coral CURVE public key {name!r}, made {stamp}\n#   Give this file to the peers that admit it.\n"
        f'metadata\ncurve\n    public-key = "{public.decode()}"\n',
        f"#   Coral CURVE secret key {name!r}, made {stamp}\n#   Keep it on this host only, mode 0600.\n"
        f'metadata\ncurve\n    public-key = "{public.decode()}"\n    secret-key = "{secret.decode()}"\n',
    )
    for path, text, mode in zip(paths, texts, (0o644, 0o600), strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, mode)  # whatever the umask
    return paths[0], paths[1], public


class AllowList:
    """The NAME.key files of one directory, read again at every lookup so that
    adding or removing a file takes effect for the next connection."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def name_of(self, public_z85: bytes) -> str | None:
        try:
            files = sorted(self.directory.glob("*.key"))
        except OSError as exc:
            log.warning("cannot read the allow-list %s: %s", self.directory, exc)
            return None
        for path in files:
            if not KEY_NAME.match(path.stem):
                continue
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError):
                log.warning("ignoring %s: not a readable public key file", path)
                continue
            if public == public_z85:
                return path.stem
        return None


# ---------------------------------------------------------------- config


@dataclass(frozen=True)
class ServerKeys:
    """The colony's key pair and, per ZAP domain, the directory it admits."""

    keys: KeyPair
    allow: dict[str, AllowList] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientKeys:
    keys: KeyPair
    server_public: bytes


def _missing(source: str, endpoint_key: str, endpoint: str, missing: str, fix: str) -> ConfigError:
    return ConfigError(f"{source}: {endpoint_key} is {endpoint} but {missing} is not set; {PLAINTEXT} ({fix})")


def colony_keys(config: Config) -> ServerKeys | None:
    """The colony's CURVE set-up, or None when both endpoints are ipc."""
    c, source = config.colony, config.source
    needs = [
        (FRONTEND, config.colony_frontend, "client_keys_dir", c.client_keys_dir),
        (BACKEND, config.colony_backend, "agent_keys_dir", c.agent_keys_dir),
    ]
    needs = [n for n in needs if is_tcp(n[1])]
    if not needs:
        return None
    fix = "make it with: coralctl keys generate colony"
    for domain, endpoint, _, _ in needs:
        if not c.secret_key_file:
            raise _missing(source, f"[colony] {domain}_endpoint", endpoint, "[colony] secret_key_file", fix)
    keys = load_key_pair(c.secret_key_file, f"{source}: [colony] secret_key_file")
    allow = {}
    for domain, endpoint, dir_key, directory in needs:
        if not directory:
            raise _missing(
                source,
                f"[colony] {domain}_endpoint",
                endpoint,
                f"[colony] {dir_key}",
                "a directory of the public .key files it admits",
            )
        if not os.path.isdir(directory):
            raise ConfigError(f"{source}: [colony] {dir_key} {directory}: no such directory")
        allow[domain] = AllowList(Path(directory))
    return ServerKeys(keys, allow)


def agent_keys(config: Config) -> ClientKeys | None:
    endpoint = config.agent_colony_endpoint
    if not is_tcp(endpoint):
        return None
    return _client_keys(
        config, "agent", endpoint, "[agent] colony_endpoint", config.agent.key_file, config.agent.colony_public_key_file
    )


def client_keys(config: Config, endpoint: str, key_file: str = "", colony_key_file: str = "") -> ClientKeys | None:
    """coralctl's keys: flags first, then [client]."""
    if not is_tcp(endpoint):
        return None
    return _client_keys(
        config,
        "client",
        endpoint,
        "the colony endpoint",
        key_file or config.client.key_file,
        colony_key_file or config.client.colony_public_key_file,
    )


def _client_keys(
    config: Config, section: str, endpoint: str, endpoint_key: str, key_file: str, colony_key_file: str
) -> ClientKeys:
    source = config.source
    if not key_file:
        raise _missing(
            source,
            endpoint_key,
            endpoint,
            f"[{section}] key_file",
            f"make a key pair with: coralctl keys generate {'NAME' if section == 'client' else 'AGENT'}",
        )
    if not colony_key_file:
        raise _missing(source, endpoint_key, endpoint, f"[{section}] colony_public_key_file", "copy the colony's colony.key here")
    keys = load_key_pair(key_file, f"{source}: [{section}] key_file")
    server = load_public_key(colony_key_file, f"{source}: [{section}] colony_public_key_file")
    return ClientKeys(keys, server)


# --------------------------------------------------------------- sockets


def serve_curve(sock: zmq.Socket[bytes], keys: ServerKeys, domain: str, heartbeat: float) -> None:
    """Make a socket a CURVE server whose peers the ZAP handler admits by
    ``domain``; ZMTP heartbeats drop connections that went silent."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.keys.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.keys.public)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    set_heartbeats(sock, heartbeat)


def connect_curve(sock: zmq.Socket[bytes], keys: ClientKeys) -> None:
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.keys.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.keys.public)
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)


def set_heartbeats(sock: zmq.Socket[bytes], interval: float) -> None:
    """ZMTP PING every interval; a connection silent for 3 intervals is closed
    (on tcp, a cut cable otherwise leaves it open for hours)."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(interval * 1000)))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(3 * interval * 1000)))


HANDSHAKE_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass
class HandshakeWatch:
    """What a CURVE client's socket-monitor events say about its handshake:
    "ok", "refused" (the ZAP handler said no to our key), "closed" (the
    server dropped us mid-handshake: it could not read our hello, i.e. we
    hold the wrong server key), or "" (nothing decided yet)."""

    tcp_connected: bool = False

    def see(self, event: int) -> str:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return "ok"
        if event == zmq.EVENT_CONNECTED:
            self.tcp_connected = True
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return "refused"
        elif self.tcp_connected and event in (
            zmq.EVENT_DISCONNECTED,
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        ):
            return "closed"
        return ""


def handshake_failure(code: int) -> str:
    """Why the colony's side of a tcp handshake failed, from a
    HANDSHAKE_FAILED_PROTOCOL event's value (these never reach ZAP)."""
    if code == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "a connection without CURVE (plaintext) was refused"
    if code == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return "a CURVE hello that does not open with the colony's key was refused (the peer holds another colony key)"
    return f"a malformed handshake was refused (ZMTP protocol error {code:#x})"


# ------------------------------------------------------------------- ZAP


@dataclass(frozen=True)
class ZapRequest:
    request_id: bytes
    domain: str
    address: str
    mechanism: str
    public_key: bytes  # z85; empty unless CURVE


@dataclass(frozen=True)
class ZapAnswer:
    status: str  # "200" admitted, "400" refused
    text: str
    user_id: str  # the key's name when admitted
    who: str  # for the audit log: key:NAME or key:FINGERPRINT


def parse_zap(frames: list[bytes]) -> ZapRequest:
    """A ZAP 1.0 request: version, id, domain, address, identity, mechanism, credentials."""
    if len(frames) < 6 or frames[0] != b"1.0":
        raise ValueError("not a ZAP 1.0 request")
    mechanism = frames[5].decode("ascii", "replace")
    public = b""
    if mechanism == "CURVE":
        if len(frames) < 7 or len(frames[6]) != 32:
            raise ValueError("CURVE request without a 32-byte key")
        public = zmq.utils.z85.encode(frames[6])
    return ZapRequest(frames[1], frames[2].decode("utf-8", "replace"), frames[3].decode("utf-8", "replace"), mechanism, public)


def decide(request: ZapRequest, allow: dict[str, AllowList]) -> ZapAnswer:
    """Admit a CURVE peer whose key is in its domain's allow-list; nothing else."""
    allowlist = allow.get(request.domain)
    if request.mechanism != "CURVE" or allowlist is None:
        return ZapAnswer("400", f"{request.mechanism} is not admitted in domain {request.domain!r}", "", "unknown")
    who = f"key:{fingerprint(request.public_key)}"
    name = allowlist.name_of(request.public_key)
    if name is None:
        return ZapAnswer("400", f"key {fingerprint(request.public_key)} is not in {allowlist.directory}", "", who)
    return ZapAnswer("200", "OK", name, f"key:{name}")


def zap_reply(request_id: bytes, answer: ZapAnswer) -> list[bytes]:
    return [b"1.0", request_id, answer.status.encode(), answer.text.encode()[:255], answer.user_id.encode(), b""]


@dataclass
class DenialThrottle:
    """A refused peer reconnects by itself every few hundred milliseconds:
    audit the first refusal of a (domain, key, host) and then at most one
    per ``window`` seconds; the rest are only counted."""

    window: float = 60.0
    _last: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def should_audit(self, domain: str, who: str, address: str, now: float) -> bool:
        key = (domain, who, address)
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            return False
        if len(self._last) > 10_000:  # bounded, whatever the peers do
            self._last.clear()
        self._last[key] = now
        return True
