"""Configuration: etc/coral.toml (or $CORAL_CONFIG) into frozen dataclasses.

Every key is optional. An unknown key or a value of the wrong type is a
``ConfigError`` whose message names the file, the key and the expected type.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coral.daemon.errors import InvalidArgument
from coral.daemon.retention import parse_age
from coral.redact import DEFAULT_NAMES

DEFAULT_CONFIG_PATH = "/etc/coral/coral.toml"


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class PathsConfig:
    runtime_dir: str = "/run/coral"
    state_dir: str = "/var/lib/coral"


@dataclass(frozen=True)
class LimitsConfig:
    max_message_bytes: int = 4 * 1024 * 1024
    request_timeout: float = 10.0
    max_connections_per_uid: int = 2048


@dataclass(frozen=True)
class SessionsConfig:
    default_duration: int = 60
    max_duration: int = 600
    max_sessions_per_agent: int = 64
    max_events_per_session: int = 100_000
    ring_buffer_pages: int = 4096
    string_bytes: int = 64
    # Probed calls open at once on one thread or goroutine that are tracked
    # (deeper entries are counted as too_deep), and the frames beyond each
    # thread's first 8 that all threads together may hold (docs/native-targets.md).
    max_call_depth: int = 64
    deep_frames: int = 65536
    cpu_budget_percent: float = 10.0  # of one CPU; docs/benchmarks.md says why 10

    @property
    def cpu_budget_ns(self) -> int:
        """Probe time a session may cost per second, all CPUs together (0: no limit)."""
        return int(self.cpu_budget_percent * 10_000_000)

    def session_duration_ms(self, requested_ms: int) -> int:
        """0 means the default; more than the maximum is refused, never shortened."""
        if requested_ms == 0:
            return self.default_duration * 1000
        if requested_ms > self.max_duration * 1000:
            raise InvalidArgument(
                f"duration {requested_ms / 1000:g}s exceeds the maximum of {self.max_duration}s; "
                f"ask for {self.max_duration}s or less"
            )
        return requested_ms


@dataclass(frozen=True)
class AgentConfig:
    id: str = ""
    colony_endpoint: str = ""
    heartbeat_interval: float = 1.0
    heartbeat_liveness: int = 5
    poll_interval: float = 0.05
    drain_interval: float = 0.01
    ingest_cpu_percent: float = 50.0
    flush_interval: float = 0.2
    # Over tcp:// (CURVE): this agent's secret key file and the colony's public key file.
    key_file: str = ""
    colony_public_key_file: str = ""
    retention: str = "7d"
    purge_interval: float = 60.0
    max_registrations_per_uid: int = 1000
    # /metrics for Prometheus: HOST:PORT, or a bare PORT on 127.0.0.1; "" serves none (docs/configuration.md).
    metrics_listen: str = ""


@dataclass(frozen=True)
class ColonyConfig:
    frontend_endpoint: str = ""
    backend_endpoint: str = ""
    heartbeat_interval: float = 1.0
    heartbeat_liveness: int = 5
    # Over tcp:// (CURVE): the colony's secret key file, and the directories of
    # the public keys it admits on the backend (agents) and frontend (clients).
    secret_key_file: str = ""
    agent_keys_dir: str = ""
    client_keys_dir: str = ""
    pull_interval: float = 0.5
    retention: str = "7d"
    purge_interval: float = 60.0
    # On ipc, the users (names or uids) whose connections may speak for an agent.
    agent_users: tuple[str, ...] = ("root",)
    metrics_listen: str = ""  # as [agent] metrics_listen


@dataclass(frozen=True)
class ClientConfig:
    # coralctl over tcp:// (CURVE): its secret key file and the colony's public key file.
    key_file: str = ""
    colony_public_key_file: str = ""


@dataclass(frozen=True)
class SdkConfig:
    # Names whose values are shown as <redacted> (the rule: coral/redact.py);
    # secret-looking values are redacted whatever their name.
    redact_patterns: tuple[str, ...] = DEFAULT_NAMES


@dataclass(frozen=True)
class AccessConfig:
    # Unix user names, @group names and key:NAME (a CURVE key on tcp); root may
    # always. See coral/daemon/access.py.
    list: tuple[str, ...] = ("@coral",)
    attach: tuple[str, ...] = ("@coral",)
    capture: tuple[str, ...] = ("@coral",)
    profile: tuple[str, ...] = ("@coral",)


@dataclass(frozen=True)
class McpConfig:
    # coral-mcp (docs/mcp.md). Capturing values through it needs this grant on
    # top of the colony's [access] capture right of the user it runs as.
    allow_capture: bool = False
    # Longest session coral-mcp asks for, in seconds (and never over [sessions] max_duration).
    max_duration: float = 30.0


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    colony: ColonyConfig = field(default_factory=ColonyConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    sdk: SdkConfig = field(default_factory=SdkConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    mcp: McpConfig = field(default_factory=McpConfig)
    # [services]: service name -> who may register it (user names, uids, @groups)
    services: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = "(defaults)"

    # Derived locations; environment variables win over the file.
    @property
    def runtime_dir(self) -> Path:
        return Path(os.environ.get("CORAL_RUNTIME_DIR") or self.paths.runtime_dir)

    @property
    def state_dir(self) -> Path:
        return Path(os.environ.get("CORAL_STATE_DIR") or self.paths.state_dir)

    @property
    def agent_endpoint(self) -> str:
        return f"ipc://{self.runtime_dir / 'agent.sock'}"

    # Each daemon's own directories inside the shared ones: the colony runs
    # as its own user, the agent as root, and a directory two systemd units
    # declare is handed back and forth between their users at every start
    # (docs/security.md, "Directories"). runtime_dir itself is the agent's.
    @property
    def colony_runtime_dir(self) -> Path:
        return self.runtime_dir / "colony"

    @property
    def agent_state_dir(self) -> Path:
        return self.state_dir / "agent"

    @property
    def colony_state_dir(self) -> Path:
        return self.state_dir / "colony"

    @property
    def colony_frontend(self) -> str:
        return self.colony.frontend_endpoint or f"ipc://{self.colony_runtime_dir / 'colony.sock'}"

    @property
    def colony_backend(self) -> str:
        return self.colony.backend_endpoint or f"ipc://{self.colony_runtime_dir / 'colony-backend.sock'}"

    @property
    def agent_colony_endpoint(self) -> str:
        return self.agent.colony_endpoint or self.colony_backend

    @property
    def process_socket_dir(self) -> Path:
        return self.runtime_dir / "procs"


_SECTION_TYPES = {
    "paths": PathsConfig,
    "limits": LimitsConfig,
    "sessions": SessionsConfig,
    "agent": AgentConfig,
    "colony": ColonyConfig,
    "client": ClientConfig,
    "sdk": SdkConfig,
    "access": AccessConfig,
    "mcp": McpConfig,
}
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_POSITIVE = {
    "max_message_bytes",
    "max_connections_per_uid",
    "request_timeout",
    "default_duration",
    "max_duration",
    "max_sessions_per_agent",
    "max_events_per_session",
    "max_registrations_per_uid",
    "ring_buffer_pages",
    "string_bytes",
    "max_call_depth",
    "deep_frames",
    "heartbeat_interval",
    "heartbeat_liveness",
    "poll_interval",
    "drain_interval",
    "flush_interval",
    "pull_interval",
    "purge_interval",
}


def _check_value(source: str, section: str, key: str, expected: type, value: Any) -> Any:
    where = f"{source}: [{section}] {key}"
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{where}: expected {_TYPE_NAMES[expected]}, got {value!r}")
    if key in _POSITIVE and value <= 0:
        raise ConfigError(f"{where}: must be greater than 0, got {value!r}")
    if key == "max_message_bytes" and value < 65536:
        raise ConfigError(f"{where}: must be at least 65536 (64 KiB), got {value!r}")
    if key == "string_bytes" and not 8 <= value <= 1024:
        raise ConfigError(f"{where}: must be between 8 and 1024, got {value!r}")
    if key in ("cpu_budget_percent", "ingest_cpu_percent") and not 0 <= value <= 100:
        raise ConfigError(f"{where}: must be between 0 and 100, got {value!r}")
    if key == "max_call_depth" and not 8 <= value <= 1024:
        raise ConfigError(f"{where}: must be between 8 and 1024, got {value!r}")
    if key == "deep_frames" and not 1024 <= value <= 1 << 20:
        raise ConfigError(f"{where}: must be between 1024 and 1048576, got {value!r}")
    if key == "ring_buffer_pages" and value & (value - 1):
        raise ConfigError(f"{where}: must be a power of two, got {value!r}")
    if key == "metrics_listen" and value:
        try:
            metrics_address(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if key == "retention":
        try:
            parse_age(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return value


def metrics_address(listen: str) -> tuple[str, int]:
    """[agent] / [colony] metrics_listen as (host, port): HOST:PORT with HOST
    an IP address ([...] for IPv6), or a bare PORT on 127.0.0.1 (the
    endpoint has no authentication: loopback unless the operator says
    otherwise). Raises ValueError saying what is wrong."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected PORT or HOST:PORT with HOST an IP address (e.g. 9464, 127.0.0.1:9464, "
                         f"[::1]:9464), got {listen!r}") from None
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port must be a number from 1 to 65535, got {listen!r}")
    if address.version == 6 and sep and not listen.startswith("["):
        raise ValueError(f"write an IPv6 address in brackets, as [::1]:9464, got {listen!r}")
    return str(address), int(port)


def _services(source: str, table: Any) -> dict[str, tuple[str, ...]]:
    """[services]: each key a service name, each value who may register it."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [services] must be a table")
    owners = {}
    for service, who in table.items():
        if not 1 <= len(service) <= 200 or not service.isprintable() or "/" in service:
            raise ConfigError(f"{source}: [services] {service!r}: a service name is 1 to 200 printable characters without '/'")
        if not isinstance(who, list) or not all(isinstance(w, str) and w for w in who):
            raise ConfigError(f"{source}: [services] {service}: expected a list of user names, uids or @groups, got {who!r}")
        owners[service] = tuple(who)
    return owners


def parse_config(data: dict[str, Any], source: str) -> Config:
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name == "services":
            sections[name] = _services(source, table)
            continue
        cls = _SECTION_TYPES.get(name)
        if cls is None:
            raise ConfigError(f"{source}: unknown section [{name}] (known: {', '.join([*_SECTION_TYPES, 'services'])})")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {}
        for key, value in table.items():
            if key not in types:
                raise ConfigError(f"{source}: unknown key [{name}] {key} (known: {', '.join(types)})")
            if str(types[key]) == "tuple[str, ...]":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{source}: [{name}] {key}: expected a list of strings, got {value!r}")
                values[key] = tuple(value)
                continue
            expected = {"int": int, "float": float, "str": str, "bool": bool}[str(types[key])]
            values[key] = _check_value(source, name, key, expected, value)
        sections[name] = cls(**values)
    config = Config(**sections, source=source)
    if config.sessions.default_duration > config.sessions.max_duration:
        raise ConfigError(f"{source}: [sessions] default_duration exceeds max_duration")
    for section, key in (("colony", "frontend_endpoint"), ("colony", "backend_endpoint"), ("agent", "colony_endpoint")):
        endpoint = getattr(getattr(config, section), key)
        if endpoint and not endpoint.startswith(("ipc://", "tcp://")):
            raise ConfigError(f"{source}: [{section}] {key}: only ipc:// and tcp:// (with CURVE) are supported, got {endpoint!r}")
    return config


def load_config(path: str | None = None) -> Config:
    """Load $CORAL_CONFIG, or the given path, or /etc/coral/coral.toml if it
    exists; otherwise the defaults."""
    explicit = path or os.environ.get("CORAL_CONFIG")
    chosen = explicit or DEFAULT_CONFIG_PATH
    try:
        with open(chosen, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{chosen}: no such configuration file") from None
        return Config()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{chosen}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read: {exc.strerror}") from None
    return parse_config(data, chosen)
