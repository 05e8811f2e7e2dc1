"""ListServices in pages: 10,000 registered processes do not fit in one
message (docs/protocol.md, Methods)."""

from __future__ import annotations

from collections.abc import Iterable

from coral.daemon.errors import InvalidArgument
from coral.proto import coral_pb2 as pb

MAX_CURSOR = 300


def entry_bytes(instance: pb.ServiceInstance) -> int:
    """What one instance adds to a message that repeats them: itself, its tag and length."""
    return instance.ByteSize() + 6


def _position(after: str) -> tuple[str, int] | None:
    """A cursor is `PID:AGENT_ID`, the last instance of the page before."""
    if not after:
        return None
    pid, sep, agent_id = after.partition(":")
    if len(after) > MAX_CURSOR or not sep or not pid.isdigit():
        raise InvalidArgument("after must be the `next` of a ListServices page")
    return agent_id, int(pid)


def services_page(instances: Iterable[pb.ServiceInstance], after: str, limit_bytes: int) -> pb.ListServicesResponse:
    """The instances after the cursor, in (agent id, pid) order, at most
    `limit_bytes` encoded (one at least)."""
    start = _position(after)
    ordered = sorted(
        (i for i in instances if start is None or (i.agent_id, i.pid) > start), key=lambda i: (i.agent_id, i.pid)
    )
    page = pb.ListServicesResponse()
    size = 0
    for instance in ordered:
        n = entry_bytes(instance)
        if page.services and size + n > limit_bytes:
            last = page.services[-1]
            page.next = f"{last.pid}:{last.agent_id}"
            break
        page.services.append(instance)
        size += n
    return page
