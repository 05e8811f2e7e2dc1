"""/metrics: a real Prometheus server (Debian's prometheus) scrapes both
daemons while an operator debugs the C demo, and its HTTP API shows
exactly the session's calls; the endpoint is off unless configured, and
never carries a captured value (docs/reliability.md, "Metrics";
docs/security.md)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coral.agentd.metrics import OWN_FAMILY as AGENT_OWN
from coral.agentd.totals import CallTotals
from coral.colonyd.metrics import OWN_FAMILY as COLONY_OWN
from coral.daemon import wire
from coral.daemon.config import ConfigError, metrics_address, parse_config
from coral.daemon.metrics import RequestTimes
from coral.daemon.server import Dispatcher, Later, Peer
from coral.proto import coral_pb2 as pb
from tests.harness import REPO, CoralEnv, NativeService, Process, coralctl, tool

PROMETHEUS = "/usr/bin/prometheus"  # Debian's prometheus package (scripts/setup.sh)
N = 40
CARD_PREFIX = "40001234123410"  # the demo's card numbers: 4000123412341000 + n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on: its sockets' inodes, looked
    up in the kernel's TCP tables (state 0A is LISTEN)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# ------------------------------------------------------------ configuration


@pytest.mark.parametrize(("value", "address"), [
    ("9464", ("127.0.0.1", 9464)),
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:9100", ("0.0.0.0", 9100)),
    ("[::1]:9464", ("::1", 9464)),
])
def test_metrics_listen_takes_a_port_or_an_address_and_port(value: str, address: tuple[str, int]) -> None:
    assert metrics_address(value) == address
    for section in ("agent", "colony"):
        config = parse_config({section: {"metrics_listen": value}}, "coral.toml")
        assert getattr(config, section).metrics_listen == value


def test_metrics_are_off_by_default() -> None:
    config = parse_config({}, "coral.toml")
    assert config.agent.metrics_listen == "" and config.colony.metrics_listen == ""


@pytest.mark.parametrize(("value", "why"), [
    ("localhost:9464", "HOST an IP address"),
    (":9464", "HOST an IP address"),
    ("0", "from 1 to 65535"),
    ("65536", "from 1 to 65535"),
    ("127.0.0.1:", "from 1 to 65535"),
    ("127.0.0.1:http", "from 1 to 65535"),
    ("::1:9464", "in brackets"),
    (9464, "expected a string"),
])
def test_a_bad_metrics_listen_is_a_clear_config_error(value: object, why: str) -> None:
    for section in ("agent", "colony"):
        with pytest.raises(ConfigError) as err:
            parse_config({section: {"metrics_listen": value}}, "coral.toml")
        message = str(err.value)
        assert message.startswith(f"coral.toml: [{section}] metrics_listen: ") and why in message, message
        assert "\n" not in message


# ------------------------------------------------------------- pure logic


def test_a_deferred_reply_is_timed_when_it_is_sent_and_methods_stay_bounded() -> None:
    """The dispatcher times each reply once, when it is sent; a method that
    is not served is counted as `other`, so a client cannot add series."""
    from coral.daemon.prometheus import Metrics

    metrics = Metrics("coral_test", "9", "[test] metrics_listen", {"local": ["Ping"]})  # never started: no port
    later = Later()
    dispatcher = Dispatcher({"Ping": lambda r, p: later}, ["Ping"])
    dispatcher.latency = metrics.timer("local")
    sent: list[list[bytes]] = []
    dispatcher.handle(wire.Frame((b"c",), wire.Command.REQUEST, b"1", "Ping", b""), Peer(), sent.append)
    dispatcher.handle(wire.Frame((b"c",), wire.Command.REQUEST, b"2", "DropTables", b""), Peer(), sent.append)

    def count(method: str) -> float | None:
        return metrics.registry.get_sample_value("coral_test_request_duration_seconds_count",
                                                 {"via": "local", "method": method})

    assert len(sent) == 1 and count("Ping") == 0 and count("other") == 1  # refused at once
    later.resolve(pb.PingResponse(daemon="later"))
    later.resolve(pb.PingResponse(daemon="twice"))  # the first answer stands: one reply, one observation
    assert len(sent) == 2 and count("Ping") == 1
    assert count("DropTables") is None


def test_a_scrape_serves_the_last_published_snapshot() -> None:
    from prometheus_client import generate_latest

    from coral.daemon.metrics import Family, one
    from coral.daemon.prometheus import Metrics

    metrics = Metrics("coral_test", "9", "[test] metrics_listen", {})
    metrics.publish((one("coral_test_calls", "counter", "calls", 3),))
    metrics.publish((one("coral_test_calls", "counter", "calls", 5),
                     Family("coral_test_ended", "counter", "ended", {"expired": 1, "failed": 0}, "status")))
    text = generate_latest(metrics.registry).decode()
    assert "coral_test_calls_total 5.0" in text and "coral_test_calls_total 3.0" not in text
    assert 'coral_test_ended_total{status="expired"} 1.0' in text and 'status="failed"} 0.0' in text


def test_request_times_are_bounded_and_each_is_observed_once() -> None:
    observed: list[tuple[str, float]] = []
    times = RequestTimes(lambda method, seconds: observed.append((method, seconds)), limit=2)
    times.start((b"a", b"1"), "Ping", 10.0)
    times.start((b"a", b"2"), "ListServices", 11.0)
    times.start((b"b", b"1"), "AttachUprobe", 12.0)  # over the limit: the oldest is forgotten
    times.finish((b"a", b"1"), 13.0)
    times.finish((b"b", b"1"), 13.5)
    times.finish((b"b", b"1"), 14.0)
    assert observed == [("AttachUprobe", 1.5)] and len(times) == 1


def test_call_totals_only_grow_as_sessions_end() -> None:
    """A session's calls count while it runs and after it ended, never twice, never less."""
    totals = CallTotals()
    running = (30, {"sampled": 2, "storage": 9})
    assert totals.with_live([running]) == (30, Counter({"sampled": 2}))
    totals.session_ended("expired")
    totals.session_final(31, {"sampled": 2, "max_events": 1, "storage": 9})  # its final counts
    totals.flushed(handed=31, dropped=4)
    calls, lost = totals.with_live([(5, {"filtered": 1})])
    assert calls == 36 and lost == Counter({"sampled": 2, "max_events": 1, "storage": 4, "filtered": 1})
    assert totals.stored == 27 and totals.ended == Counter({"expired": 1})


# ------------------------------------------------------------------ daemons


def test_metrics_off_opens_no_port(coral_env: CoralEnv, colony: Process, agent: Process) -> None:
    """With the default configuration, neither daemon listens on TCP at all."""
    assert coralctl(coral_env, "ping").returncode == 0
    assert listening_tcp_ports(colony.pid) == set()
    assert listening_tcp_ports(agent.pid) == set()


def test_a_metrics_port_in_use_stops_the_start_with_one_line(coral_env: CoralEnv) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = coral_env.with_config(f'[colony]\nmetrics_listen = "{port}"\n')
        out = subprocess.run([tool("coral-colonyd")], env=env.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == \
        f"coral-colonyd: [colony] metrics_listen 127.0.0.1:{port}: cannot listen: Address already in use"


@dataclass(frozen=True)
class Ports:
    agent: int
    colony: int


@pytest.fixture
def ports() -> Ports:
    return Ports(free_port(), free_port())


@pytest.fixture
def coral_env(coral_env: CoralEnv, ports: Ports, request: pytest.FixtureRequest) -> CoralEnv:
    """For a test that runs Prometheus, both daemons serve /metrics, and
    values are not redacted by name, so a card number would show if
    anything leaked it. Otherwise the default configuration."""
    if "prometheus" in request.fixturenames:
        coral_env.env["CORAL_CONFIG"] = coral_env.with_config(
            f'[agent]\nmetrics_listen = "127.0.0.1:{ports.agent}"\n'
            f'[colony]\nmetrics_listen = "{ports.colony}"\n'
            "[sdk]\nredact_patterns = []\n").env["CORAL_CONFIG"]
    return coral_env


class Prometheus:
    """A Prometheus server of the test's own, scraping both daemons every second."""

    def __init__(self, work: Path, ports: Ports) -> None:
        if not os.access(PROMETHEUS, os.X_OK):
            pytest.fail(f"{PROMETHEUS} is missing: scripts/setup.sh installs Debian's prometheus package")
        self.port = free_port()
        config = work / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: coral-agentd\n    static_configs:\n      - targets: ['127.0.0.1:{ports.agent}']\n"
            f"  - job_name: coral-colonyd\n    static_configs:\n      - targets: ['127.0.0.1:{ports.colony}']\n")
        self.log_path = work / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                if "Ready" in get(f"{self.url}/-/ready", 1.0):
                    return
            time.sleep(0.1)  # its start-up (WAL replay) has no other signal
        raise AssertionError(f"prometheus not ready in {timeout:g}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query: each series' labels (without __name__, job, instance) -> value."""
        body = json.loads(get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"))
        if body.get("status") != "success":
            raise AssertionError(f"query {expr!r}: {body}")
        out = {}
        for r in body["data"]["result"]:
            labels = tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("__name__", "job", "instance")))
            out[labels] = float(r["value"][1])
        return out

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return next(iter(result.values())) if len(result) == 1 else None

    def until(self, expr: str, expected: float, timeout: float = 30.0) -> None:
        """Ask again until the scraped value is `expected` (scrapes come every second)."""
        end = time.monotonic() + timeout
        seen = None
        while time.monotonic() < end:
            seen = self.value(expr)
            if seen == expected:
                return
            time.sleep(0.25)  # the next scrape
        raise AssertionError(f"{expr} is {seen}, not {expected}, after {timeout:g}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def prometheus(tmp_path: Path, ports: Ports) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, ports)
    try:
        yield server
    finally:
        server.stop()  # always: a test that fails leaves no Prometheus behind


def names_served_within(url: str, names: set[str], timeout: float = 10.0) -> None:
    """Every one of `names` is a `name` label of the ping_counter family
    (once the loop has published a snapshot taken after they appeared)."""
    end = time.monotonic() + timeout
    missing = names
    while time.monotonic() < end:
        served = set(re.findall(r'^coral_[a-z]+_ping_counter\{name="([^"]+)"\}', get(url), re.MULTILINE))
        missing = names - served
        if not missing:
            return
        time.sleep(0.2)  # the next snapshot (once per heartbeat)
    raise AssertionError(f"ping counters not served at {url}: {sorted(missing)}")


def documented_metrics() -> set[str]:
    """The metric names docs/reliability.md lists (`coral_..._total` and the like)."""
    text = (REPO / "docs" / "reliability.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(coral_[a-z_]+)", section))


def served_families(exposition: str) -> set[str]:
    """The families in a scrape, less the `_created` series prometheus_client adds to a histogram."""
    names = {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}
    return {n for n in names if not (n.endswith("_created") and n.removesuffix("_created") in names)}


def test_prometheus_scrapes_exactly_the_sessions_calls(
    coral_env: CoralEnv, ports: Ports, colony: Process, agent: Process, payments: NativeService,
    prometheus: Prometheus,
) -> None:
    """Attach to validate_card with its arguments captured, call it N times:
    Prometheus, through its own HTTP API, sees N calls seen and stored,
    none lost, one session expired on the agent and in the colony, and the
    requests' latencies; no scrape carries a card number."""
    prometheus.until('up{job="coral-agentd"}', 1)
    prometheus.until('up{job="coral-colonyd"}', 1)
    prometheus.until("coral_agent_processes", 1)  # the demo registered
    assert prometheus.value("coral_agent_calls_total") == 0

    attach = subprocess.Popen(
        [tool("coralctl"), "--output", "json", "debug", "attach", "payments", "--function", "validate_card",
         "--duration", "3s", "--capture-args"], env=coral_env.env, stdout=subprocess.PIPE, text=True)
    assert attach.stdout is not None
    first = json.loads(attach.stdout.readline())
    assert first["kind"] == "session", first
    prometheus.until("coral_agent_sessions_active", 1)
    prometheus.until("coral_colony_sessions_active", 1)
    assert prometheus.value("coral_agent_probes_attached") == first["probes"]
    assert payments.call(N).startswith(f"done {N} ")
    rest, _ = attach.communicate(timeout=60)
    assert attach.returncode == 0
    calls = [json.loads(line) for line in rest.splitlines() if json.loads(line)["kind"] == "call"]
    assert len(calls) == N and calls[0]["args"][0]["value"].startswith(CARD_PREFIX)  # captured, not redacted

    prometheus.until("coral_agent_calls_total", N)
    prometheus.until("coral_agent_calls_stored_total", N)
    prometheus.until('coral_agent_sessions_ended_total{status="expired"}', 1)
    prometheus.until("coral_agent_sessions_active", 0)
    prometheus.until("coral_colony_calls_pulled_total", N)
    prometheus.until('coral_colony_sessions_ended_total{status="expired"}', 1)
    assert prometheus.value("sum(coral_agent_calls_lost_total)") == 0
    assert prometheus.value('sum(coral_agent_sessions_ended_total{status!="expired"})') == 0
    assert prometheus.value("coral_agent_storage_failing") == 0
    assert prometheus.value("coral_colony_agents_connected") == 1
    assert (prometheus.value("coral_agent_probe_hit_cost_seconds") or 0) > 0
    assert (prometheus.value("coral_colony_audit_rows_total") or 0) >= 1  # the attach's row
    # The attach, answered through the colony, and the colony's pulls on the agent.
    assert (prometheus.value('coral_colony_request_duration_seconds_count{method="AttachUprobe"}') or 0) >= 1
    assert (prometheus.value('coral_agent_request_duration_seconds_count{via="colony",method="AttachUprobe"}')
            or 0) >= 1
    assert (prometheus.value('coral_agent_request_duration_seconds_count{via="colony",method="QueryUprobeEvents"}')
            or 0) >= 1
    # Every counter ping shows is served, as a family of its own or by name.
    for where, port, own in (("--local", ports.agent, AGENT_OWN), ("", ports.colony, COLONY_OWN)):
        ping = json.loads(coralctl(coral_env, *filter(None, ["--output", "json", "ping", where])).stdout)
        assert len(ping["counters"]) > 10
        names_served_within(f"http://127.0.0.1:{port}/metrics", set(ping["counters"]) - own)

    # Straight from the daemons: no captured value, and every family documented.
    documented = documented_metrics()
    for port in (ports.agent, ports.colony):
        exposition = get(f"http://127.0.0.1:{port}/metrics")
        assert CARD_PREFIX not in exposition
        assert served_families(exposition) - documented == set(), "families missing from docs/reliability.md"


def test_prometheus_is_the_debian_package() -> None:
    """The server the scrape test runs (scripts/setup.sh installs it; its own service is not used)."""
    if shutil.which("prometheus") is None and not os.access(PROMETHEUS, os.X_OK):
        pytest.fail("prometheus is not installed: run scripts/setup.sh")
    out = subprocess.run([PROMETHEUS, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "prometheus, version 2." in out.stdout + out.stderr
