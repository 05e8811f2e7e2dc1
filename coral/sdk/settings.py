"""What the SDK redacts, and where that comes from.

Defaults live here. The ``[sdk]`` table of coral.toml (``redact_patterns``)
replaces them once coral.daemon.config parses that table into
``Config.sdk``; until then the defaults apply. Values that look like card
numbers (13-19 digits, Luhn-valid) are redacted whatever the patterns say.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from coral.daemon.config import Config

log = logging.getLogger(__name__)

# Case-insensitive substrings of parameter (and dict key) names whose values
# are never shown. The C extension starts with the same list.
DEFAULT_REDACT_PATTERNS: tuple[str, ...] = ("password", "secret", "token", "api_key", "authorization", "card")


@dataclass(frozen=True)
class SdkSettings:
    redact_patterns: tuple[str, ...] = DEFAULT_REDACT_PATTERNS

    def is_sensitive(self, name: str) -> bool:
        """The same rule as the C side's: a pattern is a substring of the
        lowercased name."""
        lowered = name.lower()
        return any(p and p.lower() in lowered for p in self.redact_patterns)

    def redact_flags(self, names: Iterable[str]) -> bytes:
        return bytes(1 if self.is_sensitive(n) else 0 for n in names)


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
