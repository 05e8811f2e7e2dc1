"""coralctl: the Coral CLI. Talks to the colony, or to the local agent with
--local. Every command has --output json (JSON Lines) for scripts.

Exit codes: 0 success (including a `debug attach` ended early by one
Ctrl-C, which detaches the session and still prints the summary); 1 the
request was refused or failed (the message says why); 2 bad usage or a bad
configuration file; 3 the colony or agent could not be reached; 130
interrupted (Ctrl-C outside `debug attach`, or a second one)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from google.protobuf.message import Message

from coral import expr
from coral.ctl import complete, group, render
from coral.ctl import profile as profile_command
from coral.ctl import stacks as stacks_command
from coral.ctl.saved import SessionFile, sessions_dir, show_saved
from coral.daemon import curve
from coral.daemon.client import Client, HandshakeFailed, Unreachable
from coral.daemon.config import Config, ConfigError, load_config
from coral.daemon.errors import CoralError
from coral.proto import coral_pb2 as pb

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
FOLLOW_WAIT = 2.0  # seconds the daemon may hold a follower's question while nothing happens
FOLLOW_BACKOFF = 0.2  # seconds before asking again when a question was not held
PAGE = 1000


EXAMPLES = {
    "coralctl": """\
examples:
  coralctl services
  coralctl functions payments --pattern 'validate_*'
  coralctl debug attach payments --function validate_card --duration 90s --capture-args
  coralctl --local services               # this host's agent, without the colony
  coralctl --output json debug sessions | jq -r .session_id""",
    "debug": """\
examples:
  coralctl debug attach payments --function validate_card --capture-args --capture-return
  coralctl debug sessions --active
  coralctl debug events dbg-1a2b3c4d5e6f --since 5m
  coralctl debug show dbg-1a2b3c4d5e6f
  coralctl debug detach dbg-1a2b3c4d5e6f""",
    "ping": """\
examples:
  coralctl ping
  coralctl --local --timeout 30s ping    # wait for a starting agent""",
    "services": """\
examples:
  coralctl services
  coralctl services --output json | jq -r .service""",
    "functions": """\
examples:
  coralctl functions payments --pattern 'validate_*'
  coralctl functions payments-api --pattern 'payments.*'
  coralctl functions payments-api --pattern 'libz.so*:crc*'""",
    "attach": """\
examples:
  coralctl debug attach payments --function validate_card --duration 90s --capture-args
  coralctl debug attach payments --function validate_card --agent web-3
  coralctl debug attach payments --function validate_card --slow 500ms --min-duration 100ms
  coralctl debug attach payments --function validate_card --where 'amount_cents>100000' --capture-return
  coralctl debug attach payments-api --function payments.validate_card --capture-args --capture-return
  coralctl debug attach payments-api --function payments.charge --where 'req.amount >= 1000 || raised(ValueError)'
  coralctl debug attach payments-api --function payments.validate_card --errors-only --where 'duration >= 5ms'
  coralctl debug attach payments-api --function payments.charge --function payments.validate_card --function 'db.*'
  coralctl debug attach payments --function validate_card --count-by card_type --duration 30s
  coralctl debug attach payments --function charge --count-by ret --where 'amount >= 1000'
  coralctl debug attach payments --function charge --capture-args --rate 20/s
  coralctl --output json debug attach payments --function validate_card --no-save | jq .""",
    "sessions": """\
examples:
  coralctl debug sessions
  coralctl debug sessions --active --service payments""",
    "events": """\
examples:
  coralctl debug events dbg-1a2b3c4d5e6f --since 5m
  coralctl debug events dbg-1a2b3c4d5e6f --follow --slow 500ms
  coralctl debug events dbg-1a2b3c4d5e6f --output json > calls.jsonl""",
    "audit": """\
examples:
  coralctl audit --since 1h
  coralctl audit --output json | jq 'select(.outcome != "OK")'""",
    "show": """\
examples:
  coralctl debug show dbg-1a2b3c4d5e6f
  coralctl debug show ./incident.jsonl --slow 5ms
  coralctl --output json debug show dbg-1a2b3c4d5e6f | jq 'select(.kind == "call")'""",
    "detach": """\
examples:
  coralctl debug detach dbg-1a2b3c4d5e6f""",
    "stacks": """\
examples:
  coralctl debug stacks dbg-1a2b3c4d5e6f
  coralctl debug stacks dbg-1a2b3c4d5e6f --output folded > calls.folded   # by calls""",
    "flamegraph": """\
examples:
  coralctl debug flamegraph dbg-1a2b3c4d5e6f -o callers.html
  coralctl debug flamegraph dbg-1a2b3c4d5e6f --output folded > callers.folded   # by time (ns), for flamegraph.pl""",
    "profile": """\
examples:
  coralctl profile payments --duration 30s -o flame.html
  coralctl profile payments --frequency 49 --agent web-3
  coralctl profile payments --output folded > payments.folded   # for flamegraph.pl or speedscope""",
    "generate": """\
examples:
  coralctl keys generate colony --dir /etc/coral/keys      # on the colony host
  coralctl keys generate web-1 --dir /etc/coral/keys       # on an agent host
  coralctl keys generate alice --dir ~/.config/coral       # for coralctl over tcp""",
}


def duration_arg(text: str) -> float:
    try:
        return render.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_duration(text: str) -> float:
    seconds = duration_arg(text)
    if seconds < 0.001:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be at least 1ms")
    return seconds


def condition_arg(text: str) -> str:
    """A --where condition, checked here so that a typing mistake is shown
    with its column before anything is sent; the agent checks the names."""
    if not text:  # argparse passes the default ("") through here too: no condition
        return text
    try:
        expr.parse_condition(text)
    except expr.ExprError as exc:
        raise argparse.ArgumentTypeError(expr.described(text, exc)) from None
    return text


def key_arg(text: str) -> str:
    """A --count-by key, checked here to point at a typing mistake; the agent resolves the name."""
    if not text:  # argparse passes the default ("") through here too: no key
        return text
    try:
        expr.parse_value(text)
    except expr.ExprError as exc:
        raise argparse.ArgumentTypeError(expr.described(text, exc)) from None
    return text


def template_arg(text: str) -> expr.Template:
    try:
        return render.print_template(text)
    except expr.ExprError as exc:
        raise argparse.ArgumentTypeError(expr.described(text, exc)) from None


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def rate_arg(text: str) -> int:
    """--rate N/s: reported calls a second (the "/s" may be left out)."""
    number = text.strip().removesuffix("/s")
    if not number.isdigit() or not 1 <= int(number) <= 1_000_000:
        raise argparse.ArgumentTypeError(f"expected calls a second from 1 to 1000000, as 100/s; got {text!r}")
    return int(number)


# Longer than the colony's own wait for an agent (limits.request_timeout, 10 s), so that
# an agent that does not answer is reported as such, not as an unreachable colony.
GLOBAL_DEFAULTS = {"local": False, "endpoint": None, "output": "text", "timeout": 15.0, "config": None,
                   "key": "", "colony_key": ""}


STACK_UNWINDS = {"fp": "frame pointers", "tables": "unwind tables", "python": "Python frames"}


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The same options before or after the command: `coralctl --output json
    services` and `coralctl services --output json` both work."""
    d: Any = (lambda _: argparse.SUPPRESS) if suppress else GLOBAL_DEFAULTS.get
    parser.add_argument("--local", action="store_true", default=d("local"), help="talk to the local agent instead of the colony")
    parser.add_argument("--endpoint", default=d("endpoint"), help="endpoint to talk to (default: from the configuration)")
    parser.add_argument(
        "--output", choices=["text", "json", "folded"], default=d("output"),
        help="text for people, json (JSON Lines) for tools; folded (profile only) for flamegraph.pl and speedscope"
    )
    parser.add_argument("--timeout", type=duration_arg, default=d("timeout"), help="how long to wait for a reply (default 15s)")
    parser.add_argument("--config", default=d("config"), help="configuration file")
    parser.add_argument("--key", default=d("key"), metavar="FILE",
                        help="over tcp: this client's NAME.key_secret (default: [client] key_file)")
    parser.add_argument("--colony-key", default=d("colony_key"), metavar="FILE",
                        help="over tcp: the colony's public key file (default: [client] colony_public_key_file)")


def command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    """A subcommand with the shared options and its examples under --help."""
    return sub.add_parser(name, help=help, parents=[common], epilog=EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coralctl",
        description="Live-debug functions of running services.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{__doc__}\n\n{EXAMPLES['coralctl']}",
    )
    _global_options(p, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command(sub, "ping", "check the colony (or agent) answers", common)
    command(sub, "services", "list services that opted in", common)
    f = command(sub, "functions", "list a service's functions", common)
    f.add_argument("service", help="the service, as coralctl services lists it")
    f.add_argument("--pattern", default="", help="glob, e.g. 'validate_*'")
    debug = sub.add_parser(
        "debug", help="debug sessions", epilog=EXAMPLES["debug"], formatter_class=argparse.RawDescriptionHelpFormatter
    ).add_subparsers(dest="debug_command", required=True, metavar="SUBCOMMAND")
    a = command(debug, "attach", "probe a function and stream its calls", common)
    a.add_argument("service", help="the service, as coralctl services lists it")
    a.add_argument("--function", required=True, action="append", metavar="FUNCTION",
                   help="the function, as coralctl functions lists it: a C or Go symbol, a C++ or Rust name "
                        "(pay::fee), FILE:NAME, LIBRARY:NAME, or module.function for Python. Repeat it, or give "
                        "a pattern ('payments.*'), for several functions at once (at most 16): a row each in the "
                        "summary, and their nested calls as trees")
    a.add_argument("--tree-every", type=positive_int, default=10, metavar="N",
                   help="with several functions: show the nested calls of one outermost call in every N (default 10)")
    a.add_argument(
        "--duration",
        type=positive_duration,
        default=0.0,
        help="90s, 5m, 1m30s (default and maximum: [sessions] in coral.toml, 60s and 600s)",
    )
    a.add_argument(
        "--agent",
        default="",
        metavar="ID",
        help="only this agent (default: every agent running the service; see coralctl services)",
    )
    a.add_argument("--capture-args", action="store_true",
                   help="record each call's arguments (needs the capture right; secrets are redacted)")
    a.add_argument("--capture-return", action="store_true",
                   help="record each call's return value (needs the capture right)")
    a.add_argument("--sample-rate", type=positive_int, default=1, help="report every Nth call")
    a.add_argument("--rate", type=rate_arg, default=0, metavar="N/s",
                   help="report at most N calls a second, decided in the kernel; the rest are counted (lost: rate)")
    a.add_argument("--max-calls", "--max-events", dest="max_events", type=positive_int, default=0,
                   help="stop storing after N calls (--max-events is the same)")
    a.add_argument(
        "--min-duration",
        type=duration_arg,
        default=0.0,
        help="report only calls at least this slow, e.g. 5ms (decided in the kernel)",
    )
    a.add_argument(
        "--slow",
        type=duration_arg,
        default=0.0,
        metavar="DURATION",
        help="mark calls at least this slow (e.g. 500ms) and count them in the summary",
    )
    a.add_argument("--subtract-probe-cost", action="store_true",
                   help="take the probes' own share of each duration (measured by the agent; the summary shows it) "
                        "out of every duration and percentile")
    a.add_argument("--save", metavar="PATH",
                   help="save the session here, as JSON Lines (default: $XDG_STATE_HOME/coral/sessions/SESSION.jsonl; "
                        "coralctl debug show SESSION reopens it)")
    a.add_argument("--no-save", action="store_true", help="do not save the session")
    a.add_argument(
        "--where",
        type=condition_arg,
        default=None,
        metavar="CONDITION",
        help="report only calls for which it holds, e.g. 'amount_cents > 1000 && duration > 5ms' "
             "(arguments, fields, ret, err, raised, duration; see the user guide)",
    )
    a.add_argument(
        "--print",
        dest="template",
        type=template_arg,
        metavar="TEMPLATE",
        help="one line per call, e.g. 'charged {amount} -> {ret} in {duration}': captures the values it names "
             "(arguments, ret, err) and nothing else",
    )
    a.add_argument(
        "--count-by",
        type=key_arg,
        default="",
        metavar="KEY",
        help="count calls, errors and latency by KEY (an argument, arg->field, ret, err), in the kernel; "
             "no call is reported: a table live and at the end (needs the capture right; native functions)",
    )
    a.add_argument("--errors-only", action="store_true",
                   help="report only calls that failed: Python raised, Go err != nil, C++ left by an exception, Rust "
                        "panicked or returned Err (and-ed with --where; not for C++ and Rust)")
    a.add_argument("--stack", action="store_true",
                   help="record each call's user stack (its callers), symbolized; the summary shows the top callers")
    a.add_argument("--stack-depth", type=positive_int, default=0, metavar="N",
                   help="frames kept per stack (default 64, at most 127)")
    a.add_argument("--stack-bytes", type=positive_int, default=0, metavar="N",
                   help="bytes of stack copied per call where there are no frame pointers (default 4096, at most 8192)")
    a.add_argument("--stack-unwind", choices=("fp", "tables"), default="",
                   help="native stacks: walk frame pointers, or unwind a copy with .eh_frame "
                        "(default: frame pointers where the function keeps them)")
    s = command(debug, "sessions", "list debug sessions", common)
    s.add_argument("--active", action="store_true", help="only active sessions")
    s.add_argument("--service", default="", help="only this service's sessions")
    e = command(debug, "events", "show a session's calls", common)
    e.add_argument("session", help="a session id, as coralctl debug sessions lists it")
    e.add_argument("--since", type=duration_arg, default=0.0, help="only the last 5m, 1h, ...")
    e.add_argument("--follow", action="store_true", help="keep showing new calls until the session ends")
    e.add_argument("--slow", type=duration_arg, default=0.0, metavar="DURATION", help="mark calls at least this slow")
    e.add_argument("--subtract-probe-cost", action="store_true",
                   help="take the probes' own share of each duration out of every duration and percentile")
    e.add_argument("--save", metavar="PATH", help="also save the calls and the summary here, as JSON Lines")
    sh = command(debug, "show", "show a session saved by attach, without asking any daemon", common)
    sh.add_argument("session", help="a session id (its file under $XDG_STATE_HOME/coral/sessions), or a file's path")
    sh.add_argument("--slow", type=duration_arg, default=0.0, metavar="DURATION", help="mark calls at least this slow")
    st = command(debug, "stacks", "the call paths of a session started with --stack", common)
    st.add_argument("session", help="a session id, as coralctl debug sessions lists it")
    fg = command(debug, "flamegraph", "a flamegraph of a --stack session's callers, weighted by time", common)
    fg.add_argument("session", help="a session id, as coralctl debug sessions lists it")
    fg.add_argument("-o", dest="flamegraph", metavar="FILE",
                    help="write it here (one HTML file that fetches nothing)")
    d = command(debug, "detach", "end a session now", common)
    d.add_argument("session", help="a session id, as coralctl debug sessions lists it")
    pr = command(sub, "profile", "sample where a service's processes spend their CPU", common)
    pr.add_argument("service", help="the service, as coralctl services lists it")
    pr.add_argument("--duration", type=positive_duration, default=0.0,
                    help="30s, 2m (default 30s; at most [sessions] max_duration, 600s)")
    pr.add_argument("--frequency", type=positive_int, default=0, metavar="HZ",
                    help="samples per second on each CPU (default 99; at most 1000)")
    pr.add_argument("--agent", default="", metavar="ID", help="only this agent (default: every agent running the service)")
    pr.add_argument("-o", dest="flamegraph", metavar="FILE",
                    help="write an interactive flamegraph here (one HTML file that fetches nothing)")
    au = command(sub, "audit", "who asked the colony for what, and what came of it", common)
    au.add_argument("--since", type=duration_arg, default=0.0, help="only the last 1h, 30m, ...")
    au.add_argument("--max", type=positive_int, default=1000, help="at most this many entries (the newest)")
    keys = sub.add_parser("keys", help="CURVE key pairs for tcp links").add_subparsers(
        dest="keys_command", required=True, metavar="SUBCOMMAND"
    )
    g = command(keys, "generate", "write NAME.key (public) and NAME.key_secret (secret, 0600)", common)
    g.add_argument("name", help="the key's name: the colony knows the peer as key:NAME")
    g.add_argument("--dir", default=".", help="where to write the two files (default: here)")
    return p


def generate_keys(args: argparse.Namespace) -> int:
    """`coralctl keys generate`: no daemon involved."""
    out = render.Output(args.output == "json")
    try:
        public_path, secret_path, public = curve.write_key_pair(Path(args.dir), args.name)
    except (ValueError, OSError) as exc:
        print(f"coralctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    fp = curve.fingerprint(public)
    if out.json:
        out.record({"name": args.name, "public_key_file": str(public_path), "secret_key_file": str(secret_path),
                    "public_key": public.decode(), "fingerprint": fp})
        return EXIT_OK
    out.line(f"Wrote the key pair {args.name!r} (fingerprint {fp}):")
    out.line(f"  secret  {secret_path}  (0600) stays on this host: its key_file, or the colony's secret_key_file")
    out.line(f"  public  {public_path}  goes to the colony's agent_keys_dir (an agent) or client_keys_dir (coralctl);")
    out.line("          the colony's own public key goes to every agent and client: their colony_public_key_file")
    return EXIT_OK


class Ctl:
    def __init__(self, args: argparse.Namespace, config: Config) -> None:
        self.args = args
        self.out = render.Output(args.output == "json")
        self.style = render.Style.for_stream(sys.stdout)
        self.slow_ns = round(getattr(args, "slow", 0.0) * 1e9)
        self.subtract = bool(getattr(args, "subtract_probe_cost", False))
        self._counts_shown: tuple[tuple[str, bool, bool, int], ...] = ()  # --count-by: the table last shown
        endpoint = args.endpoint or (config.agent_endpoint if args.local else config.colony_frontend)
        self.target = "agent" if args.local else "colony"
        keys = curve.client_keys(config, endpoint, args.key, args.colony_key)  # ConfigError: tcp without keys
        self.client = Client(endpoint, args.timeout, max_message_bytes=config.limits.max_message_bytes, keys=keys)
        self.show_agent = False  # the session spans several agents: calls name theirs
        self.show_function = False  # several functions at once (coral/ctl/group.py): calls name theirs
        self.max_duration_s = config.sessions.max_duration

    def call(self, method: str, request: Message) -> Any:
        return self.client.call(method, request)

    def ping(self) -> int:
        r = cast(pb.PingResponse, self.call("Ping", pb.PingRequest()))
        if self.out.json:
            self.out.record(render.to_dict(r))
        else:
            self.out.line(f"{r.daemon or self.target} answers at {self.client.endpoint}")
        return EXIT_OK

    def services(self) -> int:
        after, shown = "", 0
        while True:
            r = cast(pb.ListServicesResponse, self.call("ListServices", pb.ListServicesRequest(after=after)))
            for svc in r.services:
                if self.out.json:
                    self.out.record(render.to_dict(svc))
                    continue
                if not shown:
                    self.out.line(f"{'SERVICE':<24} {'PID':>8}  {'KIND':<7} {'AGENT':<16} EXECUTABLE")
                self.out.line(f"{svc.service:<24} {svc.pid:>8}  {svc.kind:<7} {svc.agent_id:<16} {svc.executable}")
                shown += 1
            if not r.next or r.next == after:  # the last page (or a server that does not move on)
                break
            after = r.next
        if not shown and not self.out.json:
            self.out.line("No services registered. Start one under coral-run, or with coral.sdk.init().")
        return EXIT_OK

    def functions(self) -> int:
        r = cast(
            pb.ListFunctionsResponse,
            self.call("ListFunctions", pb.ListFunctionsRequest(service=self.args.service, pattern=self.args.pattern)),
        )
        locations = list(r.locations) + [""] * (len(r.functions) - len(r.locations))  # an older process sends none
        width = max((len(n) for n in r.functions), default=0)
        for name, location in zip(r.functions, locations, strict=False):
            if self.out.json:
                self.out.record({"function": name, "location": location})
            else:
                self.out.line(f"{name:<{width}}  {location}".rstrip())
        if r.truncated and not self.out.json:
            self.out.line("(more functions match; narrow with --pattern)")
        return EXIT_OK

    def attach(self) -> int:
        a = self.args
        only: list[str] = []
        capture_args, capture_return = a.capture_args, a.capture_return
        if a.template is not None:
            if capture_args or capture_return:
                print("coralctl debug attach: error: --print captures what it names; "
                      "leave out --capture-args and --capture-return", file=sys.stderr)
                return EXIT_USAGE
            capture_args, capture_return, only = render.print_captures(a.template)
        cfg = pb.UprobeConfig(
            capture_args=capture_args,
            capture_return=capture_return,
            capture_only=only,
            sample_rate=a.sample_rate,
            rate_per_s=a.rate,
            max_events=a.max_events,
            min_duration_ns=round(a.min_duration * 1e9),
            predicate=a.where or "",
            errors_only=a.errors_only,
            count_by=a.count_by,
            stack=a.stack,
            stack_depth=a.stack_depth,
            stack_bytes=a.stack_bytes,
            stack_unwind=a.stack_unwind,
        )
        if len(a.function) > 1 or group.is_pattern(a.function[0]):
            if a.count_by:
                print("coralctl debug attach: error: --count-by counts one function's calls; name one --function",
                      file=sys.stderr)
                return EXIT_USAGE
            return group.run(self, group.resolve(self.call, a.service, a.function), cfg)
        [function] = a.function
        r = cast(
            pb.AttachUprobeResponse,
            self.call(
                "AttachUprobe",
                pb.AttachUprobeRequest(
                    service=a.service, function=function, duration_ms=round(a.duration * 1000), config=cfg, agent_id=a.agent
                ),
            ),
        )
        session = r.session
        self.show_agent = len(session.parts) > 1
        if self.out.json:
            self.out.record({"kind": "session", **render.to_dict(session)})
        else:
            captures = [w for w, on in (("arguments", capture_args), ("return values", capture_return)) if on]
            if only:
                captures = [", ".join(only)]
            if session.stack_unwind:
                captures.append(f"stacks ({STACK_UNWINDS.get(session.stack_unwind, session.stack_unwind)})")
            running = [p for p in session.parts if p.session.status == "active"]
            where = (
                f"on {len(running)} agents: "
                + "; ".join(f"{p.agent_id} pids {', '.join(map(str, p.session.pids))}" for p in running)
                if len(running) > 1
                else f"pids {', '.join(map(str, session.pids))}"
            )
            self.out.line(
                f"Debug session {session.session_id} started: {session.service} {session.function} "
                f"({where}, {session.probes} probes)"
            )
            if "ret" in session.return_probe.split(","):
                self.out.line("Returns: a uprobe on each RET of the function (it may be unwound through, or its stack "
                              "moved, so a uretprobe is not used)")
            if session.inlined_into:
                self.out.line(self.style.yellow(f"Inlined: {render.inlined(list(session.inlined_into))}"))
            for p in session.parts:
                if p.session.status == "failed":
                    self.out.line(self.style.red(f"Agent {p.agent_id} did not start it: {p.session.status_reason}"))
            self.out.line(
                f"Duration: {render.format_ns(session.expires_unix_ns - session.started_unix_ns)}"
                + (f"; capturing {' and '.join(captures)}" if captures else "")
                + ". Ctrl-C detaches."
            )
        final, summary, tally, sink = self._watch(session.session_id, save_default=True, started=session)
        if self.out.json:
            self.out.record(render.summary_dict(summary, final, tally))
        else:
            reason = f" ({final.status_reason})" if final.status_reason else ""
            self.out.line(f"Session {final.session_id} {final.status}{reason}. {final.calls} calls stored.")
            for line in render.format_summary(summary, final, tally, self.slow_ns, self.style):
                self.out.line(line)
            if sink is not None:
                self.out.line(f"Saved to {sink.path} (coralctl debug show {final.session_id})")
        return EXIT_OK

    def _watch(
        self, session_id: str, save_default: bool, follow: bool = True, since_ns: int = 0,
        started: pb.DebugSession | None = None,
    ) -> tuple[pb.DebugSession, render.Summary, render.Tally, SessionFile | None]:
        """Show a session's calls (following it while it runs, if asked),
        saving them if asked; returns the final session and its summary."""
        durations: list[int] = []
        tally = render.Tally()
        sink = self._session_file(session_id, save_default)
        if sink is not None and started is not None:
            sink.record({"kind": "session", **render.to_dict(started)})

        def seen(call: pb.Call) -> None:
            tally.add(call, self.slow_ns)
            durations.append(call.duration_ns)
            if sink is not None:
                sink.call(call)

        try:
            final = self._follow(session_id, seen, since_ns, stop_when_drained=not follow)
        except BrokenPipeError:
            if follow:
                self.call("DetachUprobe", pb.DetachUprobeRequest(session_id=session_id))  # nobody is watching
            raise
        except BaseException:
            if sink is not None:
                sink.close()
            raise
        summary = render.summarize_session(final, durations, self.subtract)
        if sink is not None:
            sink.record({"kind": "session", **render.to_dict(final)})
            sink.record(render.summary_dict(summary, final, tally))
            sink.close()
        return final, summary, tally, sink

    def _session_file(self, session_id: str, save_default: bool) -> SessionFile | None:
        """--save PATH; by default (attach, text output) the state directory,
        never the working directory."""
        if getattr(self.args, "no_save", False):
            return None
        path = getattr(self.args, "save", None)
        if path is None and save_default and not self.out.json:
            return SessionFile(sessions_dir() / f"{session_id}.jsonl")
        return SessionFile(Path(path)) if path else None

    def _follow(
        self, session_id: str, seen: Callable[[pb.Call], None], since_ns: int = 0, stop_when_drained: bool = False,
        show: bool = True,
    ) -> pb.DebugSession:
        """Print calls as they arrive until the session has ended and all
        its calls are shown. Ctrl-C detaches the session, then drains."""
        cursor = 0
        detached = False
        # The daemon answers as soon as a call after the cursor is there (or
        # the session ends); within half the reply timeout either way.
        wait_ms = 0 if stop_when_drained else int(min(FOLLOW_WAIT, self.args.timeout / 2) * 1000)
        while True:
            try:
                asked = time.monotonic()
                q = cast(
                    pb.QueryUprobeEventsResponse,
                    self.call(
                        "QueryUprobeEvents",
                        pb.QueryUprobeEventsRequest(
                            session_id=session_id, cursor=cursor, since_unix_ns=since_ns, max_events=PAGE,
                            wait_ms=wait_ms,
                        ),
                    ),
                )
                self.show_agent = self.show_agent or len(q.session.parts) > 1
                self._show_counts(q.session)
                for call in q.calls:
                    if self.subtract:
                        call.duration_ns = render.without_probe_cost(call.duration_ns, q.session)
                    seen(call)
                    if show:
                        self._print_call(call)
                cursor = q.next_cursor
                if not q.has_more and (stop_when_drained or q.session.status != "active"):
                    return q.session
                if not q.calls and not wait_ms:  # a drained session's last calls are still being pulled
                    time.sleep(0.05)
                elif not q.calls and time.monotonic() - asked < wait_ms / 2000:
                    time.sleep(FOLLOW_BACKOFF)  # answered at once with nothing: not held (an older daemon, or full)
            except KeyboardInterrupt:
                if detached:
                    raise
                detached = True
                self.call("DetachUprobe", pb.DetachUprobeRequest(session_id=session_id))

    def _show_counts(self, session: pb.DebugSession) -> None:
        """--count-by: the table again whenever its counts changed (at most once a poll)."""
        if not session.config.count_by or session.status != "active":
            return
        seen = tuple((r.key, r.overflow, r.unread, r.calls) for r in session.counts)
        if seen == self._counts_shown:
            return
        self._counts_shown = seen
        if self.out.json:
            self.out.record(render.counts_dict(session))
            return
        self.out.line(f"{render.clock(time.time_ns())} {session.total_calls} calls")
        for line in render.format_counts(session, self.style):
            self.out.line(line)

    def _print_call(self, call: pb.Call) -> None:
        template = getattr(self.args, "template", None)
        if self.out.json:
            printed = {"line": render.format_printed(call, template)} if template is not None else {}
            self.out.record({"kind": "call", **render.to_dict(call), **printed})
        elif template is not None:
            self.out.line(render.format_printed(call, template))
        else:
            for line in render.format_call(call, self.slow_ns, self.style, self.show_agent, self.show_function):
                self.out.line(line)

    def sessions(self) -> int:
        r = cast(
            pb.ListDebugSessionsResponse,
            self.call("ListDebugSessions", pb.ListDebugSessionsRequest(service=self.args.service, active_only=self.args.active)),
        )
        if self.out.json:
            for s in r.sessions:
                self.out.record(render.to_dict(s))
            return EXIT_OK
        if not r.sessions:
            self.out.line("No debug sessions.")
            return EXIT_OK
        self.out.line(
            f"{'SESSION':<18} {'SERVICE':<16} {'FUNCTION':<24} {'AGENT':<12} {'STARTED':<12} "
            f"{'EXPIRES/ENDED':<13} {'CALLS':>7}  STATUS"
        )
        for s in r.sessions:
            status = s.status + (f" ({s.status_reason})" if s.status_reason else "")
            ends = s.ended_unix_ns or s.expires_unix_ns
            agent = s.agent_id or f"{len(s.parts)} agents"
            self.out.line(
                f"{s.session_id:<18} {s.service:<16} {s.function or ('(cpu profile)' if s.cpu_profile else ''):<24} {agent:<12} "
                f"{render.clock(s.started_unix_ns):<12} {render.clock(ends):<13} {s.total_calls or s.calls:>7}  "
                f"{status}"
            )
            if len(s.parts) > 1:
                for p in render.agents_of(s):
                    part = p["status"] + (f" ({p['status_reason']})" if p["status_reason"] else "")
                    self.out.line(
                        f"  └─ agent {p['agent_id']:<16} pids {','.join(map(str, p['pids'])) or '-':<14} "
                        f"{p['calls']:>7} calls  {part}"
                    )
        return EXIT_OK

    def events(self) -> int:
        since = time.time_ns() - int(self.args.since * 1e9) if self.args.since else 0
        final, summary, tally, sink = self._watch(self.args.session, save_default=False, follow=self.args.follow, since_ns=since)
        if self.out.json:
            self.out.record(render.summary_dict(summary, final, tally))
        else:
            for line in render.format_summary(summary, final, tally, self.slow_ns, self.style):
                self.out.line(line)
            if sink is not None:
                self.out.line(f"Saved to {sink.path}")
        return EXIT_OK

    def audit(self) -> int:
        since = time.time_ns() - int(self.args.since * 1e9) if self.args.since else 0
        r = cast(pb.ListAuditResponse, self.call("ListAudit", pb.ListAuditRequest(since_unix_ns=since,
                                                                                  max_entries=self.args.max)))
        if self.out.json:
            for e in r.entries:
                self.out.record(render.to_dict(e))
            return EXIT_OK
        self.out.line(f"{'TIME':<12} {'WHO':<10} {'PID':>7}  {'METHOD':<18} {'SERVICE':<14} {'FUNCTION':<24} OUTCOME")
        for e in r.entries:
            outcome = e.outcome if e.outcome == "OK" else self.style.red(f"{e.outcome}: {e.detail}")
            who = f"{e.who} ({e.client_label})" if e.client_label else e.who  # a label the client gave, not an identity
            self.out.line(f"{render.clock(e.timestamp_unix_ns):<12} {who:<10} {e.peer_pid:>7}  {e.method:<18} "
                          f"{e.service:<14} {e.function:<24} {outcome}")
        if r.truncated:
            self.out.line("(older entries not shown; use --max or --since)")
        return EXIT_OK

    def profile(self) -> int:
        return profile_command.run(self.args, lambda m, r, t: self.client.call(m, r, timeout=t), self.out,
                                   self.max_duration_s)

    def _all_calls(self, session_id: str) -> tuple[pb.DebugSession, list[pb.Call]]:
        """Every call of the session stored so far, not printed."""
        calls: list[pb.Call] = []
        final = self._follow(session_id, calls.append, stop_when_drained=True, show=False)
        return final, calls

    def stacks(self) -> int:
        session, calls = self._all_calls(self.args.session)
        return stacks_command.show_stacks(session, calls, self.args.output, self.out)

    def flamegraph(self) -> int:
        session, calls = self._all_calls(self.args.session)
        return stacks_command.write_flamegraph(session, calls, self.args.output, self.args.flamegraph, self.out)

    def detach(self) -> int:
        r = cast(pb.DetachUprobeResponse, self.call("DetachUprobe", pb.DetachUprobeRequest(session_id=self.args.session)))
        if self.out.json:
            self.out.record(render.to_dict(r.session))
        else:
            self.out.line(f"Session {r.session.session_id} {r.session.status}.")
        return EXIT_OK


def complete_words(argv: list[str]) -> int:
    """`coralctl __complete CWORD WORD...`: what the shell may offer at
    WORD number CWORD, one per line (etc/coralctl.bash, etc/_coralctl)."""
    if not argv or not argv[0].isdigit():
        return EXIT_USAGE
    cword, words = int(argv[0]), argv[1:]
    parser = build_parser()
    pos = complete.locate(parser, words[1:cword])

    def ask(what: str, detail: str) -> list[str]:
        if what == "saved":
            return sorted(p.stem for p in sessions_dir().glob("*.jsonl")) if sessions_dir().is_dir() else []
        given = {k[2:].replace("-", "_"): v for k, v in pos.options.items()}
        ns = argparse.Namespace(**{**GLOBAL_DEFAULTS, **{k: v for k, v in given.items() if k in GLOBAL_DEFAULTS}})
        ns.local, ns.timeout, ns.output = "--local" in pos.flags, complete.ASK_TIMEOUT, "text"
        try:
            ctl = Ctl(ns, load_config(ns.config))
            if what in ("services", "agents"):
                r = cast(pb.ListServicesResponse, ctl.call("ListServices", pb.ListServicesRequest()))
                return [s.service if what == "services" else s.agent_id for s in r.services]
            if what == "functions":
                service, typed = detail.split("\0", 1)
                f = cast(pb.ListFunctionsResponse, ctl.call("ListFunctions", pb.ListFunctionsRequest(
                    service=service, pattern=typed + "*", max_results=1000)))
                return list(f.functions)
            if what == "sessions":
                d = cast(pb.ListDebugSessionsResponse, ctl.call("ListDebugSessions", pb.ListDebugSessionsRequest()))
                return [x.session_id for x in d.sessions]
        except (ConfigError, CoralError, HandshakeFailed, Unreachable, OSError):
            return []  # a Tab press offers nothing rather than an error
        return []

    for candidate in complete.candidates(parser, words, cword, ask):
        print(candidate)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["__complete"]:
        return complete_words(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "keys":
        return generate_keys(args)
    if args.command == "debug" and args.debug_command == "show":
        return show_saved(args)
    if args.output == "folded" and args.command != "profile" and \
            getattr(args, "debug_command", "") not in ("stacks", "flamegraph"):
        print("coralctl: error: --output folded is for coralctl profile, debug stacks and debug flamegraph",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(args.config)
        ctl = Ctl(args, config)
    except ConfigError as exc:
        print(f"coralctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    command = args.debug_command if args.command == "debug" else args.command
    run = {
        "ping": ctl.ping,
        "services": ctl.services,
        "functions": ctl.functions,
        "attach": ctl.attach,
        "sessions": ctl.sessions,
        "events": ctl.events,
        "detach": ctl.detach,
        "stacks": ctl.stacks,
        "flamegraph": ctl.flamegraph,
        "audit": ctl.audit,
        "profile": ctl.profile,
    }[command]
    try:
        return run()
    except HandshakeFailed as exc:
        print(f"coralctl: cannot talk to the {ctl.target}: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Unreachable as exc:
        hint = (
            "is coral-agentd running?"
            if args.local
            else "is coral-colonyd running? (use --local to talk to this host's agent directly)"
        )
        print(f"coralctl: cannot reach the {ctl.target}: {exc.message}; {hint}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CoralError as exc:
        print(f"coralctl: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): end quietly; an attach's session
        # still ends by itself at its expiry.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        ctl.client.close()


if __name__ == "__main__":
    sys.exit(main())
