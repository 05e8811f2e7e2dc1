"""The process API of a Python service (docs/protocol.md, "process API"):
Ping, ListFunctions, GetFunctionMetadata, ArmFunction, DisarmFunction on
ipc://<runtime_dir>/procs/<pid>.sock, served by the SDK's own thread, which
also keeps the registration with the local agent alive.

``ProcessApi`` holds the handlers (plain functions of decoded requests, no
sockets); ``run`` is the thread's body. Nothing here may raise into the
service: problems are logged once and retried in the background.
"""

from __future__ import annotations

import grp
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import zmq

from coral import __version__
from coral.daemon.errors import InvalidArgument, PermissionDenied
from coral.daemon.liveness import Backoff
from coral.daemon.methods import PYTHON_PROCESS_METHODS
from coral.daemon.server import Dispatcher, Handler, Peer, serve_rep_once
from coral.daemon.sockets import SOCKET_GROUP, bind_process_socket, configure_socket, ensure_process_dir, unlink_ipc
from coral.proto import coral_pb2 as pb
from coral.sdk import _probe, native
from coral.sdk.arming import ARMS, ArmRegistry
from coral.sdk.locate import Location, LocationError, locate
from coral.sdk.metadata import function_metadata, list_functions, location
from coral.sdk.registration import AgentRegistration
from coral.sdk.settings import DEFAULT_REDACT_PATTERNS, SdkSettings

if TYPE_CHECKING:
    from coral.sdk.lifecycle import Sdk

log = logging.getLogger(__name__)

DEFAULT_STACK_DEPTH = 64  # --stack without --stack-depth (docs/protocol.md)

POLL_MS = 250  # how often the registration is looked after while idle
# The process socket's message cap until the agent's comes with the
# registration: the daemons' default [limits] max_message_bytes.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def _coral_gid() -> int | None:
    try:
        return grp.getgrnam(SOCKET_GROUP).gr_gid
    except KeyError:
        return None


def may_arm(peer: Peer) -> bool:
    """Arming changes this process's code paths: root, this process's own
    user, or the coral group (the agent's) only. The socket's file mode
    already keeps everyone else out; this holds if that mode is loosened."""
    if peer.uid is None:
        return False
    if peer.uid in (0, os.getuid(), os.geteuid()):
        return True
    gid = _coral_gid()
    return gid is not None and peer.gid == gid


class ProcessApi:
    def __init__(self, arms: ArmRegistry, pid: int, counters: Callable[[], Mapping[str, int]] = dict) -> None:
        self.arms = arms
        self.pid = pid
        self.counters = counters

    def handlers(self) -> dict[str, Handler]:
        return {
            "Ping": self.ping,
            "ListFunctions": self.list_functions,
            "GetFunctionMetadata": self.function_metadata,
            "ArmFunction": self.arm_function,
            "DisarmFunction": self.disarm_function,
            "CountCalls": self.count_calls,
        }

    def ping(self, req: pb.PingRequest, peer: Peer) -> pb.PingResponse:
        counters = {**self.counters(), "armed": len(self.arms.arms()), "semaphore": _probe.semaphore()}
        return pb.PingResponse(daemon="coral-sdk", version=__version__, pid=self.pid, counters=counters)

    def list_functions(self, req: pb.ListFunctionsRequest, peer: Peer) -> pb.ListFunctionsResponse:
        if native.is_native_name(req.pattern):
            names = native.list_native(req.pattern, req.max_results or native.MAX_LIST)
            return pb.ListFunctionsResponse(functions=names, truncated=len(names) >= (req.max_results or native.MAX_LIST))
        names, truncated = list_functions(self.arms, req.pattern, req.max_results)
        return pb.ListFunctionsResponse(functions=names, truncated=truncated,
                                        locations=[location(self.arms, n) for n in names])

    def function_metadata(self, req: pb.GetFunctionMetadataRequest, peer: Peer) -> pb.GetFunctionMetadataResponse:
        if not req.function:
            raise InvalidArgument("a function name is required")
        if native.is_native_name(req.function):
            return pb.GetFunctionMetadataResponse(metadata=native.native_metadata(req.function, self.pid))
        return pb.GetFunctionMetadataResponse(metadata=function_metadata(self.arms, req.function, self.pid))

    def arm_function(self, req: pb.ArmFunctionRequest, peer: Peer) -> pb.ArmFunctionResponse:
        if not may_arm(peer):
            raise PermissionDenied(f"{peer.who} may not arm functions in pid {self.pid}")
        if not req.function:
            raise InvalidArgument("a function name is required")
        self.arms.arm(req.function, req.fn_id, capture_args=req.config.capture_args, capture_return=req.config.capture_return,
                      condition=req.config.predicate, count_by=req.config.count_by,
                      stack_depth=(req.config.stack_depth or DEFAULT_STACK_DEPTH) if req.config.stack else 0)
        return pb.ArmFunctionResponse(metadata=function_metadata(self.arms, req.function, self.pid))

    def count_calls(self, req: pb.CountCallsRequest, peer: Peer) -> pb.CountCallsResponse:
        """--count-by: the rows so far (the live table); none for a function not counted."""
        if not may_arm(peer):
            raise PermissionDenied(f"{peer.who} may not read counts in pid {self.pid}")
        arm = self.arms.get(req.fn_id)
        tally = arm.tally if arm is not None else None
        return pb.CountCallsResponse(counts=tally.messages(self.arms.settings.rules.text) if tally is not None else [])

    def disarm_function(self, req: pb.DisarmFunctionRequest, peer: Peer) -> pb.DisarmFunctionResponse:
        if not may_arm(peer):
            raise PermissionDenied(f"{peer.who} may not disarm functions in pid {self.pid}")
        arm = self.arms.get(req.fn_id)
        tally = arm.tally if arm is not None else None
        was_armed = self.arms.disarm(req.fn_id)
        # Read after the disarm: nothing adds to the table any more (but a call already returning).
        counts = tally.messages(self.arms.settings.rules.text) if tally is not None else []
        return pb.DisarmFunctionResponse(was_armed=was_armed, counts=counts)


def registration_request(service: str, pid: int, address: str) -> pb.RegisterProcessRequest:
    return pb.RegisterProcessRequest(
        service=service,
        pid=pid,
        executable=os.path.realpath(sys.executable),
        address=address,
        kind="python",
        sdk_version=__version__,
        runtime=f"{platform.python_implementation()} {platform.python_version()}",
        python_layout=python_layout(),
    )


def python_layout() -> pb.PythonLayout | None:
    """Where this interpreter keeps its frames, for the agent's profiler
    (docs/protocol.md, "Process registration"); None before CPython 3.11."""
    layout = _probe.python_layout() if platform.python_implementation() == "CPython" else None
    if not layout:
        return None
    message = pb.PythonLayout()
    known = pb.PythonLayout.DESCRIPTOR.fields_by_name
    for name, value in layout.items():
        if name in known:  # an extension newer than these messages: what they lack is left out
            setattr(message, name, value)
    return message


def agent_socket_exists(endpoint: str) -> bool:
    """For ipc, whether the agent's socket file is there at all: when it is
    not, asking would only wait for a timeout."""
    return not endpoint.startswith("ipc://") or os.path.exists(endpoint[len("ipc://") :])


def run(sdk: Sdk) -> None:
    """The SDK thread: find the agent, bind, serve, stay registered."""
    try:
        where = locate(sdk.runtime_dir, sdk.config_path)
    except LocationError as exc:
        log.error("coral: %s; live debugging is off in this process", exc)
        return
    ARMS.configure(SdkSettings(redact_patterns=DEFAULT_REDACT_PATTERNS))  # until the agent's names come
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        _serve(sdk, where, context)
    finally:
        context.destroy(linger=0)


def disarm_orphans() -> None:
    """A new registration means the agent restarted or lost track of us:
    the sessions that armed functions are gone with it, and nobody will
    disarm them. With the semaphore at 0 no probe is attached any more, so
    they can go. (While a probe is still attached, they stay.)"""
    if ARMS.arms() and _probe.semaphore() == 0:
        log.info("registered anew with no probe attached: disarmed %d functions armed before", ARMS.disarm_all())


def _bind(sdk: Sdk, where: Location, context: zmq.Context[zmq.Socket[bytes]]) -> tuple[zmq.Socket[bytes], str] | None:
    backoff = Backoff()
    warned = False
    while not sdk.stopping:
        rep = context.socket(zmq.REP)
        try:
            configure_socket(rep, DEFAULT_MAX_MESSAGE_BYTES)
            ensure_process_dir(where.process_socket_dir)
            return rep, bind_process_socket(rep, where.process_socket_dir, sdk.pid)
        except (OSError, zmq.ZMQError) as exc:
            rep.close(linger=0)
            if not warned:
                address = f"ipc://{where.process_socket_dir / f'{sdk.pid}.sock'}"
                log.warning("coral: cannot listen on %s (%s); live debugging is off until it can, retrying", address, exc)
                warned = True
            sdk.wait_for_wake(backoff.next_delay())
    return None


def _serve(sdk: Sdk, where: Location, context: zmq.Context[zmq.Socket[bytes]]) -> None:
    bound = _bind(sdk, where, context)
    if bound is None:
        return
    rep, address = bound
    registration = AgentRegistration(where.agent_endpoint, registration_request(sdk.service, sdk.pid, address), context)
    dispatcher: Dispatcher | None = None
    api = ProcessApi(ARMS, sdk.pid, lambda: dict(dispatcher.counters) if dispatcher else {})
    dispatcher = Dispatcher(api.handlers(), PYTHON_PROCESS_METHODS)
    poller = zmq.Poller()
    poller.register(rep, zmq.POLLIN)
    poller.register(sdk.wake_fd, zmq.POLLIN)
    sdk.bound(address)
    agent_missing_warned = False
    message_cap = DEFAULT_MAX_MESSAGE_BYTES

    def registered() -> None:
        """Take what the agent's configuration says (the SDK reads none of
        its own): its redaction names and its message cap, before any
        request the agent sends next is served."""
        nonlocal message_cap
        names = registration.redact_names
        if names is not None and names != ARMS.settings.redact_patterns:
            ARMS.configure(SdkSettings(redact_patterns=names))
        if registration.max_message_bytes and registration.max_message_bytes != message_cap:
            # libzmq copies it into each connection as that is made: the agent's next one gets it
            message_cap = registration.max_message_bytes
            rep.setsockopt(zmq.MAXMSGSIZE, message_cap)
        disarm_orphans()

    try:
        while not sdk.stopping:
            if agent_socket_exists(where.agent_endpoint):
                agent_missing_warned = False
                if registration.tick(time.monotonic()):
                    registered()
            elif not agent_missing_warned:
                log.warning(
                    "coral agent not running (no %s); the service runs normally and registers once it starts",
                    where.agent_endpoint,
                )
                agent_missing_warned = True
                registration.registration_id = ""
            sdk.registered = registration.registered
            for sock, _ in poller.poll(POLL_MS):
                if sock is rep:
                    if registration.receive(time.monotonic()):  # a reply that came while polling goes first
                        registered()
                    serve_rep_once(rep, dispatcher)
                else:
                    sdk.drain_wake()
    finally:
        registration.unregister()
        sdk.registered = False
        rep.close(linger=0)
        unlink_ipc(address)
