from __future__ import annotations

import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from coral.agentd.probes import BpfUnavailable, check_bpf_support
from tests.harness import (
    GO_TOOLCHAINS,
    REPO,
    CoralEnv,
    NativeService,
    Process,
    build_c,
    go_or_skip,
    start_agent,
    start_colony,
)

REQUIRE_BPF = os.environ.get("CORAL_REQUIRE_BPF") == "1"

# The tiers (README, "Tests"): `fast` is pure logic, no root, no BPF, no
# daemons; `system` is everything that starts daemons, loads BPF, builds
# targets or needs root. A test is `system` if it asks for a fixture that
# does any of that, or its module says so (pytestmark = pytest.mark.system).
SYSTEM_FIXTURES = {"coral_env", "fresh_env", "colony", "agent", "bpf", "payments", "payments_binary", "go",
                   "colony_user", "member", "full_speed_agent", "world"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("system") is None and SYSTEM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.system)
        if item.get_closest_marker("system") is None:
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session", params=GO_TOOLCHAINS)
def go(request: pytest.FixtureRequest) -> str:
    """The go binary of each toolchain the Go tests run against (Debian's,
    and a current one: tests/harness.py GO_TOOLCHAINS). One not installed
    is a skip saying so; with CORAL_REQUIRE_GO=1 (CI) a failure."""
    return go_or_skip(request.param)


def _bpf_reason() -> str | None:
    try:
        check_bpf_support()
    except BpfUnavailable as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def bpf() -> None:
    """Tests that need real BPF. Skipped with the reason where the machine
    cannot do it; with CORAL_REQUIRE_BPF=1 (CI) that is a failure instead."""
    reason = _bpf_reason()
    if reason:
        if REQUIRE_BPF:
            pytest.fail(f"CORAL_REQUIRE_BPF=1 but BPF is unavailable: {reason}")
        pytest.skip(f"BPF unavailable: {reason}")


@pytest.fixture(scope="session")
def payments_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c(REPO / "examples" / "native" / "payments.c", tmp_path_factory.mktemp("bin") / "payments")


@pytest.fixture
def coral_env() -> Iterator[CoralEnv]:
    env = CoralEnv.create()
    yield env
    env.remove()


@pytest.fixture
def colony(coral_env: CoralEnv) -> Iterator[Process]:
    proc = start_colony(coral_env)
    yield proc
    proc.stop()


@pytest.fixture
def agent(coral_env: CoralEnv, colony: Process, bpf: None) -> Iterator[Process]:
    proc = start_agent(coral_env)
    yield proc
    proc.stop()


@pytest.fixture
def payments(coral_env: CoralEnv, agent: Process, payments_binary: Path) -> Iterator[NativeService]:
    svc = NativeService(coral_env, payments_binary)
    yield svc
    svc.stop()


@pytest.fixture
def colony_user() -> Iterator[pwd.struct_passwd]:
    """A stand-in for the `coral` user coral-colonyd.service runs as: a
    real unprivileged user whose group is coral, created for the test."""
    name = f"coral-c-{secrets.token_hex(3)}"
    created = subprocess.run(["useradd", "--system", "--no-create-home", "-g", "coral", name], capture_output=True)
    if created.returncode != 0:
        pytest.fail(f"cannot create test user {name}: {created.stderr.decode()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def member() -> Iterator[pwd.struct_passwd]:
    """A real non-root user in group coral (an operator), of a name no one
    else uses: created for the test, removed after."""
    name = f"coral-t-{secrets.token_hex(3)}"  # 14 characters: within useradd's 32
    created = subprocess.run(["useradd", "--system", "--no-create-home", "-G", "coral", name], capture_output=True)
    if created.returncode != 0:  # 9 (exists already) is not ours to use, nor to remove
        pytest.fail(f"cannot create test user {name}: {created.stderr.decode()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def full_speed_agent(coral_env: CoralEnv, bpf: None) -> Iterator[Process]:
    """An agent with no CPU budget: for tests that follow tens of thousands
    of calls in a second, over the default budget (10% of one CPU)."""
    coral_env.env["CORAL_CONFIG"] = coral_env.with_config("[sessions]\ncpu_budget_percent = 0\n").env["CORAL_CONFIG"]
    proc = start_agent(coral_env)
    yield proc
    proc.stop()
