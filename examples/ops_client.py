"""Print a Coral colony's services and debug sessions as one JSON object.

An example of speaking the Coral wire protocol (CORAL/1, docs/protocol.md)
with nothing but pyzmq and the generated protobuf module
(coral.proto.coral_pb2); no other part of the coral package is used.

    python examples/ops_client.py [--endpoint ENDPOINT] [--timeout SECONDS]

Exit status: 0 on success, 1 if the colony answers with an error,
3 if it does not answer in time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from typing import NoReturn, TypeVar

import zmq
from google.protobuf.message import DecodeError, Message

from coral.proto import coral_pb2 as pb

PROTOCOL = b"CORAL/1"
REQUEST = b"\x01"
REPLY = b"\x02"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the daemons' default limits.max_message_bytes

R = TypeVar("R", bound=Message)


def fail(status: int, text: str) -> NoReturn:
    print(f"ops_client: {text}", file=sys.stderr)
    sys.exit(status)


def call(sock: zmq.Socket[bytes], method: str, request: Message, response: type[R], endpoint: str, timeout: float) -> R:
    """Send one REQUEST and wait for the REPLY that echoes its request id."""
    request_id = secrets.token_bytes(16)
    # A DEALER adds no envelope, so send the empty delimiter frame ourselves.
    sock.send_multipart([b"", PROTOCOL, REQUEST, request_id, method.encode("ascii"), request.SerializeToString()])
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if not sock.poll(int(remaining * 1000) + 1):
            break
        frames = sock.recv_multipart()
        # ["", "CORAL/1", REPLY, request id, status, body]; anything else,
        # including a late reply to some other request, is dropped.
        if len(frames) != 6 or frames[:4] != [b"", PROTOCOL, REPLY, request_id]:
            continue
        status, body = frames[4].decode("ascii", "replace"), frames[5]
        if status != "OK":
            try:
                error = pb.Error.FromString(body)
            except DecodeError:
                fail(1, f"{status}: (unreadable error body)")
            fail(1, f"{error.code or status}: {error.message}")
        try:
            return response.FromString(body)
        except DecodeError:
            fail(1, f"BAD_REPLY: {method} reply body is not a {response.__name__}")
    fail(3, f"no reply from {endpoint} within {timeout:g}s")


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text}")
    return value


def main() -> None:
    runtime_dir = os.environ.get("CORAL_RUNTIME_DIR") or "/run/coral"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=f"ipc://{runtime_dir}/colony/colony.sock",
                        help="colony frontend (default: %(default)s)")
    parser.add_argument(
        "--timeout", type=positive_seconds, default=5.0, help="seconds to wait for each reply (default: %(default)s)"
    )
    args = parser.parse_args()

    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sock.connect(args.endpoint)
        instances: list[pb.ServiceInstance] = []
        page = pb.ListServicesResponse(next="")
        while True:  # ListServices answers in pages (docs/protocol.md)
            after = page.next
            page = call(sock, "ListServices", pb.ListServicesRequest(after=after), pb.ListServicesResponse,
                        args.endpoint, args.timeout)
            instances.extend(page.services)
            if not page.next or page.next == after:
                break
        sessions = call(
            sock, "ListDebugSessions", pb.ListDebugSessionsRequest(), pb.ListDebugSessionsResponse, args.endpoint, args.timeout
        )

    print(
        json.dumps(
            {
                "services": [
                    {"service": s.service, "pid": s.pid, "kind": s.kind, "agent_id": s.agent_id, "executable": s.executable}
                    for s in instances
                ],
                "sessions": [
                    {
                        "session_id": s.session_id,
                        "service": s.service,
                        "function": s.function,
                        "agent_id": s.agent_id,
                        "status": s.status,
                    }
                    for s in sessions.sessions
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
