"""coral-mcp: Coral's tools for an AI assistant, as an MCP server over stdio
(the official MCP Python SDK). docs/mcp.md says what each tool does and the
security model: coral-mcp is a client of the colony like coralctl, acting as
the user it runs as, with that user's rights and no others.

Tools run the blocking colony requests (coral/mcp/colony.py) in worker
threads, so a long `attach` does not hold up the other tools."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from mcp.server.mcpserver import AcceptedElicitation, Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, Field

from coral import __version__
from coral.daemon import profiling
from coral.daemon.client import HandshakeFailed, Unreachable
from coral.daemon.config import Config, ConfigError, load_config
from coral.daemon.errors import CoralError
from coral.mcp.colony import (
    MAX_EVENTS,
    MAX_FUNCTIONS,
    MAX_WAIT,
    Colony,
    InvalidInput,
    check_bounded,
    check_condition,
    check_duration,
    check_name,
    check_session_id,
    client_label,
    duration_cap,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTRUCTIONS = """\
Coral shows every call of one function of a running service (timing, and if allowed its arguments and
return values), for a bounded time, without stopping it. Find the service with list_services, its
function with list_functions, then attach for a few seconds while the service is being used; attach
answers with the session's summary (calls, latency percentiles, errors). get_events reads the calls
themselves, a page at a time. profile shows where a service spends its CPU, by function and stack.
This server acts with the rights of the user it runs as."""


class CaptureConsent(BaseModel):
    """What the person is asked before values are captured (MCP elicitation)."""

    capture: bool = Field(description="Record these values for this session")


class CoralTools:
    """The tools, bound to one colony and one configuration."""

    def __init__(self, colony: Colony, config: Config) -> None:
        self.colony = colony
        self.config = config

    async def _run(self, ctx: Context | None, work: Callable[[Colony], T], abandon_on_cancel: bool = False) -> T:
        """Run `work` against the colony in a worker thread, as this
        client's label; a Coral error becomes the tool's error, worded as
        coralctl words it. With `abandon_on_cancel`, a cancelled tool call
        returns at once and the thread finishes on its own."""
        colony = self.colony.labelled(client_label(_client_name(ctx)))
        try:
            return await anyio.to_thread.run_sync(work, colony, abandon_on_cancel=abandon_on_cancel)
        except HandshakeFailed as exc:
            raise ToolError(f"cannot talk to the colony: {exc.message}") from None
        except Unreachable as exc:
            raise ToolError(f"cannot reach the colony: {exc.message}; is coral-colonyd running?") from None
        except CoralError as exc:
            hint = f" (did you mean: {', '.join(exc.suggestions)}?)" if exc.suggestions else ""
            raise ToolError(f"{exc.message}{hint}") from None
        except InvalidInput as exc:
            raise ToolError(str(exc)) from None

    async def list_services(self, ctx: Context) -> dict[str, Any]:
        """The services that opted in to Coral (SDK or coral-run), one entry per process (at most 500)."""
        return await self._run(ctx, lambda c: c.list_services())

    async def list_functions(self, service: str, ctx: Context, pattern: str = "",
                             max_results: int = 100) -> dict[str, Any]:
        """The functions of a service that attach accepts, with FILE:LINE where known.
        pattern is a glob such as 'validate_*' (empty: all); at most max_results (1 to 500)."""
        _checked(lambda: (check_name("service", service), check_bounded("max_results", max_results, 1, MAX_FUNCTIONS),
                          check_bounded("pattern length", len(pattern), 0, 200)))
        return await self._run(ctx, lambda c: c.list_functions(service, pattern, max_results))

    async def attach(self, service: str, function: str, ctx: Context, duration_seconds: float = 10.0,
                     capture_args: bool = False, capture_return: bool = False, where: str = "",
                     wait: bool = True) -> dict[str, Any]:
        """Record every call of one function of a service for duration_seconds (at most the
        server's maximum, 30 s by default), then answer with the session and its summary:
        calls, latency percentiles (ns), errors, calls lost. With wait=false, answer at once
        with the session id (read it later with get_summary or get_events).
        capture_args, capture_return and where (a filter on values, e.g. 'amount_cents>1000')
        capture values: that needs [mcp] allow_capture in the configuration and the user's
        capture right, and the person may be asked first."""
        cap = duration_cap(self.config)
        _checked(lambda: (check_name("service", service), check_name("function", function),
                          check_duration(duration_seconds, self.config), where and check_condition(where)))
        capturing = [w for w, on in (("arguments", capture_args), ("return values", capture_return),
                                     (f"the values in where {where!r}", bool(where))) if on]
        if capturing:
            await self._capture_allowed(ctx, service, function, duration_seconds, capturing)
        session = await self._run(ctx, lambda c: c.start(service, function, duration_seconds, capture_args,
                                                          capture_return, where))
        started = {"session_id": session.session_id, "service": session.service, "function": session.function,
                   "pids": list(session.pids), "probes": session.probes, "duration_seconds": duration_seconds}
        if not wait:
            return {"session": started, "status": session.status}
        await ctx.report_progress(0, duration_seconds, f"session {session.session_id} recording")
        until = time.monotonic() + duration_seconds + min(cap, 10.0)  # its expiry, and time to gather the last calls
        try:
            summary = await self._run(ctx, lambda c: c.summary(session.session_id, until), abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            # The client gave up waiting (cancelled the call, or went away):
            # nobody will read this session, so end it now, not at its expiry.
            with anyio.CancelScope(shield=True), contextlib.suppress(ToolError):  # ended already: nothing to end
                await self._run(ctx, lambda c: c.detach(session.session_id))
            raise
        return {"session": started, "summary": summary,
                "next": f"get_events(session_id={session.session_id!r}) reads the calls"}

    async def _capture_allowed(self, ctx: Context, service: str, function: str, seconds: float,
                               capturing: list[str]) -> None:
        """The configuration's grant first; then, where the client can ask
        the person, the person. The colony checks its own capture right after."""
        if not self.config.mcp.allow_capture:
            raise ToolError(f"coral-mcp may not capture values: [mcp] allow_capture is false in {self.config.source} "
                            "(ask without capture_args, capture_return and where for timing only)")
        caps = ctx.client_capabilities
        if caps is None or caps.elicitation is None or not ctx.session.can_send_request:
            return  # no way to ask: the grant in the configuration decides
        try:
            answer = await ctx.elicit(
                f"An assistant asks to record {' and '.join(capturing)} of every call of {service} {function} "
                f"for {seconds:g}s. They may hold personal data. Allow it?", CaptureConsent)
        except (MCPError, ValueError) as exc:  # the client failed to ask, or answered off the form
            raise ToolError(f"the person could not be asked before capturing values ({exc}); "
                            "attach without them for timing only") from None
        if not (isinstance(answer, AcceptedElicitation) and answer.data.capture):
            raise ToolError("the person did not allow capturing values; attach without them for timing only")

    async def get_summary(self, session_id: str, ctx: Context) -> dict[str, Any]:
        """A session's summary: calls, latency percentiles (ns), errors, calls lost. A session
        still running is summarised as it stands."""
        _checked(lambda: check_session_id(session_id))
        return await self._run(ctx, lambda c: c.summary(session_id, time.monotonic()))

    async def get_events(self, session_id: str, ctx: Context, cursor: int = 0, max_calls: int = 50,
                         wait_seconds: float = 0.0) -> dict[str, Any]:
        """A page of a session's calls, oldest first: at most max_calls (1 to 200) after cursor
        (0: from the start). Ask again with cursor=next_cursor while has_more is true. With
        wait_seconds (at most 5), wait that long for a call of a running session."""
        _checked(lambda: (check_session_id(session_id), check_bounded("cursor", cursor, 0, 2**63 - 1),
                          check_bounded("max_calls", max_calls, 1, MAX_EVENTS)))
        if not 0 <= wait_seconds <= MAX_WAIT:
            raise ToolError(f"wait_seconds must be between 0 and {MAX_WAIT:g}, got {wait_seconds:g}")
        return await self._run(ctx, lambda c: c.events(session_id, cursor, max_calls, wait_seconds))

    async def list_sessions(self, ctx: Context, service: str = "", active_only: bool = False) -> dict[str, Any]:
        """Debug sessions the colony knows (all services, or one): the newest 500, newest last."""
        if service:
            _checked(lambda: check_name("service", service))
        return await self._run(ctx, lambda c: c.sessions(service, active_only))

    async def profile(self, service: str, ctx: Context, duration_seconds: float = 10.0,
                      frequency_hz: int = profiling.DEFAULT_FREQUENCY) -> dict[str, Any]:
        """Sample where a service's processes spend their CPU for duration_seconds (at most the
        server's maximum, 30 s by default), at frequency_hz (1 to 1000; 99 by default), then answer
        with the share of samples per function (self: running in it; total: it and what it
        calls) and the heaviest call stacks, outermost first. Reads no values; needs the
        user's profile right."""
        _checked(lambda: (check_name("service", service), check_duration(duration_seconds, self.config),
                          check_bounded("frequency_hz", frequency_hz, profiling.MIN_FREQUENCY, profiling.MAX_FREQUENCY)))
        await ctx.report_progress(0, duration_seconds, f"profiling {service}")
        return await self._run(ctx, lambda c: c.profile(service, duration_seconds, frequency_hz), abandon_on_cancel=True)

    async def detach(self, session_id: str, ctx: Context) -> dict[str, Any]:
        """End a running session now; its calls stay readable."""
        _checked(lambda: check_session_id(session_id))
        return await self._run(ctx, lambda c: c.detach(session_id))


def _checked(check: Callable[[], object]) -> None:
    try:
        check()
    except InvalidInput as exc:
        raise ToolError(str(exc)) from None


def _client_name(ctx: Context | None) -> str | None:
    """The name the MCP client gave itself at initialization, if any."""
    if ctx is None:
        return None
    params = ctx.session.client_params
    return params.client_info.name if params is not None and params.client_info is not None else None


def build_server(colony: Colony, config: Config) -> MCPServer:
    tools = CoralTools(colony, config)
    server: MCPServer = MCPServer("coral", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING")
    for fn in (tools.list_services, tools.list_functions, tools.attach, tools.get_summary, tools.get_events,
               tools.list_sessions, tools.detach, tools.profile):
        server.add_tool(fn, structured_output=False)
    return server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coral-mcp",
        description="Coral's tools for an AI assistant: an MCP server on stdin/stdout (docs/mcp.md).",
    )
    p.add_argument("--config", help="configuration file (default: $CORAL_CONFIG or /etc/coral/coral.toml)")
    p.add_argument("--endpoint", default="", help="the colony frontend (default: from the configuration)")
    p.add_argument("--key", default="", metavar="FILE", help="over tcp: this client's NAME.key_secret ([client] key_file)")
    p.add_argument("--colony-key", default="", metavar="FILE",
                   help="over tcp: the colony's public key file ([client] colony_public_key_file)")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for each reply from the colony")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="coral-mcp: %(message)s")
    try:
        config = load_config(args.config)
        colony = Colony.from_config(config, args.endpoint, args.key, args.colony_key, args.timeout)
    except ConfigError as exc:
        print(f"coral-mcp: {exc}", file=sys.stderr)
        return 2
    build_server(colony, config).run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
