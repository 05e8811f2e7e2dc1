"""What the SDK redacts, and where that comes from.

Defaults live here. The ``[sdk]`` table of coral.toml (``redact_patterns``)
replaces them once coral.daemon.config parses that table into
``Config.sdk``; until then the defaults apply. Values that look like card
numbers (13-19 digits, Luhn-valid) are redacted whatever the patterns say.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from coral.daemon.config import Config
from coral.redact import DEFAULT_NAMES, Rules

log = logging.getLogger(__name__)

DEFAULT_REDACT_PATTERNS: tuple[str, ...] = DEFAULT_NAMES


@dataclass(frozen=True)
class SdkSettings:
    """The names to redact; the rule that matches them is coral/redact.py's,
    shared with the agent (and, for dict keys, the C extension)."""

    redact_patterns: tuple[str, ...] = DEFAULT_REDACT_PATTERNS

    @functools.cached_property
    def rules(self) -> Rules:
        return Rules(self.redact_patterns)

    def is_sensitive(self, name: str) -> bool:
        return self.rules.is_secret_name(name)

    def redact_flags(self, names: Iterable[str]) -> bytes:
        return self.rules.flags(names)


def settings_from_config(config: Config) -> SdkSettings:
    """The SDK's settings from a loaded Config. ``Config.sdk`` is read only
    if the running coral.daemon.config defines it (validated there)."""
    section = getattr(config, "sdk", None)
    patterns = getattr(section, "redact_patterns", None)
    if patterns is None:
        return SdkSettings()
    if not isinstance(patterns, (tuple, list)) or not all(isinstance(p, str) for p in patterns):
        log.error("%s: [sdk] redact_patterns must be a list of strings; using the defaults", config.source)
        return SdkSettings()
    return SdkSettings(redact_patterns=tuple(patterns))
