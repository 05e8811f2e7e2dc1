"""The coral-sdk distribution: coral.sdk, its C extension, coral.proto and the
few shared modules the SDK imports (SHIPPED), nothing of the daemons.

Built in the checkout, it first copies SHIPPED from the repository into
staged/ (so an sdist carries them); built from an sdist, staged/ is already
there. The extension's flags are the root setup.py's."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STAGED = HERE / "staged"

# Every file the SDK needs at run time, and nothing that imports duckdb,
# capstone, bcc, sdnotify or tomllib (coral/sdk/records.py, for the tests,
# is left out). tests/test_sdk_alone.py checks that the SDK imports nothing
# else of coral, and runs it on CPython 3.10 with only pyproject.toml's
# dependencies.
SHIPPED = (
    "coral/__init__.py",
    "coral/py.typed",
    "coral/demangle.py",
    "coral/dwarflocations.py",
    "coral/dwarftypes.py",
    "coral/elfinfo.py",
    "coral/expr.py",
    "coral/gotypes.py",
    "coral/histogram.py",
    "coral/procmaps.py",
    "coral/redact.py",
    "coral/daemon/__init__.py",
    "coral/daemon/errors.py",
    "coral/daemon/liveness.py",
    "coral/daemon/methods.py",
    "coral/daemon/server.py",
    "coral/daemon/sockets.py",
    "coral/daemon/wire.py",
    "coral/proto/__init__.py",
    "coral/proto/coral_pb2.py",
    "coral/proto/coral_pb2.pyi",
    "coral/sdk/__init__.py",
    "coral/sdk/_layout.c",
    "coral/sdk/_layout.h",
    "coral/sdk/_probe.c",
    "coral/sdk/_probe.pyi",
    "coral/sdk/arming.py",
    "coral/sdk/countby.py",
    "coral/sdk/lifecycle.py",
    "coral/sdk/locate.py",
    "coral/sdk/metadata.py",
    "coral/sdk/native.py",
    "coral/sdk/registration.py",
    "coral/sdk/server.py",
    "coral/sdk/settings.py",
    "coral/sdk/targets.py",
    "coral/sdk/where.py",
    "bpf/coral_call.h",
)


def stage() -> None:
    """A fresh copy of SHIPPED, when building in the checkout."""
    if not (REPO / "coral" / "sdk" / "_probe.c").is_file():
        return  # an unpacked sdist: staged/ came with it
    shutil.rmtree(STAGED, ignore_errors=True)
    for name in SHIPPED:
        target = STAGED / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


stage()
setup(
    ext_modules=[
        Extension(
            "coral.sdk._probe",
            sources=["staged/coral/sdk/_probe.c", "staged/coral/sdk/_layout.c"],
            include_dirs=["staged/bpf"],
            depends=["staged/bpf/coral_call.h", "staged/coral/sdk/_layout.h"],
            # as the root setup.py: only PyInit, the probe site and the
            # semaphore exported; -g keeps symbols for gdb/perf.
            extra_compile_args=[
                "-O2",
                "-g",
                "-fvisibility=hidden",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
            ],
        )
    ],
)
