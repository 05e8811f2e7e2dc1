"""The bounds of a profile request (ProfileCpu), checked alike by the colony
(to refuse early) and by the agent (which may be asked on its local socket)."""

from __future__ import annotations

from coral.daemon.config import SessionsConfig
from coral.daemon.errors import InvalidArgument

DEFAULT_DURATION_MS = 30_000
MIN_FREQUENCY, MAX_FREQUENCY, DEFAULT_FREQUENCY = 1, 1000, 99
# What an agent may take to load its sampling program, on top of the
# duration: BCC compiles it for each profile (1 to 15 s measured on a
# loaded 2-vCPU VM).
LOAD_ALLOWANCE_S = 60.0


def duration_ms(sessions: SessionsConfig, requested_ms: int) -> int:
    """The session rule (more than the maximum is refused), with a default of 30 s."""
    return sessions.session_duration_ms(requested_ms or min(DEFAULT_DURATION_MS, sessions.max_duration * 1000))


def frequency(requested: int) -> int:
    if requested == 0:
        return DEFAULT_FREQUENCY
    if not MIN_FREQUENCY <= requested <= MAX_FREQUENCY:
        raise InvalidArgument(f"frequency {requested} Hz is out of range; ask for {MIN_FREQUENCY} to {MAX_FREQUENCY} Hz")
    return requested
