"""Every method of the protocol, defined once: its request and response
messages. Servers expose an explicit allow-list drawn from this table."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from coral.proto import coral_pb2 as pb


@dataclass(frozen=True)
class Method:
    name: str
    request: type[Message]
    response: type[Message]


def _m(name: str) -> Method:
    return Method(name, getattr(pb, f"{name}Request"), getattr(pb, f"{name}Response"))


METHODS: dict[str, Method] = {
    m.name: m
    for m in map(
        _m,
        [
            "Ping",
            "ListServices",
            "ListFunctions",
            "GetFunctionMetadata",
            "AttachUprobe",
            "DetachUprobe",
            "QueryUprobeEvents",
            "ListDebugSessions",
            "RegisterProcess",
            "UnregisterProcess",
            "ProcessHeartbeat",
            "ArmFunction",
            "DisarmFunction",
            "CountCalls",
            "ListAudit",
            "ProfileCpu",
        ],
    )
}

# Allow-lists per socket (docs/protocol.md, "Methods").
SESSION_METHODS = frozenset({"ListFunctions", "AttachUprobe", "DetachUprobe", "QueryUprobeEvents", "ListDebugSessions",
                             "ProfileCpu"})
AGENT_LOCAL_METHODS = SESSION_METHODS | {"Ping", "ListServices", "RegisterProcess", "UnregisterProcess", "ProcessHeartbeat"}
AGENT_FROM_COLONY_METHODS = SESSION_METHODS
COLONY_FRONTEND_METHODS = SESSION_METHODS | {"Ping", "ListServices", "ListAudit"}
PROCESS_METHODS = frozenset({"Ping", "ListFunctions", "GetFunctionMetadata"})
PYTHON_PROCESS_METHODS = PROCESS_METHODS | {"ArmFunction", "DisarmFunction", "CountCalls"}
