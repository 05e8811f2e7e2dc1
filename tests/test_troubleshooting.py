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

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from coral.daemon import wire
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
from tests.test_native_capture import build as build_greeter
from tests.test_native_capture import run_service
from tests.test_native_e2e import wait_for_service
from tests.test_python_e2e import PythonService

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
        time.sleep(0.1)
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
    "cannot reach the colony: no reply from ipc://<dir>/colony.sock (no socket file there) within <timeout>; "
    "is coral-colonyd running? (use --local to talk to this host's agent directly)"
)
def _no_colony(request: pytest.FixtureRequest) -> str:
    return ctl(an_env(request), "--timeout", "1s", "services", code=3)


@provokes(
    "cannot reach the colony: no reply from ipc://<dir>/colony.sock within <timeout>; "
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


@provokes("predicate '<text>' must look like ARG OP INTEGER, e.g. amount_cents>1000")
def _bad_predicate(request: pytest.FixtureRequest) -> str:
    return ctl(
        the_world(request).env,
        "debug",
        "attach",
        "payments",
        "--function",
        "validate_card",
        "--where",
        "amount_cents>lots",
        code=1,
    )


@provokes("predicate names '<name>'; the function's arguments are: <names>")
def _predicate_name(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "debug", "attach", "payments", "--function", "validate_card", "--where", "x>1", code=1)


@provokes("predicate argument '<name>' (<type>) is not an integer in a register")
def _predicate_string(request: pytest.FixtureRequest) -> str:
    return ctl(the_world(request).env, "debug", "attach", "greeter", "--function", "greet", "--where", "name==1", code=1)


@provokes("--where applies to native functions' integer arguments only")
def _predicate_python(request: pytest.FixtureRequest) -> str:
    return ctl(
        the_world(request).env,
        "debug",
        "attach",
        "payments-api",
        "--function",
        "payments.validate_card",
        "--where",
        "amount>1",
        code=1,
    )


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
    env = an_env(request)
    request.getfixturevalue("bpf")
    colony = start_colony(env)
    agent = start_agent(env)
    svc = NativeService(env, build_c(REPO / "examples" / "native" / "payments.c", env.root / "payments"))
    try:
        wait_for_service(env, "payments")
        session = start_attach_and_leave(env, "--duration", "60s")
        agent.proc.send_signal(signal.SIGSTOP)
        log_line_after(colony, "lost (silent for")
        return ctl(env, "debug", "detach", session, code=1)
    finally:
        agent.proc.send_signal(signal.SIGCONT)
        svc.stop()
        agent.stop()
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
    env = an_env(request)
    request.getfixturevalue("bpf")
    colony = start_colony(env)
    agent = start_agent(env)
    svc = NativeService(env, build_c(REPO / "examples" / "native" / "payments.c", env.root / "payments"))
    try:
        wait_for_service(env, svc.service)
        agent.proc.send_signal(signal.SIGSTOP)
        return ctl(env, "functions", "payments", code=1)
    finally:
        agent.proc.send_signal(signal.SIGCONT)
        svc.stop()
        agent.stop()
        colony.stop()


def wait_for_agent(agent: Process) -> None:
    log_line_after(agent, "connected to colony")


@provokes("the agent did not answer <method> within <n>s")
def _agent_slow(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    request.getfixturevalue("bpf")
    write_config(env, "[limits]\nrequest_timeout = 1.0\n")
    colony = start_colony(env)
    agent = start_agent(env)
    svc = NativeService(env, build_c(REPO / "examples" / "native" / "payments.c", env.root / "payments"))
    try:
        wait_for_service(env, svc.service)
        agent.proc.send_signal(signal.SIGSTOP)
        out = ctl(env, "functions", "payments", code=1)
        assert out == "coralctl: the agent did not answer ListFunctions within 1s\n"
        return out
    finally:
        agent.proc.send_signal(signal.SIGCONT)
        svc.stop()
        agent.stop()
        colony.stop()


@provokes("method '<name>' is not served by the colony")
def _colony_unknown_method(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return raw_error(w.env.endpoint("colony.sock"), "RegisterProcess", pb.RegisterProcessRequest())


@provokes("method '<name>' is not served here")
def _agent_unknown_method(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return raw_error(w.env.endpoint("agent.sock"), "ListAudit", pb.ListAuditRequest())


@provokes("bad frame: <reason>")
def _bad_frame(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return raw_frames_error(w.env.endpoint("colony.sock"), [b"", b"NOT-CORAL"])


@provokes("body is not a valid <message>: <reason>")
def _bad_body(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return raw_frames_error(
        w.env.endpoint("colony.sock"),
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
from coral.daemon import wire
from coral.daemon.client import Client
from coral.daemon.runtime import bind_socket
from coral.proto import coral_pb2 as pb

agent, procs, lie = sys.argv[1:4]
exe = os.readlink("/proc/self/exe")
maps = [line.split() for line in open("/proc/self/maps")]
text = next(m for m in maps if len(m) == 6 and "x" in m[1] and os.path.realpath(m[5]) == os.path.realpath(exe))
libc = next(m[5] for m in maps if len(m) == 6 and "/libc.so" in m[5])
meta = {
    "pid": pb.FunctionMetadata(name="f", pid=1),
    "unmapped": pb.FunctionMetadata(name="f", binary_path="/etc/hostname"),
    "offset": pb.FunctionMetadata(name="f", file_offset=1 << 40),
    "go-size": pb.FunctionMetadata(name="f", kind="go", file_offset=int(text[2], 16), size=0),
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


def liar_refusal(request: pytest.FixtureRequest, lie: str) -> str:
    w = the_world(request)
    liar = subprocess.Popen(
        [sys.executable, "-c", LIAR, w.env.endpoint("agent.sock"), str(w.env.runtime_dir / "procs"), lie],
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
    return liar_refusal(request, "go-size")


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
    "<file>: [sessions] default_duration exceeds max_duration": "[sessions]\ndefault_duration = 700\n",
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
    env = an_env(request)
    request.getfixturevalue("bpf")
    colony = start_colony(env)
    agent = start_agent(env)
    try:
        wait_for_agent(agent)
        colony.proc.send_signal(signal.SIGSTOP)
        return log_line_after(agent, "colony link lost")
    finally:
        colony.proc.send_signal(signal.SIGCONT)
        agent.stop()
        colony.stop()


# --- coral-colonyd ------------------------------------------------------------------


@provokes("coral-colonyd: another instance (pid <pid>) holds <dir>/colony.lock")
def _colony_twice(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return run_tool(w.env, [tool("coral-colonyd")], code=1)


@provokes("coral-colonyd: [Errno 13] Permission denied: '<path>'")
def _colony_no_dirs(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    env.env["CORAL_RUNTIME_DIR"] = "/run/coral-test-denied"
    return run_tool(env, as_nobody([tool("coral-colonyd")]), code=1)


@provokes('ERROR coral.daemon.runtime: fatal: IO Error: Could not set lock on file "<dir>/colony.duckdb": <reason>')
def _colony_state_shared(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    env = an_env(request)
    env.env["CORAL_STATE_DIR"] = w.env.env["CORAL_STATE_DIR"]
    return run_tool(env, [tool("coral-colonyd")], code=1)


@provokes("WARNING coral.colonyd.broker: agent <agent> lost (silent for <n>s)")
def _colony_loses_agent(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    request.getfixturevalue("bpf")
    colony = start_colony(env)
    agent = start_agent(env)
    try:
        wait_for_agent(agent)
        agent.proc.send_signal(signal.SIGSTOP)
        return log_line_after(colony, "lost (silent for")
    finally:
        agent.proc.send_signal(signal.SIGCONT)
        agent.stop()
        colony.stop()


@provokes("WARNING coral.colonyd.broker: agent <agent> lost (agent disconnected)")
def _colony_agent_stops(request: pytest.FixtureRequest) -> str:
    env = an_env(request)
    request.getfixturevalue("bpf")
    colony = start_colony(env)
    agent = start_agent(env)
    try:
        wait_for_agent(agent)
        return log_line_after(colony, "lost (agent disconnected)", agent.stop)
    finally:
        agent.stop()
        colony.stop()


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
        "coral.sdk.init(service='x'); time.sleep(1)"
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


@provokes("INVALID_ARGUMENT: address must be an ipc:// endpoint")
def _register_tcp(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    return register_error(
        w,
        pb.RegisterProcessRequest(
            service="x", pid=os.getpid(), executable=sys.executable, address="tcp://127.0.0.1:1", kind="native"
        ),
    )


@provokes("NOT_FOUND: process <pid> does not exist")
def _register_gone(request: pytest.FixtureRequest) -> str:
    w = the_world(request)
    gone = subprocess.Popen(["true"])
    gone.wait()
    return register_error(
        w,
        pb.RegisterProcessRequest(
            service="x", pid=gone.pid, executable="/bin/true", address=w.env.endpoint("procs/x.sock"), kind="native"
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
        # reaches an agent that never heard of it.
        svc.run.proc.send_signal(signal.SIGSTOP)
        agent.stop()
        again = start_agent(env)
        svc.run.proc.send_signal(signal.SIGCONT)
        try:
            return log_line_after(svc.run, "registering again")
        finally:
            again.stop()
    finally:
        svc.stop()
        agent.stop()


@pytest.mark.parametrize("message", documented_messages(DOC.read_text()))
def test_documented_message_is_printed_exactly(message: str, request: pytest.FixtureRequest) -> None:
    provoke = PROVOKERS.get(message)
    assert provoke is not None, f"no test provokes {message!r}: add one to {__file__} or take it out of {DOC.name}"
    output = provoke(request)
    assert message_pattern(message).search(output), f"expected a line ending with {message!r}, got:\n{output}"


def test_every_provoked_message_is_documented() -> None:
    documented = set(documented_messages(DOC.read_text()))
    assert sorted(set(PROVOKERS) - documented) == []
