"""Every message in docs/troubleshooting.md is printed, word for word, by the
real tools: the page is the source of truth. Each documented message is
provoked here with real daemons, real sockets and real target processes,
and the output must hold a line that ends with the documented text, where a
`<placeholder>` stands for any text. A documented message nobody provokes
fails; so does a provoker whose message is not documented.

How the page marks a message (the parser below): a `###` heading made only
of code spans joined by " / " (an optional "Log: " before it), or a
code span in the first column of a table whose first header is
"message"."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from coral.daemon import curve, wire
from coral.daemon.client import Client
from coral.daemon.errors import CoralError
from coral.proto import coral_pb2 as pb
from tests.harness import (
    REPO,
    CoralEnv,
    NativeService,
    Process,
    build_c,
    coralctl,
    start_agent,
    start_colony,
    tool,
)
from tests.test_names import build_names
from tests.test_native_capture import build as build_greeter
from tests.test_native_capture import run_service
from tests.test_native_e2e import wait_for_service
from tests.test_python_e2e import PythonService

pytestmark = pytest.mark.system  # provokes each message against real daemons

DOC = REPO / "docs" / "troubleshooting.md"
PLACEHOLDER = re.compile(r"<[a-z][a-z0-9 _.-]*>")
CODE_SPAN = re.compile(r"`([^`]+)`")


def documented_messages(text: str) -> list[str]:
    messages: list[str] = []
    in_message_table = False
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:].strip().removeprefix("Log: ")
            spans = title.split(" / ")
            if all(re.fullmatch(r"`[^`]+`", s) for s in spans):
                messages += [s[1:-1] for s in spans]
            continue
        if not line.startswith("|"):
            in_message_table = False
            continue
        first = line.strip("|").split(" | ")[0].strip()
        if first == "message":
            in_message_table = True
        elif in_message_table and re.fullmatch(r"`[^`]+`", first):
            messages.append(first[1:-1])
    return messages


def message_pattern(template: str) -> re.Pattern[str]:
    """A documented message as a regular expression: literal text, any text
    for each placeholder, at the end of a line, starting at the line's start
    or after a program's prefix (`coralctl: `)."""
    literal = PLACEHOLDER.split(template)
    body = ".+?".join(re.escape(part) for part in literal)
    return re.compile(rf"(?:^|: ){body}$", re.MULTILINE)


def test_placeholders_match_text_and_nothing_else() -> None:
    p = message_pattern("service '<name>' not found (known services: <services>)")
    assert p.search("coralctl: service 'x' not found (known services: a, b)")
    assert not p.search("coralctl: service 'x' not found (known services: a, b) and more")
    assert not p.search("coralctl: service not found (known services: a)")
    assert documented_messages("### Log: `a <x>` / `b`\n| message | fix |\n|---|---|\n| `c` | d |\n\n| `e` | f |\n") == [
        "a <x>",
        "b",
        "c",
    ]


# --- the world the messages are provoked in --------------------------------


@dataclass
class World:
    """One colony, one agent and their services, shared by the cases that do
    not disturb them."""

    env: CoralEnv
    colony: Process
    agent: Process
    payments: NativeService
    greeter: Process
    stripped: Process
    python: PythonService


@pytest.fixture(scope="module")
def world(bpf: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    bins = tmp_path_factory.mktemp("bins")
    env = CoralEnv.create()
    os.chmod(env.root, 0o755)  # other users reach the sockets (they are 0660 root:coral)
    colony = start_colony(env)
    agent = start_agent(env)
    payments = NativeService(env, build_c(REPO / "examples" / "native" / "payments.c", bins / "payments"))
    greeter = run_service(env, "greeter", build_greeter(bins))
    stripped = run_service(env, "stripped", build_greeter(bins, "-s"))
    python = PythonService(env)
    try:
        for service in ("payments", "greeter", "stripped", "payments-api"):
            wait_for_service(env, service)
        yield World(env, colony, agent, payments, greeter, stripped, python)
    finally:
        python.stop()
        for proc in (stripped, greeter):
            if proc.proc.stdin:
                proc.proc.stdin.close()
            proc.stop()
        payments.stop()
        agent.stop()
        colony.stop()
        env.remove()


@pytest.fixture
def fresh_env() -> Iterator[CoralEnv]:
    env = CoralEnv.create()
    yield env
    env.remove()


def ctl(env: CoralEnv, *args: str, code: int) -> str:
    out = coralctl(env, *args)
    assert out.returncode == code, (args, out.returncode, out.stdout, out.stderr)
    return out.stderr


def write_config(env: CoralEnv, text: str) -> None:
    path = env.root / "coral.toml"
    env.root.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    env.env["CORAL_CONFIG"] = str(path)


def as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv]


def run_tool(env: CoralEnv, argv: list[str], code: int, timeout: float = 60) -> str:
    out = subprocess.run(argv, env=env.env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == code, (argv, out.returncode, out.stderr)
    return out.stderr


def log_line_after(proc: Process, wanted: str, trigger: Callable[[], object] | None = None, timeout: float = 30) -> str:
    """Wait for a daemon's log to show a line (the log is a file; each look
    is a read, and the daemon's own clock decides when it writes)."""
    if trigger is not None:
        trigger()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = proc.output()
        if wanted in out:
            return out
        time.sleep(0.1)  # between two reads of the log file; not readiness: the line itself is awaited
    raise AssertionError(f"{proc.name} never logged {wanted!r}:\n{proc.output()}")


Provoker = Callable[[pytest.FixtureRequest], str]
PROVOKERS: dict[str, Provoker] = {}


def provokes(*templates: str) -> Callable[[Provoker], Provoker]:
    def register(fn: Provoker) -> Provoker:
        for t in templates:
            assert t not in PROVOKERS, t
            PROVOKERS[t] = fn
        return fn

    return register


def the_world(request: pytest.FixtureRequest) -> World:
    w: World = request.getfixturevalue("world")
    return w


def an_env(request: pytest.FixtureRequest) -> CoralEnv:
    e: CoralEnv = request.getfixturevalue("fresh_env")
    return e


# --- coralctl ---------------------------------------------------------------


@provokes(
    "cannot reach the colony: no reply from ipc://<dir>/colony/colony.sock (no socket file there) within <timeout>; "
    "is coral-colonyd running? (use --local to talk to this host's agent directly)"
)
def _no_colony(request: pytest.FixtureRequest) -> str:
    return ctl(an_env(request), "--timeout", "1s", "services", code=3)


@provokes(
    "cannot reach the colony: no reply from ipc://<dir>/colony/colony.sock within <timeout>; "
    "is coral-colonyd running? (use --local to talk to this host's agent directly)"
)
def _colony_stopped(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    colony = start_colony(env)
    colony.proc.send_signal(signal.SIGSTOP)
    try:
        return ctl(env, "--timeout", "500ms", "services", code=3)
    finally:
        colony.proc.send_signal(signal.SIGCONT)
        colony.stop()


@provokes(
    "cannot reach the agent: no reply from ipc://<dir>/agent.sock (no socket file there) within <timeout>; "
    "is coral-agentd running?"
)
def _no_agent(request: pytest.FixtureRequest) -> str:
    return ctl(an_env(request), "--local", "--timeout", "1s", "services", code=3)


@provokes("service '<name>' not found (known services: <services>)")
def _service_not_found(request: pytest.FixtureRequest) -> str:
    out = ctl(the_world(request).env, "debug", "attach", "paymnts", "--function", "f", code=1)
    assert "(known services: greeter, payments, payments-api, stripped)" in out
    return out


@provokes("service '<name>' not found (no services registered)")
def _no_services(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    colony = start_colony(env)
    try:
        return ctl(env, "debug", "attach", "payments", "--function", "f", code=1)
    finally:
        colony.stop()


@provokes("service '<name>' is not registered on agent <agent> (registered: <services>)")
def _not_on_agent(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "--local", "debug", "attach", "paymnts", "--function", "f", code=1)


@provokes("service '<name>' is not registered on agent <agent> (no services registered)")
def _nothing_on_agent(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    request.getfixturevalue("bpf")
    agent = start_agent(env)
    try:
        return ctl(env, "--local", "debug", "attach", "payments", "--function", "f", code=1)
    finally:
        agent.stop()


@provokes("user <user> may not <right> (needs [access] <right>, which admits <who>)")
def _access_denied(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    # nobody holds the coral group (so it may open the socket) but is not in
    # it by name: [access] list = ["@coral"] does not admit it.
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--groups=coral", "--", tool("coralctl"), "services"]
    out = run_tool(w.env, argv, code=1)
    assert out == "coralctl: user nobody may not list (needs [access] list, which admits @coral)\n", out
    return out


@provokes("function '<function>' not found in service '<service>' (pid <pid>); closest: <names>")
def _function_closest(request: pytest.FixtureRequest) -> str:
    out = ctl(the_world(request).env, "debug", "attach", "payments", "--function", "validate_crd", code=1)
    assert out.endswith("; closest: validate_card\n"), out
    return out


@provokes("function '<function>' not found in service '<service>' (pid <pid>); list them with: coralctl functions <service>")
def _function_none_close(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "debug", "attach", "payments", "--function", "zzzzzzzzzzzzzz", code=1)


@provokes("'<name>' names <n> functions in <path>; name one: <names>")
def _ambiguous_name(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    binary = build_names(request.getfixturevalue("tmp_path"))
    run = run_service(w.env, "statics", binary)
    try:
        wait_for_service(w.env, "statics")
        out = ctl(w.env, "debug", "attach", "statics", "--function", "helper", code=1)
    finally:
        run.stop()
    assert out.endswith("; name one: fees.c:helper, names.c:helper\n"), out
    return out


@provokes("/proc/<pid>/exe is stripped (no symbol table): rebuild without -s, or keep the debug symbols")
def _stripped(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "debug", "attach", "stripped", "--function", "greet", code=1)


@provokes("<function> is fully inlined (no out-of-line copy to probe): mark it noinline to debug it")
def _inlined(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "debug", "attach", "greeter", "--function", "tiny", code=1)


@provokes("duration <requested>s exceeds the maximum of <max>s; ask for <max>s or less")
def _too_long(request: pytest.FixtureRequest) -> str:
    out = ctl(the_world(request).env, "debug", "attach", "payments", "--function", "validate_card", "--duration", "11m", code=1)
    assert out == "coralctl: duration 660s exceeds the maximum of 600s; ask for 600s or less\n"
    return out


@provokes("coralctl debug attach: error: argument --duration: invalid duration '<text>': use forms like 90s, 5m, 1m30s or 500ms")
def _bad_duration(request: pytest.FixtureRequest) -> str:
    return ctl(an_env(request), "debug", "attach", "s", "--function", "f", "--duration", "10x", code=2)


@provokes("coralctl debug attach: error: argument --duration: duration '<text>' must be at least 1ms")
def _zero_duration(request: pytest.FixtureRequest) -> str:
    return ctl(an_env(request), "debug", "attach", "s", "--function", "f", "--duration", "0", code=2)


@provokes("coralctl debug attach: error: argument --sample-rate: expected a positive whole number, got '<text>'")
def _zero_rate(request: pytest.FixtureRequest) -> str:
    return ctl(an_env(request), "debug", "attach", "s", "--function", "f", "--sample-rate", "0", code=2)


@provokes("coralctl debug attach: error: argument --where: '<text>', column <n>: <what is wrong>")
def _bad_condition(request: pytest.FixtureRequest) -> str:
    out = ctl(an_env(request), "debug", "attach", "s", "--function", "f", "--where", "amount_cents > lots lots", code=2)
    assert "'amount_cents > lots lots', column 21: unexpected 'lots' (join tests with && or ||)" in out, out
    return out


def _where(request: pytest.FixtureRequest, service: str, function: str, condition: str) -> str:
    return ctl(the_world(request).env, "debug", "attach", service, "--function", function, "--where", condition, code=1)


@provokes("--where '<text>', column <n>: <function> has no argument '<name>'; its arguments are: <names>")
def _where_name(request: pytest.FixtureRequest) -> str:
    out = _where(request, "payments", "validate_card", "amount_cents > 1 && x > 1")
    assert out == ("coralctl: --where 'amount_cents > 1 && x > 1', column 21: validate_card has no argument 'x'; "
                   "its arguments are: card_number, amount_cents\n"), out
    return out


@provokes("--where '<text>', column <n>: <name> is a string (<type>): compare it with == or != to a quoted string, "
          'or use startswith(<name>, "...")')
def _where_string(request: pytest.FixtureRequest) -> str:
    return _where(request, "greeter", "greet", "name == 1")


@provokes("--where '<text>', column <n>: err is a Go function's error result; <function> is not Go: test its return "
          "value, e.g. ret < 0")
def _where_err(request: pytest.FixtureRequest) -> str:
    return _where(request, "payments", "validate_card", "err != nil")


@provokes("--where '<text>', column <n>: raised is for Python functions; <function> is <language>, whose exceptions "
          "and panics are not values a probe can test (calls they end are counted as unwound): test its result "
          "instead (ret < 0; err != nil in Go)")
def _where_raised(request: pytest.FixtureRequest) -> str:
    return _where(request, "payments", "validate_card", "raised")


@provokes("--where '<text>', column <n>: <name> is redacted (its name is a secret's): a condition on it would reveal it")
def _where_native_redacted(request: pytest.FixtureRequest) -> str:
    return _where(request, "payments", "validate_card", "card_number == 7")


def _python_where(request: pytest.FixtureRequest, condition: str, *more: str) -> str:
    return ctl(the_world(request).env, "debug", "attach", "payments-api", "--function", "payments.validate_card",
               "--where", condition, *more, code=1)


@provokes("--where '<text>', column <n>: <function> has no parameter '<name>'; its parameters are: <names>")
def _where_python_name(request: pytest.FixtureRequest) -> str:
    out = _python_where(request, "amount > 1 && amout < 5")
    assert ("--where 'amount > 1 && amout < 5', column 15: payments.validate_card has no parameter 'amout'; "
            "its parameters are: card, amount") in out, out
    return out


@provokes("--where '<text>', column <n>: '<name>' is redacted; a condition on it would reveal it")
def _where_redacted(request: pytest.FixtureRequest) -> str:
    return _python_where(request, 'startswith(card, "4111")')


@provokes("--where '<text>', column <n>: err is a Go function's error result; for Python write raised or "
          "raised(ValueError)")
def _where_err_on_python(request: pytest.FixtureRequest) -> str:
    return _python_where(request, "err != nil")


@provokes("<function> in pid <pid> is watched by <session> with <condition>; a Python function runs one condition "
          "at a time: attach with the same --where, or detach that session first")
def _where_one_condition(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    first = subprocess.Popen([tool("coralctl"), "--output", "json", "debug", "attach", "payments-api", "--function",
                              "payments.validate_card", "--duration", "30s", "--where", "amount > 100"],
                             env=w.env.env, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None
        session = json.loads(first.stdout.readline())["session_id"]
        out = _python_where(request, "amount > 200")
        assert f"is watched by session {session} with --where 'amount > 100'" in out, out
        return out
    finally:
        ctl(w.env, "debug", "detach", session, code=0)
        first.communicate(timeout=30)


@provokes("--errors-only: C has no error convention, so <name> has no failed calls to pick; say what failure "
          "means with --where, e.g. --where 'ret < 0'")
def _errors_only_c(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "debug", "attach", "payments", "--function", "validate_card", "--errors-only",
               code=1)


@provokes("'<name>' is not a qualified function name like 'package.module.function'")
def _python_unqualified(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "debug", "attach", "payments-api", "--function", "validate_card", code=1)


@provokes(
    "<name> is implemented in C (<type>); the Python probe can only arm functions written in Python "
    "(attach to the native symbol in its shared library instead)"
)
def _python_builtin(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "debug", "attach", "payments-api", "--function", "time.sleep", code=1)


@provokes("<name> is a class; arm one of its methods instead, e.g. <name>.__init__")
def _python_class(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "debug", "attach", "payments-api", "--function", "http.server.HTTPServer", code=1)


@provokes("<name> is a property; arming property getters is not supported")
def _python_property(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "debug", "attach", "payments-api", "--function", "pathlib.PurePath.name", code=1)


@provokes("agent '<agent>' of session <id> is not connected")
def _session_agent_gone(request: pytest.FixtureRequest) -> str:
    # An agent lost while the colony runs has its part lost at once (detach
    # is then answered with the session as it is); a colony that restarts knows the session from its
    # database but has not heard from the agent yet.
    env = an_env(request)
    request.getfixturevalue("bpf")
    colony = start_colony(env)
    agent = start_agent(env)
    svc = NativeService(env, build_c(REPO / "examples" / "native" / "payments.c", env.root / "payments"))
    again: Process | None = None
    try:
        wait_for_service(env, "payments")
        session = start_attach_and_leave(env, "--duration", "60s")
        agent.proc.send_signal(signal.SIGSTOP)
        colony.stop()
        again = start_colony(env)
        out = ctl(env, "debug", "detach", session, code=1)
        assert out == f"coralctl: agent '{os.uname().nodename}' of session {session} is not connected\n", out
        return out
    finally:
        agent.proc.send_signal(signal.SIGCONT)
        svc.stop()
        agent.stop()
        if again is not None:
            again.stop()
        colony.stop()


def start_attach_and_leave(env: CoralEnv, *flags: str) -> str:
    """Start a session and stop following it: the session runs on."""
    p = subprocess.Popen(
        [tool("coralctl"), "--output", "json", "debug", "attach", "payments", "--function", "validate_card", "--no-save", *flags],
        env=env.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    first = json.loads(p.stdout.readline())
    assert first["kind"] == "session", first
    p.kill()
    p.wait()
    return str(first["session_id"])


@provokes("no session '<id>'")
def _no_session(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "debug", "events", "dbg-nope", code=1)


@provokes("no session '<id>' on agent <agent>")
def _no_session_on_agent(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "--local", "debug", "detach", "dbg-nope", code=1)


@provokes("a function name is required")
def _empty_function(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "debug", "attach", "payments", "--function", "", code=1)


@provokes("process <pid> of service '<service>' did not answer at ipc://<dir>/procs/<pid>.sock")
def _process_stopped(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    w.greeter.proc.send_signal(signal.SIGSTOP)  # the coral-run launcher, not its child
    try:
        return ctl(w.env, "functions", "greeter", code=1)
    finally:
        w.greeter.proc.send_signal(signal.SIGCONT)


@provokes("agent <agent> already runs <n> sessions (limit <limit>)")
def _session_limit(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    request.getfixturevalue("bpf")
    write_config(env, "[sessions]\nmax_sessions_per_agent = 1\n")
    agent = start_agent(env)
    svc = NativeService(env, build_c(REPO / "examples" / "native" / "payments.c", env.root / "payments"))
    try:
        start_attach_and_leave(env, "--local", "--duration", "20s")  # runs on without its coralctl
        out = ctl(env, "--local", "debug", "attach", "payments", "--function", "validate_card", code=1)
        assert out == f"coralctl: agent {os.uname().nodename} already runs 1 sessions (limit 1)\n"
        return out
    finally:
        svc.stop()
        agent.stop()


@provokes("all <n> probe slots are in use")
def _probe_slots(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    request.getfixturevalue("bpf")
    write_config(env, "[sessions]\nmax_sessions_per_agent = 65\n")
    agent = start_agent(env)
    svc = NativeService(env, build_c(REPO / "examples" / "native" / "payments.c", env.root / "payments"))
    try:
        with Client(env.endpoint("agent.sock"), 30) as c:
            for _ in range(64):
                c.call("AttachUprobe", pb.AttachUprobeRequest(service="payments", function="validate_card"))
        return ctl(env, "--local", "debug", "attach", "payments", "--function", "validate_card", code=1)
    finally:
        svc.stop()
        agent.stop()


@provokes("uid:<uid> may not arm functions in pid <pid>")
def _arm_refused(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    sock = w.env.endpoint(f"procs/{w.python.proc.pid}.sock")
    code = (
        "import sys\n"
        "from coral.daemon.client import Client\n"
        "from coral.daemon.errors import CoralError\n"
        "from coral.proto import coral_pb2 as pb\n"
        "try:\n"
        "    Client(sys.argv[1], 10).call('ArmFunction', pb.ArmFunctionRequest(function='payments.validate_card'))\n"
        "except CoralError as exc:\n"
        "    sys.exit(exc.message)\n"
    )
    # nobody may open the socket (group coral) but is neither root, the
    # process's user, nor of the coral group by its own gid.
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--groups=coral", "--", sys.executable, "-c", code, sock]
    return run_tool(w.env, argv, code=1)


def bounded_agent_error(request: pytest.FixtureRequest, without: str) -> str:
    """The error an attach meets when the agent runs without one of the
    unit's capabilities (bench/caps.py, one row)."""
    from bench.caps import try_capabilities, unit_setting

    request.getfixturevalue("bpf")
    bins = Path(tempfile.mkdtemp(prefix="coral-caps-", dir="/tmp"))
    try:
        os.chmod(bins, 0o755)
        binary = build_c(REPO / "examples" / "native" / "payments.c", bins / "payments")
        outcome = try_capabilities([c for c in unit_setting("CapabilityBoundingSet") if c != without], binary)
    finally:
        shutil.rmtree(bins, ignore_errors=True)
    assert not outcome.works, outcome
    return outcome.error


@provokes("cannot stat /proc/<pid>/exe: Permission denied")
def _no_ptrace(request: pytest.FixtureRequest) -> str:
    return bounded_agent_error(request, "CAP_SYS_PTRACE")


@provokes("ERROR coral.daemon.runtime: fatal: Need super-user privileges to run")
def _no_perfmon(request: pytest.FixtureRequest) -> str:
    return bounded_agent_error(request, "CAP_PERFMON")


@provokes("ERROR coral.daemon.runtime: fatal: Failed to compile BPF module <path>")
def _no_cap_bpf(request: pytest.FixtureRequest) -> str:
    return bounded_agent_error(request, "CAP_BPF")


@provokes("agent <agent> was lost (silent for <n>s) before answering <method>")
def _agent_lost(request: pytest.FixtureRequest) -> str:
    with colony_and_agent(request, payments=True) as (_, agent):
        agent.proc.send_signal(signal.SIGSTOP)
        return ctl(an_env(request), "functions", "payments", code=1)


def wait_for_agent(agent: Process) -> None:
    log_line_after(agent, "connected to colony")


@contextlib.contextmanager
def colony_and_agent(request: pytest.FixtureRequest, payments: bool = False) -> Iterator[tuple[Process, Process]]:
    """A private colony and agent (and the C payments service if asked),
    connected; whatever a provoker paused is resumed and everything stopped."""
    env = an_env(request)
    request.getfixturevalue("bpf")
    colony = start_colony(env)
    agent = start_agent(env)
    svc = NativeService(env, build_c(REPO / "examples" / "native" / "payments.c", env.root / "payments")) if payments else None
    try:
        if svc is not None:
            wait_for_service(env, svc.service)
        else:
            wait_for_agent(agent)
        yield colony, agent
    finally:
        for proc in (agent, colony):
            proc.proc.send_signal(signal.SIGCONT)
        if svc is not None:
            svc.stop()
        agent.stop()
        colony.stop()


@provokes("agent <agent> did not answer <method> within <n>s")
def _agent_slow(request: pytest.FixtureRequest) -> str:
    write_config(an_env(request), "[limits]\nrequest_timeout = 1.0\n")
    with colony_and_agent(request, payments=True) as (_, agent):
        agent.proc.send_signal(signal.SIGSTOP)
        out = ctl(an_env(request), "functions", "payments", code=1)
        assert out == f"coralctl: agent {os.uname().nodename} did not answer ListFunctions within 1s\n"
        return out


@provokes("method '<name>' is not served by the colony")
def _colony_unknown_method(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return raw_error(w.env.endpoint("colony/colony.sock"), "RegisterProcess", pb.RegisterProcessRequest())


@provokes("method '<name>' is not served here")
def _agent_unknown_method(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return raw_error(w.env.endpoint("agent.sock"), "ListAudit", pb.ListAuditRequest())


@provokes("bad frame: <reason>")
def _bad_frame(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return raw_frames_error(w.env.endpoint("colony/colony.sock"), [b"", b"NOT-CORAL"])


@provokes("body is not a valid <message>: <reason>")
def _bad_body(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return raw_frames_error(
        w.env.endpoint("colony/colony.sock"),
        [b"", wire.HEADER, bytes([wire.Command.REQUEST]), b"id1", b"ListFunctions", b"\xff\xff\xff"],
    )


def raw_error(endpoint: str, method: str, request_msg: object) -> str:
    req_id = secrets.token_bytes(8)
    frames = wire.encode_request(req_id, method, request_msg)  # type: ignore[arg-type]
    return raw_frames_error(endpoint, frames)


def raw_frames_error(endpoint: str, frames: list[bytes]) -> str:
    s: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        s.send_multipart(frames)
        assert s.poll(5000), "no reply where one is owed"
        frame = wire.decode(s.recv_multipart())
    finally:
        s.close()
    assert frame.command == wire.Command.REPLY and frame.name != wire.STATUS_OK, frame
    return pb.Error.FromString(frame.body).message


# A process that registered itself, as coral-run would, and then lies in
# its function metadata: the agent must refuse to probe outside it.
LIAR = r"""
import os, sys
import zmq
from coral.daemon import curve, wire
from coral.daemon.client import Client
from coral.daemon.runtime import bind_socket
from coral.proto import coral_pb2 as pb

agent, procs, lie, lib = sys.argv[1:5]
exe = os.readlink("/proc/self/exe")
maps = [line.split() for line in open("/proc/self/maps")]
text = next(m for m in maps if len(m) == 6 and "x" in m[1] and os.path.realpath(m[5]) == os.path.realpath(exe))
libc = next(m[5] for m in maps if len(m) == 6 and "/libc.so" in m[5])
if lib:  # a shared library with one huge function, mapped here
    import ctypes
    from coral.elfinfo import ElfFunctions
    ctypes.CDLL(lib)
    elf = ElfFunctions.load(lib)
    big = elf.file_offset(elf.symbols["coral_big"][0])
meta = {
    "pid": pb.FunctionMetadata(name="f", pid=1),
    "unmapped": pb.FunctionMetadata(name="f", binary_path="/etc/hostname"),
    "offset": pb.FunctionMetadata(name="f", file_offset=1 << 40),
    "not-a-start": pb.FunctionMetadata(name="f", binary_path=lib, file_offset=big + 1) if lib else None,
    "go-size": pb.FunctionMetadata(name="f", kind="go", binary_path=lib, file_offset=big) if lib else None,
    "probe-site": pb.FunctionMetadata(name="f", kind="python", binary_path=libc, address=0x1234),
}[lie]
address = f"ipc://{procs}/{os.getpid()}.sock"
sock = zmq.Context.instance().socket(zmq.ROUTER)
sock.setsockopt(zmq.LINGER, 0)
bind_socket(sock, address)
Client(agent, 10).call("RegisterProcess", pb.RegisterProcessRequest(
    service="liar", pid=os.getpid(), executable=exe, address=address, kind="native"))
print("registered", flush=True)
replies = {"GetFunctionMetadata": pb.GetFunctionMetadataResponse(metadata=meta),
           "ArmFunction": pb.ArmFunctionResponse(metadata=meta), "DisarmFunction": pb.DisarmFunctionResponse()}
while sock.poll(30000):
    frame = wire.decode(sock.recv_multipart())
    sock.send_multipart(wire.encode_reply(frame.request_id, replies.get(frame.name, pb.PingResponse()), frame.envelope))
"""


# One function of 2 MiB and one byte, in a shared library: more code than
# any function the agent disassembles to find its returns.
BIG_FUNCTION = """
    .text
    .globl coral_big
    .type coral_big, @function
coral_big:
    ret
    .fill 2097152, 1, 0xc3
    .size coral_big, .-coral_big
    .section .note.GNU-stack,"",@progbits
"""


@pytest.fixture(scope="module")
def big_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("big")
    os.chmod(d, 0o755)
    (d / "big.s").write_text(BIG_FUNCTION)
    subprocess.run(["gcc", "-shared", "-o", str(d / "libbig.so"), str(d / "big.s")], check=True)
    return (d / "libbig.so").resolve()


def liar_refusal(request: pytest.FixtureRequest, lie: str) -> str:
    w = the_world(request)
    lib = str(request.getfixturevalue("big_library")) if lie in ("not-a-start", "go-size") else ""
    liar = subprocess.Popen(
        [sys.executable, "-c", LIAR, w.env.endpoint("agent.sock"), str(w.env.runtime_dir / "procs"), lie, lib],
        env=w.env.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert liar.stdout is not None and liar.stdout.readline() == "registered\n"
        return ctl(w.env, "--local", "debug", "attach", "liar", "--function", "f", code=1)
    finally:
        liar.kill()
        liar.wait()


@provokes("metadata names pid <pid>, registered process is <pid>")
def _lie_pid(request: pytest.FixtureRequest) -> str:
    return liar_refusal(request, "pid")


@provokes("<path> is not mapped in process <pid>")
def _lie_unmapped(request: pytest.FixtureRequest) -> str:
    return liar_refusal(request, "unmapped")


@provokes("offset <offset> of <path> is not in an executable mapping of process <pid>")
def _lie_offset(request: pytest.FixtureRequest) -> str:
    return liar_refusal(request, "offset")


@provokes("function size <n> is not plausible")
def _lie_go_size(request: pytest.FixtureRequest) -> str:
    out = liar_refusal(request, "go-size")
    assert out == "coralctl: function size 2097153 is not plausible\n", out
    return out


@provokes(
    "offset <offset> of <path> is not the start of a function in its symbol table; only a function's first instruction is probed"
)
def _lie_not_a_start(request: pytest.FixtureRequest) -> str:
    return liar_refusal(request, "not-a-start")


@provokes("<path> has no coral_probe_call at <address>")
def _lie_probe_site(request: pytest.FixtureRequest) -> str:
    return liar_refusal(request, "probe-site")


@provokes("unreadable reply from <endpoint>: <reason>")
def _unreadable_reply(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    env.root.mkdir(parents=True, exist_ok=True)
    endpoint = f"ipc://{env.root / 'liar.sock'}"
    liar: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    liar.setsockopt(zmq.LINGER, 0)
    liar.bind(endpoint)
    try:
        p = subprocess.Popen([tool("coralctl"), "--endpoint", endpoint, "ping"], env=env.env, stderr=subprocess.PIPE, text=True)
        assert liar.poll(10000)
        peer = liar.recv_multipart()[0]
        liar.send_multipart([peer, b"", b"this is not CORAL/1"])
        _, err = p.communicate(timeout=30)
        assert p.returncode == 1, err
        return err
    finally:
        liar.close()


# --- configuration ------------------------------------------------------------

CONFIGS = {
    "<file>: [sessions] max_duration: expected an integer, got '600'": "[sessions]\nmax_duration = '600'\n",
    "<file>: [agent] heartbeat_interval: expected a number, got True": "[agent]\nheartbeat_interval = true\n",
    "<file>: [paths] runtime_dir: expected a string, got 5": "[paths]\nruntime_dir = 5\n",
    "<file>: [sessions] max_duration: must be greater than 0, got 0": "[sessions]\nmax_duration = 0\n",
    "<file>: [sessions] ring_buffer_pages: must be a power of two, got 100": "[sessions]\nring_buffer_pages = 100\n",
    "<file>: [sessions] string_bytes: must be between 8 and 1024, got 4": "[sessions]\nstring_bytes = 4\n",
    "<file>: [sessions] max_call_depth: must be between 8 and 1024, got 2000": "[sessions]\nmax_call_depth = 2000\n",
    "<file>: [sessions] default_duration exceeds max_duration": "[sessions]\ndefault_duration = 700\n",
    "<file>: [colony] retention: invalid age '7 days': use forms like 7d, 12h, 30m, 90s (or 0 to keep forever)": (
        "[colony]\nretention = '7 days'\n"
    ),
    "<file>: unknown key [sessions] max_duraton (known: <keys>)": "[sessions]\nmax_duraton = 5\n",
    "<file>: unknown section [session] (known: <sections>)": "[session]\nmax_duration = 5\n",
    "<file>: [sdk] redact_patterns: expected a list of strings, got 'card'": "[sdk]\nredact_patterns = 'card'\n",
    "<file>: [sessions] must be a table": "sessions = 1\n",
    "<file>: not valid TOML: <reason> (at line <n>, column <m>)": "[sessions\n",
}


def _bad_config(template: str) -> Provoker:
    def provoke(request: pytest.FixtureRequest) -> str:
        env = an_env(request)
        write_config(env, CONFIGS[template])
        out = ctl(env, "ping", code=2)
        assert out.startswith(f"coralctl: {env.env['CORAL_CONFIG']}: "), out
        return out

    return provoke


for _template in CONFIGS:
    provokes(_template)(_bad_config(_template))


@provokes("<file>: no such configuration file")
def _config_missing(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    return ctl(env, "--config", str(env.root / "nope.toml"), "ping", code=2)


@provokes("<file>: cannot read: Permission denied")
def _config_unreadable(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    write_config(env, "")
    os.chmod(env.env["CORAL_CONFIG"], 0o600)
    os.chmod(env.root, 0o755)
    return run_tool(env, as_nobody([tool("coralctl"), "ping"]), code=2)


# --- coral-agentd -----------------------------------------------------------------


@provokes("coral-agentd: BCC is not importable (<reason>); install python3-bpfcc (scripts/setup.sh)")
def _no_bcc(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    hide = env.root / "hide-bcc"
    hide.mkdir(parents=True)
    # A Python that cannot see the bcc module: what a venv without the
    # system's site-packages looks like.
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['bcc'] = None\n")
    env.env["PYTHONPATH"] = str(hide)
    return run_tool(env, [tool("coral-agentd")], code=1)


@provokes("coral-agentd: uprobes need root: run coral-agentd as root")
def _agent_not_root(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    return run_tool(env, as_nobody([tool("coral-agentd")]), code=1)


@provokes("coral-agentd: no kernel headers at /lib/modules/<release>/build; run scripts/setup.sh")
def _no_headers(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    # A kernel release this machine has no headers for.
    return run_tool(env, ["setarch", "x86_64", "--uname-2.6", tool("coral-agentd")], code=1)


@provokes("coral-agentd: another instance (pid <pid>) holds <dir>/agent.lock")
def _agent_twice(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    out = run_tool(w.env, [tool("coral-agentd")], code=1)
    assert f"(pid {w.agent.pid})" in out
    return out


@provokes("coral-agentd: [Errno <n>] <reason>: '<path>'")
def _agent_no_dirs(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    env.env["CORAL_RUNTIME_DIR"] = "/etc/passwd/coral"
    return run_tool(env, [tool("coral-agentd")], code=1)


@provokes('ERROR coral.daemon.runtime: fatal: IO Error: Could not set lock on file "<dir>/agent.duckdb": <reason>')
def _agent_state_shared(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    env = an_env(request)
    env.env["CORAL_STATE_DIR"] = w.env.env["CORAL_STATE_DIR"]
    return run_tool(env, [tool("coral-agentd")], code=1)


@provokes("WARNING coral.agentd: <n> session(s) left active by a previous run marked failed (agent restarted)")
def _agent_restarted(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    request.getfixturevalue("bpf")
    agent = start_agent(env)
    svc = NativeService(env, build_c(REPO / "examples" / "native" / "payments.c", env.root / "payments"))
    try:
        start_attach_and_leave(env, "--local", "--duration", "30s")
        agent.stop(signal.SIGKILL)
        again = start_agent(env)
        again.stop()
        return again.output()
    finally:
        svc.stop()
        agent.stop()


@provokes("WARNING coral.agentd.colony_link: colony link lost (no heartbeat for <n>s); reconnecting in <m>s")
def _colony_link_lost(request: pytest.FixtureRequest) -> str:
    with colony_and_agent(request) as (colony, agent):
        colony.proc.send_signal(signal.SIGSTOP)
        return log_line_after(agent, "colony link lost")


# --- coral-colonyd ------------------------------------------------------------------


@provokes("coral-colonyd: another instance (pid <pid>) holds <dir>/colony.lock")
def _colony_twice(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return run_tool(w.env, [tool("coral-colonyd")], code=1)


@provokes("coral-colonyd: [Errno 13] Permission denied: '<path>'")
def _colony_no_dirs(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    os.chmod(env.root, 0o755)  # nobody may enter the test's directory, but not this one (root's, 0700):
    (env.root / "denied").mkdir(mode=0o700)
    env.env["CORAL_RUNTIME_DIR"] = str(env.root / "denied" / "run")
    return run_tool(env, as_nobody([tool("coral-colonyd")]), code=1)


@provokes('ERROR coral.daemon.runtime: fatal: IO Error: Could not set lock on file "<dir>/colony.duckdb": <reason>')
def _colony_state_shared(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    env = an_env(request)
    env.env["CORAL_STATE_DIR"] = w.env.env["CORAL_STATE_DIR"]
    return run_tool(env, [tool("coral-colonyd")], code=1)


@provokes("WARNING coral.colonyd.broker: agent <agent> lost (silent for <n>s)")
def _colony_loses_agent(request: pytest.FixtureRequest) -> str:
    with colony_and_agent(request) as (colony, agent):
        agent.proc.send_signal(signal.SIGSTOP)
        return log_line_after(colony, "lost (silent for")


@provokes("WARNING coral.colonyd.broker: agent <agent> lost (agent disconnected)")
def _colony_agent_stops(request: pytest.FixtureRequest) -> str:
    with colony_and_agent(request) as (colony, agent):
        return log_line_after(colony, "lost (agent disconnected)", agent.stop)


# --- coral-run and registration ---------------------------------------------------------


@provokes("coral-run: error: no program given: coral-run --service NAME -- PROGRAM [ARGS...]")
def _run_no_program(request: pytest.FixtureRequest) -> str:
    return run_tool(an_env(request), [tool("coral-run"), "--service", "x"], code=2)


@provokes("coral-run: cannot create <dir>/procs: Permission denied")
def _run_no_procs(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    env.runtime_dir.mkdir(parents=True)
    os.chmod(env.root, 0o755)
    os.chmod(env.runtime_dir, 0o755)
    return run_tool(env, as_nobody([tool("coral-run"), "--service", "x", "--", "/bin/true"]), code=1)


@provokes("coral-run: cannot start <program>: No such file or directory")
def _run_no_such_program(request: pytest.FixtureRequest) -> str:
    return run_tool(an_env(request), [tool("coral-run"), "--service", "x", "--", "/nonexistent"], code=127)


@provokes("ERROR coral.run: cannot read the program's ELF file (<reason>); it runs, but cannot be debugged")
def _run_unreadable_elf(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    (env.runtime_dir / "procs").mkdir(parents=True)
    os.chmod(env.runtime_dir / "procs", 0o1777)
    for d in (env.root, env.runtime_dir):
        os.chmod(d, 0o755)
    binary = env.root / "secret-cat"
    binary.write_bytes(Path("/bin/cat").read_bytes())
    os.chmod(binary, 0o711)  # nobody may run it, not read it
    return run_until_logged(
        env, as_nobody([tool("coral-run"), "--service", "x", "--", str(binary)]), "cannot read the program's ELF file"
    )


def run_until_logged(env: CoralEnv, argv: list[str], wanted: str) -> str:
    """coral-run with a program that lives until its input ends (`cat`):
    wait for the log line, then end the input; coral-run exits with it."""
    run = Process("run", argv, env, stdin=subprocess.PIPE)
    try:
        return log_line_after(run, wanted)
    finally:
        if run.proc.stdin:
            run.proc.stdin.close()
        run.proc.wait(30)
        assert run.stop() == 0


@provokes("ERROR coral.run: cannot bind ipc://<dir>/procs/<pid>.sock (<reason>); the program runs, but cannot be debugged")
def _run_cannot_bind(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    (env.runtime_dir / "procs").mkdir(parents=True)
    for d in (env.root, env.runtime_dir, env.runtime_dir / "procs"):
        os.chmod(d, 0o755)
    return run_until_logged(env, as_nobody([tool("coral-run"), "--service", "x", "--", "cat"]), "cannot bind")


@provokes(
    "WARNING coral.sdk.registration: coral agent not reachable (no reply from ipc://<dir>/agent.sock within <n>s); "
    "will keep trying"
)
def _run_no_agent(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    env.runtime_dir.mkdir(parents=True)
    (env.runtime_dir / "agent.sock").touch()  # the socket file is there, nobody answers
    return run_tool(env, [tool("coral-run"), "--service", "x", "--", "sleep", "3"], code=0)


@provokes(
    "WARNING coral.sdk.server: coral agent not running (no ipc://<dir>/agent.sock); "
    "the service runs normally and registers once it starts"
)
def _sdk_no_agent(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    code = (
        "import coral.sdk, logging, time; logging.basicConfig(format='%(levelname)s %(name)s: %(message)s'); "
        "coral.sdk.init(service='x'); time.sleep(1)"  # the workload: a process that lives while it retries
    )
    return run_tool(env, [sys.executable, "-c", code], code=0)


@provokes(
    "ERROR coral.sdk.registration: RegisterProcess refused by the agent: <code>: <message>",
    "INVALID_ARGUMENT: service name must be 1 to 200 printable characters without '/'",
)
def _register_bad_name(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    run = Process("run-bad-name", [tool("coral-run"), "--service", "a/b", "--", "sleep", "30"], w.env)
    try:
        return log_line_after(run, "RegisterProcess refused")
    finally:
        run.stop()


@provokes("INVALID_ARGUMENT: address must be ipc://<dir>/procs/NAME.sock (NAME: 1 to 64 of A-Z a-z 0-9 . _ -)")
def _register_tcp(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return register_error(
        w,
        pb.RegisterProcessRequest(
            service="x", pid=os.getpid(), executable=sys.executable, address="tcp://127.0.0.1:1", kind="native"
        ),
    )


def own_socket(w: World) -> str:
    return w.env.endpoint(f"procs/{os.getpid()}.sock")


@provokes("INVALID_ARGUMENT: <path> does not exist: bind the socket before registering")
def _register_no_socket(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return register_error(w, pb.RegisterProcessRequest(service="x", pid=os.getpid(), executable=sys.executable,
                                                       address=w.env.endpoint("procs/nothing-here.sock")))


@provokes("PERMISSION_DENIED: <path> is not a socket of uid <uid>")
def _register_not_a_socket(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    plain = w.env.runtime_dir / "procs" / "plain-file.sock"
    plain.write_text("")
    try:
        return register_error(w, pb.RegisterProcessRequest(service="x", pid=os.getpid(), executable=sys.executable,
                                                           address=f"ipc://{plain}"))
    finally:
        plain.unlink()


@provokes("INVALID_ARGUMENT: kind must be one of native, go, python")
def _register_bad_kind(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return register_error(w, pb.RegisterProcessRequest(service="x", pid=os.getpid(), executable=sys.executable,
                                                       address=own_socket(w), kind="cobol"))


@provokes("INVALID_ARGUMENT: sdk_version must be at most 64 printable characters")
def _register_long_version(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return register_error(w, pb.RegisterProcessRequest(service="x", pid=os.getpid(), executable=sys.executable,
                                                       address=own_socket(w), sdk_version="1" * 2_500_000))


@provokes("INVALID_ARGUMENT: python_layout.frame_code must be below 65536")
def _register_far_layout(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    layout = pb.PythonLayout(version_hex=0x030B07F0, interpreter=1 << 20, frame_code=1 << 20)
    return register_error(w, pb.RegisterProcessRequest(service="x", pid=os.getpid(), executable=sys.executable,
                                                       address=own_socket(w), kind="python", python_layout=layout))


@provokes("NOT_FOUND: process <pid> does not exist")
def _register_gone(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    never = int(Path("/proc/sys/kernel/pid_max").read_text())  # pids stay below pid_max: no process has this one
    return register_error(
        w,
        pb.RegisterProcessRequest(
            service="x", pid=never, executable="/bin/true", address=w.env.endpoint("procs/x.sock"), kind="native"
        ),
    )


@provokes("PERMISSION_DENIED: process <pid> may not register process <other> (only itself or its child)")
def _register_other(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return register_error(
        w,
        pb.RegisterProcessRequest(
            service="x", pid=1, executable="/sbin/init", address=w.env.endpoint("procs/x.sock"), kind="native"
        ),
    )


@provokes("PERMISSION_DENIED: uid <uid> does not own process <pid>")
def _register_setuid_child(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    # nobody starts passwd (setuid root: it runs as root, waiting for a
    # password on its input) and registers that child of its own.
    code = (
        "import subprocess, sys\n"
        "from coral.daemon.client import Client\n"
        "from coral.daemon.errors import CoralError\n"
        "from coral.proto import coral_pb2 as pb\n"
        "child = subprocess.Popen(['passwd'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
        "child.stderr.read1(1)  # its prompt: it runs as root now\n"
        "req = pb.RegisterProcessRequest(service='x', pid=child.pid, executable='/usr/bin/passwd',\n"
        "                                address=sys.argv[2], kind='native')\n"
        "try:\n"
        "    Client(sys.argv[1], 10).call('RegisterProcess', req)\n"
        "except CoralError as exc:\n"
        "    sys.exit(f'{exc.code}: {exc.message}')\n"
        "finally:\n"
        "    child.kill()\n"
        "    child.wait()\n"
    )
    argv = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--groups=coral",
        "--",
        sys.executable,
        "-c",
        code,
        w.env.endpoint("agent.sock"),
        w.env.endpoint("procs/x.sock"),
    ]
    return run_tool(w.env, argv, code=1)


def register_error(w: World, req: pb.RegisterProcessRequest) -> str:
    """The refusal as coral-run and the SDK log it: `CODE: MESSAGE`."""
    with Client(w.env.endpoint("agent.sock"), 5) as c:
        try:
            c.call("RegisterProcess", req)
        except CoralError as exc:
            return f"{exc.code}: {exc.message}"
    raise AssertionError("the agent accepted the registration")


@provokes("INFO coral.sdk.registration: the agent no longer knows this process (it restarted?); registering again")
def _agent_forgot(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    request.getfixturevalue("bpf")
    agent = start_agent(env)
    svc = NativeService(env, build_c(REPO / "examples" / "native" / "payments.c", env.root / "payments"))
    try:
        # The process sleeps through the agent's restart: its next heartbeat
        # reaches an agent that never heard of it. If a heartbeat was already
        # on its way to the old agent, coral-run finds the agent unreachable
        # first and registers anew without this line: then again.
        for _ in range(3):
            registered = svc.run.output().count("registered service")
            svc.run.proc.send_signal(signal.SIGSTOP)
            agent.stop()
            agent = start_agent(env)
            svc.run.proc.send_signal(signal.SIGCONT)
            end = time.monotonic() + 30
            while time.monotonic() < end:
                out = svc.run.output()
                if "registering again" in out:
                    return out
                if out.count("registered service") > registered:
                    break  # the other path: registered anew after "not reachable"
                time.sleep(0.1)  # between two reads of the log file; not readiness: the line itself is awaited
        raise AssertionError(f"run-payments never logged 'registering again':\n{svc.run.output()}")
    finally:
        svc.stop()
        agent.stop()


# --- several agents -----------------------------------------------------------------


@pytest.fixture
def agent_b(world: World) -> Iterator[tuple[CoralEnv, Process]]:
    """A second agent of the world's colony, on this host, where "payments"
    is a program without a symbol table (sleep): every attach on it fails.
    Gone after each case, so that the others see "payments" on one agent."""
    env = world.env.another_agent("agent-b")
    agent = start_agent(env, "agentd-b")
    other = Process("run-sleep-b", [tool("coral-run"), "--service", "payments", "--", "sleep", "600"], env)
    try:
        other.wait_ready()
        from tests.test_fanout import wait_for_instances

        wait_for_instances(world.env, "payments", 2)
        yield env, agent
    finally:
        other.stop()
        agent.stop()


@provokes("no agent '<id>' is connected (known agents: <agents>)")
def _no_such_agent(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    out = ctl(w.env, "debug", "attach", "payments", "--function", "validate_card", "--agent", "nosuch", code=1)
    assert out == f"coralctl: no agent 'nosuch' is connected (known agents: {os.uname().nodename})\n", out
    return out


@provokes("service '<service>' does not run on agent '<id>' (it runs on: <agents>)")
def _not_on_that_agent(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    request.getfixturevalue("agent_b")
    out = ctl(w.env, "debug", "attach", "greeter", "--function", "greet", "--agent", "agent-b", code=1)
    assert out == f"coralctl: service 'greeter' does not run on agent 'agent-b' (it runs on: {os.uname().nodename})\n"
    return out


@provokes("agent <agent>: <message>; agent <agent>: <message>")
def _every_agent_refuses(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    request.getfixturevalue("agent_b")
    out = ctl(w.env, "debug", "attach", "payments", "--function", "zzzzzzzzzzzzzz", code=1)
    assert out.startswith(f"coralctl: agent {os.uname().nodename}: function 'zzzzzzzzzzzzzz' not found"), out
    assert "; agent agent-b: /proc/" in out and out.endswith(
        " is stripped (no symbol table): rebuild without -s, or keep the debug symbols\n"
    )
    return out


@provokes("max_events <n> exceeds this agent's limit of <limit> ([sessions] max_events_per_session); ask for <limit> or less")
def _too_many_events(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return ctl(
        w.env, "--local", "debug", "attach", "payments", "--function", "validate_card", "--max-events", "1000000000", code=1
    )


@provokes("WARNING coral.agentd: refused <method> from pid <pid> (uid:<uid>): <message>")
def _agent_logs_refusal(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return log_line_after(
        w.agent, "no session 'dbg-logged' on agent", lambda: ctl(w.env, "--local", "debug", "events", "dbg-logged", code=1)
    )


# --- storage ------------------------------------------------------------------------


@contextlib.contextmanager
def full_disk() -> Iterator[tuple[Path, Callable[[], None]]]:
    """A 16 MiB tmpfs, and a way to fill it to the last byte."""
    mount = Path(tempfile.mkdtemp(prefix="coral-disk-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0750", "coral-test", str(mount)], check=True)
    try:
        from tests.test_disk_full import fill

        yield mount, lambda: (fill(mount), None)[1]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


@provokes("cannot write <state_dir>/agent/agent.duckdb: No space left on device; <held> held in memory, retrying")
def _agent_disk_full(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    request.getfixturevalue("bpf")
    with full_disk() as (disk, fill_it):
        env.env["CORAL_STATE_DIR"] = str(disk)
        agent = start_agent(env)
        svc = NativeService(env, build_c(REPO / "examples" / "native" / "payments.c", env.root / "payments"), sleep_ms=0)
        try:
            wait_for_service_local(env, "payments")
            fill_it()
            session = start_attach_and_leave(env, "--local", "--duration", "30s")
            svc.call(2000)  # more than the database's last, partly filled pages take
            # A query writes the calls first: that write fails.
            out = log_line_after(agent, "cannot write", lambda: coralctl(env, "--local", "debug", "events", session))
            assert f"cannot write {disk}/agent/agent.duckdb: No space left on device; " in out, out
            return out
        finally:
            svc.stop()
            agent.stop()


def wait_for_service_local(env: CoralEnv, service: str) -> None:
    end = time.monotonic() + 15
    while time.monotonic() < end:
        if service in coralctl(env, "--local", "services").stdout:
            return
    raise AssertionError(f"the agent never listed {service}")


@provokes("cannot write <state_dir>/colony/colony.duckdb: No space left on device; <held> held in memory, retrying")
def _colony_disk_full(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    with full_disk() as (disk, fill_it):
        env.env["CORAL_STATE_DIR"] = str(disk)
        colony = start_colony(env)
        try:
            fill_it()
            # Each refused attach is an audit row; the first few may still fit
            # in the database's last, partly filled page, so refuse until the
            # colony's write of them fails (each ask is a request).
            with Client(env.endpoint("colony/colony.sock"), 10) as c:
                end = time.monotonic() + 30
                while "cannot write" not in colony.output() and time.monotonic() < end:
                    with contextlib.suppress(CoralError):
                        c.call("AttachUprobe", pb.AttachUprobeRequest(service="x" * 200, function="f" * 200))
            out = log_line_after(colony, "cannot write")
            assert f"cannot write {disk}/colony/colony.duckdb: No space left on device; " in out, out
            return out
        finally:
            colony.stop()


# --- CURVE and tcp ------------------------------------------------------------------


def bound_port(stack: contextlib.ExitStack) -> int:
    """A port on 127.0.0.1 held by a socket that is bound but never listens,
    until `stack` closes: no one else gets the port, and a connection to it
    is refused."""
    s = stack.enter_context(socket.socket())
    s.bind(("127.0.0.1", 0))
    return int(s.getsockname()[1])


@dataclass
class TcpColony:
    """A colony on 127.0.0.1 with CURVE keys: `ops` may do everything,
    `viewer` is admitted but may not list, `mallory` and `rogue` are not
    admitted."""

    env: CoralEnv
    keys: Path
    frontend: str
    backend: str
    colony: Process

    def client(self, key: str, colony_key: str = "colony") -> list[str]:
        return [
            "--endpoint",
            self.frontend,
            "--key",
            str(self.keys / f"{key}.key_secret"),
            "--colony-key",
            str(self.keys / f"{colony_key}.key"),
        ]

    def fingerprint(self, name: str) -> str:
        return curve.fingerprint(curve.load_key_pair(str(self.keys / f"{name}.key_secret"), "test").public)


def start_tcp_colony(env: CoralEnv, keys: Path) -> tuple[str, str, Process]:
    """The colony on two ports of 127.0.0.1, held (so they differ) until
    just before it starts; if another process takes one in between, once
    more with two new ones."""
    for attempt in (1, 2):
        with contextlib.ExitStack() as ports:
            frontend, backend = f"tcp://127.0.0.1:{bound_port(ports)}", f"tcp://127.0.0.1:{bound_port(ports)}"
            write_config(
                env,
                f"""
[colony]
frontend_endpoint = "{frontend}"
backend_endpoint = "{backend}"
secret_key_file = "{keys / "colony.key_secret"}"
agent_keys_dir = "{keys / "agents"}"
client_keys_dir = "{keys / "clients"}"

[access]
list = ["@coral", "key:ops"]
""",
            )
        try:  # the ports are free again, for the colony to bind
            return frontend, backend, start_colony(env)
        except AssertionError as exc:
            if attempt == 2 or "Address already in use" not in str(exc):
                raise
    raise AssertionError("not reached")


@pytest.fixture(scope="module")
def tcp_colony() -> Iterator[TcpColony]:
    env = CoralEnv.create()
    keys = env.root / "keys"
    for name in ("colony", "ops", "viewer", "mallory", "rogue"):
        curve.write_key_pair(keys, name)
    for directory, admitted in (("agents", ()), ("clients", ("ops", "viewer"))):
        (keys / directory).mkdir()
        for name in admitted:
            (keys / directory / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    frontend, backend, colony = start_tcp_colony(env, keys)
    try:
        yield TcpColony(env, keys, frontend, backend, colony)
    finally:
        colony.stop()
        env.remove()


def the_tcp_colony(request: pytest.FixtureRequest) -> TcpColony:
    t: TcpColony = request.getfixturevalue("tcp_colony")
    return t


def start_fails(env: CoralEnv, program: str, config: str) -> str:
    """A daemon that refuses its configuration at start: exit 1, one line."""
    write_config(env, config)
    return run_tool(env, [tool(program)], code=1)


@provokes(
    "<file>: [colony] frontend_endpoint is tcp://<address> but [colony] secret_key_file is not set; "
    "Coral does not use plaintext TCP (make it with: coralctl keys generate colony)"
)
def _colony_tcp_no_key(request: pytest.FixtureRequest) -> str:
    return start_fails(an_env(request), "coral-colonyd", '[colony]\nfrontend_endpoint = "tcp://127.0.0.1:7399"\n')


@provokes(
    "<file>: [colony] backend_endpoint is tcp://<address> but [colony] agent_keys_dir is not set; "
    "Coral does not use plaintext TCP (a directory of the public .key files it admits)"
)
def _colony_tcp_no_agent_keys(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    _, secret, _ = curve.write_key_pair(env.root / "keys", "colony")
    return start_fails(
        env, "coral-colonyd", f'[colony]\nbackend_endpoint = "tcp://127.0.0.1:7399"\nsecret_key_file = "{secret}"\n'
    )


@provokes("<file>: [colony] agent_keys_dir <dir>: no such directory")
def _colony_tcp_keys_dir_missing(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    _, secret, _ = curve.write_key_pair(env.root / "keys", "colony")
    return start_fails(
        env,
        "coral-colonyd",
        f'[colony]\nbackend_endpoint = "tcp://127.0.0.1:7399"\nsecret_key_file = "{secret}"\n'
        f'agent_keys_dir = "{env.root / "nope"}"\n',
    )


@provokes(
    "<file>: [agent] colony_endpoint is tcp://<address> but [agent] key_file is not set; "
    "Coral does not use plaintext TCP (make a key pair with: coralctl keys generate AGENT)"
)
def _agent_tcp_no_key(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue("bpf")
    return start_fails(an_env(request), "coral-agentd", '[agent]\ncolony_endpoint = "tcp://127.0.0.1:7398"\n')


@provokes(
    "<file>: [agent] colony_endpoint is tcp://<address> but [agent] colony_public_key_file is not set; "
    "Coral does not use plaintext TCP (copy the colony's colony.key here)"
)
def _agent_tcp_no_colony_key(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue("bpf")
    env = an_env(request)
    _, secret, _ = curve.write_key_pair(env.root / "keys", "web-1")
    return start_fails(env, "coral-agentd", f'[agent]\ncolony_endpoint = "tcp://127.0.0.1:7398"\nkey_file = "{secret}"\n')


@provokes(
    "<file>: the colony endpoint is tcp://<address> but [client] key_file is not set; "
    "Coral does not use plaintext TCP (make a key pair with: coralctl keys generate NAME)"
)
def _client_tcp_no_key(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    write_config(env, '[colony]\nfrontend_endpoint = "tcp://127.0.0.1:7397"\n')
    return ctl(env, "ping", code=2)


def bad_client_key(request: pytest.FixtureRequest, flag: str, text: str | None) -> str:
    """coralctl over tcp with a key file that is missing (None) or holds `text`."""
    env = an_env(request)
    keys = env.root / "keys"
    curve.write_key_pair(keys, "me")
    curve.write_key_pair(keys, "colony")
    given = {"--key": str(keys / "me.key_secret"), "--colony-key": str(keys / "colony.key")}
    bad = keys / "bad.key"
    if text is not None:
        bad.write_text(text)
    given[flag] = str(bad)
    write_config(env, "")
    return ctl(env, "--endpoint", "tcp://127.0.0.1:7397", *[x for kv in given.items() for x in kv], "ping", code=2)


@provokes("<file>: [<section>] <key> <path>: cannot read a CURVE key: no such file")
def _key_missing(request: pytest.FixtureRequest) -> str:
    return bad_client_key(request, "--key", None)


@provokes("<file>: [<section>] <key> <path>: cannot read a CURVE key: No public key found in <path>")
def _key_empty(request: pytest.FixtureRequest) -> str:
    return bad_client_key(request, "--colony-key", "# nothing\n")


@provokes("<file>: [<section>] <key> <path>: cannot read a CURVE key: not a 40-character Z85 key")
def _key_short(request: pytest.FixtureRequest) -> str:
    return bad_client_key(request, "--colony-key", 'curve\n    public-key = "abc"\n')


@provokes("<file>: [agent] key_file <path>: this is a public key; give the NAME.key_secret file")
def _agent_public_key(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue("bpf")
    env = an_env(request)
    public, _, _ = curve.write_key_pair(env.root / "keys", "colony")
    return start_fails(
        env,
        "coral-agentd",
        f'[agent]\ncolony_endpoint = "tcp://127.0.0.1:7398"\nkey_file = "{public}"\ncolony_public_key_file = "{public}"\n',
    )


@provokes("<file>: [colony] frontend_endpoint: only ipc:// and tcp:// (with CURVE) are supported, got '<endpoint>'")
def _ws_endpoint(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    write_config(env, '[colony]\nfrontend_endpoint = "ws://0.0.0.0:7301"\n')
    return ctl(env, "ping", code=2)


@provokes(
    "cannot talk to the colony: <endpoint> refused this client's key <fingerprint>: "
    "its public key file is not in the colony's [colony] client_keys_dir",
    "WARNING coral.colonyd: refused a frontend connection from <address>: key <fingerprint> is not in <dir>",
)
def _client_key_refused(request: pytest.FixtureRequest) -> str:
    t = the_tcp_colony(request)
    out = ctl(t.env, *t.client("mallory"), "services", code=3)
    assert t.fingerprint("mallory") in out, out
    return out + log_line_after(t.colony, f"key {t.fingerprint('mallory')} is not in")


@provokes(
    "cannot talk to the colony: <endpoint> closed the connection during the CURVE handshake: "
    "is [client] colony_public_key_file (--colony-key) the colony's public key?",
    "WARNING coral.colonyd: refused a frontend connection: a CURVE hello that does not open with the colony's key "
    "was refused (the peer holds another colony key)",
)
def _client_wrong_colony_key(request: pytest.FixtureRequest) -> str:
    t = the_tcp_colony(request)
    out = ctl(t.env, *t.client("ops", colony_key="mallory"), "ping", code=3)
    return out + log_line_after(t.colony, "a CURVE hello that does not open")


@provokes("key <name> may not <right> (needs [access] <right>, which admits <who>)")
def _key_access_denied(request: pytest.FixtureRequest) -> str:
    t = the_tcp_colony(request)
    out = ctl(t.env, *t.client("viewer"), "services", code=1)
    assert out == "coralctl: key viewer may not list (needs [access] list, which admits @coral, key:ops)\n", out
    return out


@provokes(
    "cannot talk to the colony: no CURVE handshake with <endpoint> within <n>s: nothing accepted the connection; "
    "is coral-colonyd running there, and the port open?"
)
def _no_tcp_colony(request: pytest.FixtureRequest) -> str:
    t = the_tcp_colony(request)
    with contextlib.ExitStack() as ports:  # held until coralctl has returned
        return ctl(t.env, *t.client("ops"), "--endpoint", f"tcp://127.0.0.1:{bound_port(ports)}", "ping", code=3)


@provokes(
    "cannot talk to the colony: no CURVE handshake with <endpoint> within <n>s: the connection opened but nothing "
    "answered the handshake; is that the colony's frontend port?"
)
def _mute_tcp_port(request: pytest.FixtureRequest) -> str:
    t = the_tcp_colony(request)
    with socket.create_server(("127.0.0.1", 0)) as mute:  # accepts, never speaks
        endpoint = f"tcp://127.0.0.1:{mute.getsockname()[1]}"
        return ctl(t.env, *t.client("ops"), "--endpoint", endpoint, "ping", code=3)


def tcp_agent(t: TcpColony, name: str, colony_key: str) -> Process:
    env = CoralEnv.create()
    write_config(
        env,
        f'[agent]\nid = "{name}"\ncolony_endpoint = "{t.backend}"\nkey_file = "{t.keys / name}.key_secret"\n'
        f'colony_public_key_file = "{t.keys / colony_key}.key"\n',
    )
    return start_agent(env, f"agentd-{name}")


@provokes(
    "ERROR coral.agentd.colony_link: the colony at <endpoint> refused this agent's key <fingerprint>: "
    "add its public key file to the colony's [colony] agent_keys_dir"
)
def _agent_key_refused(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue("bpf")
    t = the_tcp_colony(request)
    agent = tcp_agent(t, "rogue", "colony")
    try:
        return log_line_after(agent, "refused this agent's key")
    finally:
        agent.stop()
        shutil.rmtree(agent_root(agent), ignore_errors=True)


@provokes(
    "ERROR coral.agentd.colony_link: the colony at <endpoint> closed the connection during the CURVE handshake: "
    "is [agent] colony_public_key_file the colony's public key?"
)
def _agent_wrong_colony_key(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue("bpf")
    t = the_tcp_colony(request)
    agent = tcp_agent(t, "rogue", "mallory")
    try:
        return log_line_after(agent, "during the CURVE handshake")
    finally:
        agent.stop()
        shutil.rmtree(agent_root(agent), ignore_errors=True)


def agent_root(agent: Process) -> Path:
    return agent.log_path.parent


@provokes("<dir>/<name>.key already exists; remove it or choose another name")
def _key_exists(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    write_config(env, "")
    ctl(env, "keys", "generate", "alice", "--dir", str(env.root / "keys"), code=0)
    return ctl(env, "keys", "generate", "alice", "--dir", str(env.root / "keys"), code=1)


@provokes("key name '<name>' must be 1 to 64 letters, digits, '.', '_' or '-' (not starting with one of those)")
def _key_name_bad(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    write_config(env, "")
    return ctl(env, "keys", "generate", "x/y", "--dir", str(env.root / "keys"), code=1)


@pytest.mark.parametrize("message", documented_messages(DOC.read_text()))
def test_documented_message_is_printed_exactly(message: str, request: pytest.FixtureRequest) -> None:
    provoke = PROVOKERS.get(message)
    assert provoke is not None, f"no test provokes {message!r}: add one to {__file__} or take it out of {DOC.name}"
    output = provoke(request)
    assert message_pattern(message).search(output), f"expected a line ending with {message!r}, got:\n{output}"


def test_every_provoked_message_is_documented() -> None:
    documented = set(documented_messages(DOC.read_text()))
    assert sorted(set(PROVOKERS) - documented) == []
