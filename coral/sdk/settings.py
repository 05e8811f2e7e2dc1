"""What the SDK redacts, and where that comes from.

The defaults (coral/redact.py's names) apply until the process registers;
from then on the names are exactly the agent's (its ``[sdk]
redact_patterns``, sent in the reply to RegisterProcess): the SDK reads no
configuration file of its own. Values that look like card numbers (13-19
digits, Luhn-valid) are redacted whatever the names say.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from coral.redact import DEFAULT_NAMES, Rules

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
