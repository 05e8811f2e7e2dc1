"""coral-run: launch a native program as a child and opt it in to Coral.

    coral-run --service payments -- ./payments --port 8080

It registers the child with the local agent, answers function metadata from
the child's ELF/DWARF on its own ipc socket, forwards signals, and exits
with the child's status when the child ends."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

import zmq

from coral import __version__
from coral.daemon.config import Config, ConfigError, load_config
from coral.daemon.errors import InvalidArgument, NotFound
from coral.daemon.methods import PROCESS_METHODS
from coral.daemon.runtime import Notifier, bind_process_socket, configure_socket, ensure_process_dir, setup_logging, unlink_ipc
from coral.daemon.server import Dispatcher, Peer, serve_rep_once
from coral.elfinfo import AmbiguousName, ElfFunctions, ElfInfoError
from coral.proto import coral_pb2 as pb
from coral.sdk.native import argument_metadata, list_native, native_metadata, result_metadata, split_library
from coral.sdk.registration import AgentRegistration

log = logging.getLogger("coral.run")

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
MAX_LIST = 10_000


class NativeMetadata:
    """Answers the process API for one native child process."""

    def __init__(self, pid: int, executable: str, elf: ElfFunctions) -> None:
        self.pid = pid
        self.executable = executable
        self.elf = elf

    def ping(self, req: pb.PingRequest, peer: Peer) -> pb.PingResponse:
        return pb.PingResponse(daemon="coral-run", version=__version__, pid=os.getpid())

    def list_functions(self, req: pb.ListFunctionsRequest, peer: Peer) -> pb.ListFunctionsResponse:
        """The executable's functions; with a library pattern ("libz*:*"), a loaded library's."""
        limit = min(req.max_results or MAX_LIST, MAX_LIST)
        names = self.elf.names(req.pattern)
        if not names and split_library(req.pattern):
            names = list_native(req.pattern, limit + 1, maps_of=self.pid)
        shown = names[:limit]
        locations = self.elf.locations(shown) if self.elf.names(req.pattern) else []  # a library's: none
        return pb.ListFunctionsResponse(functions=shown, truncated=len(names) > limit, locations=locations)

    def function_metadata(self, req: pb.GetFunctionMetadataRequest, peer: Peer) -> pb.GetFunctionMetadataResponse:
        if not req.function:
            raise InvalidArgument("a function name is required")
        try:
            info = self.elf.function(req.function)
        except AmbiguousName as exc:
            raise InvalidArgument(f"{req.function!r} names {len(exc.candidates)} functions in {self.executable}; "
                                  f"name one: {', '.join(exc.candidates)}", exc.candidates) from None
        except ElfInfoError as exc:
            raise InvalidArgument(str(exc)) from None
        if info is None and split_library(req.function):  # LIBRARY:SYMBOL, in a library the program loaded
            return pb.GetFunctionMetadataResponse(metadata=native_metadata(req.function, self.pid, maps_of=self.pid))
        if info is None:
            why = self.elf.why_missing(req.function)
            if why:
                raise InvalidArgument(why)
            raise NotFound(f"no function {req.function!r} in {self.executable}", self.elf.closest(req.function))
        meta = pb.FunctionMetadata(
            kind="go" if self.elf.is_go else "native",
            name=info.name,
            binary_path=self.executable,
            address=info.address,
            file_offset=info.file_offset,
            size=info.size,
            pid=self.pid,
            source_file=info.source_file,
            source_line=info.source_line,
            inlined_into=list(info.inlined_into),
            result_in_memory=info.result_in_memory,
            arguments=[argument_metadata(p, f"reg{i}") for i, p in enumerate(info.parameters)],
            return_values=result_metadata(info, "rax"),
        )
        return pb.GetFunctionMetadataResponse(metadata=meta)


def exit_status(returncode: int) -> int:
    """A child killed by signal N exits the launcher with 128 + N, as shells do."""
    return 128 - returncode if returncode < 0 else returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coral-run",
        description="Run a native program opted in to Coral live debugging.",
        epilog="example: coral-run --service payments -- ./payments --port 8080",
    )
    parser.add_argument("--service", required=True, help="service name the program is debugged under")
    parser.add_argument("--config", help="configuration file")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no program given: coral-run --service NAME -- PROGRAM [ARGS...]")
    setup_logging(args.verbose)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"coral-run: {exc}", file=sys.stderr)
        return 2
    try:
        ensure_process_dir(config.process_socket_dir)
    except OSError as exc:
        print(f"coral-run: cannot create {config.process_socket_dir}: {exc.strerror}", file=sys.stderr)
        return 1
    forward = SignalForwarder()  # before the child exists: a signal from then on reaches it, none kills us first
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"coral-run: cannot start {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    forward.to(child)
    return supervise(child, args.service, config)


class SignalForwarder:
    """Catches the forwarded signals from its creation on and passes each to
    the child; one that came before the child started is passed when it has.
    The child starts with default handlers (exec resets caught signals)."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.early: list[int] = []
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.child is None:
            self.early.append(signum)
        else:
            self.child.send_signal(signum)

    def to(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        for signum in self.early:
            child.send_signal(signum)
        self.early.clear()


def supervise(child: subprocess.Popen[bytes], service: str, config: Config) -> int:
    context = zmq.Context()
    pidfd = os.pidfd_open(child.pid)
    try:
        executable = os.readlink(f"/proc/{child.pid}/exe")
        elf = ElfFunctions.load(f"/proc/{child.pid}/exe")
    except (OSError, ElfInfoError) as exc:
        log.error("cannot read the program's ELF file (%s); it runs, but cannot be debugged", exc)
        return exit_status(child.wait())
    metadata = NativeMetadata(child.pid, executable, elf)
    dispatcher = Dispatcher(
        {"Ping": metadata.ping, "ListFunctions": metadata.list_functions, "GetFunctionMetadata": metadata.function_metadata},
        PROCESS_METHODS,
    )
    rep = context.socket(zmq.REP)
    configure_socket(rep, config.limits.max_message_bytes)
    try:
        address = bind_process_socket(rep, config.process_socket_dir, child.pid)
    except (zmq.ZMQError, OSError) as exc:
        log.error("cannot bind ipc://%s (%s); the program runs, but cannot be debugged",
                  config.process_socket_dir / f"{child.pid}.sock", exc)
        rep.close(linger=0)
        return exit_status(child.wait())
    registration = AgentRegistration(
        config.agent_endpoint,
        pb.RegisterProcessRequest(
            service=service,
            pid=child.pid,
            executable=executable,
            address=address,
            kind="go" if elf.is_go else "native",
            sdk_version=__version__,
            runtime="native",
        ),
        context,
    )
    notifier = Notifier()
    announced = False
    try:
        while True:
            poller = zmq.Poller()
            poller.register(rep, zmq.POLLIN)
            poller.register(pidfd, zmq.POLLIN)
            if registration.socket is not None:
                poller.register(registration.socket, zmq.POLLIN)
            ready = dict(poller.poll(100))
            if pidfd in ready:
                break
            if rep in ready:
                serve_rep_once(rep, dispatcher)
            if registration.tick(time.monotonic()) and not announced:
                notifier.ready(f"{service}: pid {child.pid} registered")
                announced = True
    finally:
        registration.unregister()
        rep.close(linger=0)
        unlink_ipc(address)
        context.term()
        os.close(pidfd)
    return exit_status(child.wait())


if __name__ == "__main__":
    sys.exit(main())
