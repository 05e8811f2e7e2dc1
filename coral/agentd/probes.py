"""Whether this machine can run Coral's BPF program, and where its source is."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class BpfUnavailable(RuntimeError):
    """This machine cannot run BCC programs; the message says why, in one line
    (a RuntimeError: the daemon's start-up prints it as one line, exit 1)."""


def bpf_source_dir() -> Path:
    """bpf/ beside the package in a checkout; share/coral/bpf when installed."""
    for candidate in (Path(__file__).resolve().parents[2] / "bpf", Path(sys.prefix) / "share" / "coral" / "bpf"):
        if (candidate / "coral_probes.c").exists():
            return candidate
    raise BpfUnavailable("BPF sources not found (looked in bpf/ and share/coral/bpf)")


def load_bcc() -> Any:
    """Import BCC or explain, in one line, why this machine cannot use it."""
    try:
        import bcc
    except ImportError as exc:
        raise BpfUnavailable(f"BCC is not importable ({exc}); install python3-bpfcc (scripts/setup.sh)") from None
    if os.geteuid() != 0:
        raise BpfUnavailable("uprobes need root: run coral-agentd as root")
    return bcc


def check_bpf_support() -> None:
    """Raise BpfUnavailable unless BCC can compile for the running kernel."""
    load_bcc()
    build = Path(f"/lib/modules/{os.uname().release}/build")
    if not build.exists():
        raise BpfUnavailable(f"no kernel headers at {build}; run scripts/setup.sh")
