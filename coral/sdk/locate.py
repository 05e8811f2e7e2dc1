"""Where the SDK finds the agent: the one setting it needs before it can ask
the agent anything (everything else comes with the registration's reply).

``$CORAL_RUNTIME_DIR`` wins, as it does for the daemons; then
``init(runtime_dir=...)``; then ``[paths] runtime_dir`` of a file named by
the deprecated ``init(config_path=...)``, read on Python 3.11 or later only
(tomllib); then /run/coral, the daemons' default.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RUNTIME_DIR = "/run/coral"


class LocationError(Exception):
    """The runtime directory cannot be known: one line, naming why."""


@dataclass(frozen=True)
class Location:
    runtime_dir: Path

    @property
    def agent_endpoint(self) -> str:
        return f"ipc://{self.runtime_dir / 'agent.sock'}"

    @property
    def process_socket_dir(self) -> Path:
        return self.runtime_dir / "procs"


def locate(runtime_dir: str | None = None, config_path: str | None = None) -> Location:
    env = os.environ.get("CORAL_RUNTIME_DIR")
    if env:
        return Location(Path(env))
    if runtime_dir:
        return Location(Path(runtime_dir))
    if config_path:
        return Location(Path(runtime_dir_from_file(config_path)))
    return Location(Path(DEFAULT_RUNTIME_DIR))


def runtime_dir_from_file(path: str) -> str:
    """``[paths] runtime_dir`` of a coral.toml, nothing else of it."""
    if sys.version_info < (3, 11):
        raise LocationError(f"{path}: config_path needs Python 3.11 or later (tomllib); "
                            "pass runtime_dir= or set $CORAL_RUNTIME_DIR instead")
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise LocationError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise LocationError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise LocationError(f"{path}: cannot read: {exc.strerror}") from None
    paths = data.get("paths", {})
    value = paths.get("runtime_dir", DEFAULT_RUNTIME_DIR) if isinstance(paths, dict) else None
    if not isinstance(value, str) or not value:
        raise LocationError(f"{path}: [paths] runtime_dir: expected a non-empty string")
    return value
