"""The SDK alone (docs/sdk-guide.md, "Installing the SDK alone"): the
coral-sdk wheel, built from sdk/ with `python -m build` for each CPython the
SDK supports, installed into a fresh venv of that version with nothing but
its dependencies, and a service in that venv debugged through the real
colony and agent: every call seen, and nothing of the daemons loaded.

The builders (one venv per version holding `build`) come from
scripts/setup.sh; the interpreters from pyenv. A version missing is a skip
saying so, and under CORAL_REQUIRE_BPF=1 (CI) a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_BPF
from tests.harness import REPO, CoralEnv, Process, start_attach
from tests.test_native_e2e import records, wait_for_service

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# The oldest of each dependency sdk/pyproject.toml allows (on 3.10: pyzmq 26.0
# has no wheel for later versions).
OLDEST = ("pyzmq==26.0.0", "protobuf==4.25.1", "pyelftools==0.31")
# The oldest and newest release of each protobuf major the SDK allows.
PROTOBUFS = ("4.25.1", "4.25.9", "5.26.1", "5.29.6", "6.30.0", "6.33.6", "7.34.0", "7.36.2")
# What the SDK must never load: the daemons' dependencies, and the config.
NOT_IN_THE_SDK = {"duckdb", "capstone", "bcc", "numpy", "sdnotify", "tomllib", "tomli", "pycxxfilt", "prometheus_client"}
N = 7


def _missing(why: str) -> BaseException:
    """A skip naming what is missing; under CORAL_REQUIRE_BPF=1 a failure."""
    if REQUIRE_BPF:
        return pytest.fail.Exception(f"CORAL_REQUIRE_BPF=1 but {why}", pytrace=False)
    return pytest.skip.Exception(why, _use_item_location=True)


def interpreter(version: str) -> Path:
    """pyenv's newest CPython of that version (scripts/setup.sh looks the same way)."""
    found = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"),
                   key=lambda p: tuple(int(x) for x in p.parents[1].name.split(".") if x.isdigit()))
    if not found:
        raise _missing(f"no CPython {version} in ~/.pyenv/versions (pyenv install {version})")
    return found[-1]


def builder(version: str) -> Path:
    python = REPO / ".venvs" / f"sdk-build-{version}" / "bin" / "python"
    if not python.exists():
        raise _missing(f"{python.parent.parent} is missing: run scripts/setup.sh")
    return python


def run(argv: list[str | Path], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, cwd=cwd)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


class SdkWheels:
    """The coral-sdk wheel of each version, built on first use with the
    normal build (sdist, then the wheel from it), one after the other: the
    builds share sdk/staged."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.built: dict[str, Path] = {}

    def __getitem__(self, version: str) -> Path:
        if version not in self.built:
            dist = self.out / version
            run([builder(version), "-m", "build", "--no-isolation", "--outdir", dist, REPO / "sdk"])
            (self.built[version],) = dist.glob("coral_sdk-*.whl")
        return self.built[version]


@pytest.fixture(scope="session")
def sdk_wheels(tmp_path_factory: pytest.TempPathFactory) -> SdkWheels:
    return SdkWheels(tmp_path_factory.mktemp("sdk-wheels"))


@dataclass(frozen=True)
class SdkVenv:
    version: str
    python: Path
    packages: dict[str, str]


def fresh_venv(version: str, wheel: Path, where: Path, pins: tuple[str, ...] = ()) -> SdkVenv:
    """A new venv of pyenv's CPython, without even pip; the wheel and its
    dependencies installed into it by the builder's pip (from PyPI)."""
    venv = where / f"venv-{version}"
    run([interpreter(version), "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    pip: list[str | Path] = [builder(version), "-m", "pip", "--python", python, "--disable-pip-version-check"]  # --python: first
    run([*pip, "install", "-q", wheel, *pins])
    listed = run([*pip, "list", "--format", "json"]).stdout
    return SdkVenv(version, python, {p["name"].lower(): p["version"] for p in json.loads(listed)})


TARGET = """
import json, sys
sys.path.insert(0, sys.argv[3])  # shop.py only: the venv's site-packages hold the SDK
import coral, coral.sdk, shop
sdk = coral.sdk.init(service=sys.argv[1], runtime_dir=sys.argv[2])
print(json.dumps({"registered": sdk.wait_registered(30), "coral": coral.__file__, "python": sys.version.split()[0],
                  "modules": sorted(sys.modules)}), flush=True)
for line in sys.stdin:
    for i in range(int(line)):
        shop.checkout(i, 10 * i)
    print("done", flush=True)
"""

SHOP = """
def checkout(order, cents):
    return {"order": order, "total": cents + 1}
"""


class SdkService:
    """A service in the SDK-only venv: isolated mode (-I: no PYTHONPATH, no
    user site, not the checkout), no CORAL_* variable, the agent's runtime
    directory given to init()."""

    def __init__(self, venv: SdkVenv, env: CoralEnv, service: str, work: Path) -> None:
        (work / "target.py").write_text(TARGET)
        (work / "shop.py").write_text(SHOP)
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("CORAL_", "PYTHON"))}
        self.proc = subprocess.Popen([str(venv.python), "-I", str(work / "target.py"), service, str(env.runtime_dir),
                                      str(work)], env=clean, cwd=work, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the service exited: {self.proc.communicate(timeout=10)[1]}")
        self.hello = json.loads(line)

    def call(self, n: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(15)


CASES = [pytest.param(v, (), id=v) for v in PYTHONS] + [pytest.param("3.10", OLDEST, id="3.10-oldest-deps")]


@pytest.mark.system
@pytest.mark.parametrize(("version", "pins"), CASES)
def test_a_service_with_only_the_sdk_wheel_is_debugged_through_the_agent(
    version: str, pins: tuple[str, ...], sdk_wheels: SdkWheels, tmp_path: Path, coral_env: CoralEnv,
    colony: Process, agent: Process,
) -> None:
    venv = fresh_venv(version, sdk_wheels[version], tmp_path, pins)
    assert set(venv.packages) == {"coral-sdk", "pyzmq", "protobuf", "pyelftools"}, venv.packages
    for pin in pins:
        name, wanted = pin.split("==")
        assert venv.packages[name] == wanted
    service = f"shop-{version.replace('.', '')}{'-oldest' if pins else ''}"
    svc = SdkService(venv, coral_env, service, tmp_path)
    try:
        assert svc.hello["registered"], svc.proc.stderr
        assert svc.hello["python"].startswith(version + ".")
        assert svc.hello["coral"].startswith(str(venv.python.parent.parent)), svc.hello["coral"]
        loaded = {m.split(".")[0] for m in svc.hello["modules"]}
        assert not loaded & NOT_IN_THE_SDK
        wait_for_service(coral_env, service)
        session, first = start_attach(coral_env, service, "shop.checkout", "--duration", "3s", "--capture-args",
                                      "--capture-return")
        assert first["probes"] == 1 and first["return_probe"] == "python", first
        svc.call(N)
        out, _ = session.communicate(timeout=60)
        lines = records(out)
        calls = [e for e in lines if e["kind"] == "call"]
        assert lines[-1]["calls"] == N and lines[-1]["lost"] == {}, lines[-1]
        assert [c["args"][1]["value"] for c in calls] == [str(10 * i) for i in range(N)]
        assert [c["return_value"]["value"] for c in calls] == [f"{{'order': {i}, 'total': {10 * i + 1}}}"
                                                               for i in range(N)]
    finally:
        svc.stop()


@pytest.mark.system  # builds the wheel (PyPI for its build's venv)
def test_the_wheel_holds_the_sdk_and_asks_only_for_its_light_dependencies(sdk_wheels: SdkWheels) -> None:
    wheel = sdk_wheels["3.10"]
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packages = {n.rsplit("/", 1)[0] for n in names if n.startswith("coral/")}
    assert packages == {"coral", "coral/sdk", "coral/proto", "coral/daemon"}
    assert "coral/daemon/config.py" not in names and "coral/daemon/runtime.py" not in names
    assert any(n.startswith("coral/sdk/_probe.cpython-310-") and n.endswith(".so") for n in names)
    requires = sorted(line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: "))
    assert requires == ['protobuf<8,>=4.25.1', "pycxxfilt>=1.2; extra == \"demangle\"", "pyelftools>=0.31", "pyzmq>=26"]
    assert "Requires-Python: >=3.10" in metadata.splitlines()


LOAD = """
import sys
sys.path.insert(0, sys.argv[1])  # this protobuf, ahead of the venv's
import google.protobuf
from coral.proto import coral_pb2 as pb
import coral.sdk.server  # every SDK module that speaks protobuf
reply = pb.RegisterProcessResponse(registration_id="r", heartbeat_interval_ms=500, redact_names=["amount"],
                                   max_message_bytes=65536)
again = pb.RegisterProcessResponse.FromString(reply.SerializeToString())
assert again == reply and list(again.redact_names) == ["amount"], again
print(google.protobuf.__version__)
"""


@pytest.mark.system  # installs each protobuf from PyPI
def test_the_generated_modules_load_on_each_protobuf_major_the_sdk_allows(sdk_wheels: SdkWheels,
                                                                       tmp_path: Path) -> None:
    venv = fresh_venv("3.10", sdk_wheels["3.10"], tmp_path)
    for version in PROTOBUFS:
        target = tmp_path / f"protobuf-{version}"
        run([builder("3.10"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--target",
             target, f"protobuf=={version}"])
        # -W error: a version warning from the runtime about this gencode fails too
        loaded = run([venv.python, "-I", "-W", "error", "-c", LOAD, target], cwd=tmp_path).stdout.strip()
        assert loaded == version, (version, loaded)



CLOSURE = """
import json, sys
import coral.sdk.lifecycle, coral.sdk.server, coral.sdk.metadata, coral.sdk.native, coral.sdk.where
print(json.dumps(sorted(m for m in sys.modules if m == "coral" or m.startswith("coral."))))
"""


def test_the_sdk_imports_only_modules_its_distribution_ships() -> None:
    """sdk/setup.py's SHIPPED against what the SDK loads here (no wheel
    built): a module the SDK starts to import must be shipped too."""
    import ast

    tree = ast.parse((REPO / "sdk" / "setup.py").read_text())
    shipped = next(ast.literal_eval(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "SHIPPED" for t in node.targets))
    modules = {name.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for name in shipped
               if name.endswith(".py")}
    loaded = json.loads(run([sys.executable, "-c", CLOSURE], cwd=REPO).stdout)
    extension = {"coral.sdk._probe"}
    assert set(loaded) - extension <= modules, sorted(set(loaded) - extension - modules)
