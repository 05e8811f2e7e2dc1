"""Build of coral.sdk._probe, the Python SDK's probe site (metadata: setup.cfg)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "coral.sdk._probe",
            sources=["coral/sdk/_probe.c", "coral/sdk/_layout.c"],
            include_dirs=["bpf"],
            depends=["bpf/coral_call.h", "coral/sdk/_layout.h"],
            # -fvisibility=hidden: only PyInit, the probe site and the
            # semaphore are exported; -g keeps symbols for readers like gdb/perf.
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
