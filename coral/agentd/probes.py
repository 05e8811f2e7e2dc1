"""BCC programs: build, attach, drain, detach. Knows nothing of sessions or
sockets; the session layer decides what to probe and where events go."""

from __future__ import annotations

import ctypes
import logging
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EVENT_FORMAT = struct.Struct("<QQQ6QIIII")  # struct coral_event in bpf/native_probe.c
ENTRY, RETURN = 0, 1
COUNTER_NAMES = ("calls", "lost_ringbuf", "sampled_out", "unpaired_returns")


class BpfUnavailable(Exception):
    """This machine cannot run BCC programs; the message says why, in one line."""


def bpf_source_dir() -> Path:
    """bpf/ beside the package in a checkout; share/coral/bpf when installed."""
    for candidate in (Path(__file__).resolve().parents[2] / "bpf", Path(sys.prefix) / "share" / "coral" / "bpf"):
        if (candidate / "native_probe.c").exists():
            return candidate
    raise BpfUnavailable("BPF sources not found (looked in bpf/ and share/coral/bpf)")


def load_bcc() -> Any:
    """Import BCC or explain, in one line, why this machine cannot use it."""
    try:
        import bcc
    except ImportError as exc:
        raise BpfUnavailable(f"BCC is not importable ({exc}); install python3-bpfcc (scripts/setup.sh)") from None
    import os

    if os.geteuid() != 0:
        raise BpfUnavailable("uprobes need root (or CAP_BPF and CAP_PERFMON)")
    return bcc


def check_bpf_support() -> None:
    """Raise BpfUnavailable unless BCC can compile for the running kernel."""
    import os

    load_bcc()
    build = Path(f"/lib/modules/{os.uname().release}/build")
    if not build.exists():
        raise BpfUnavailable(f"no kernel headers at {build}; run scripts/setup.sh")


@dataclass(frozen=True)
class RawEvent:
    kind: int
    ts_ns: int  # CLOCK_MONOTONIC
    duration_ns: int
    retval: int
    args: tuple[int, ...]
    pid: int
    tid: int


@dataclass(frozen=True)
class ProbeSpec:
    """Where and how to probe: a function at ``address`` (the symbol value;
    BCC maps it to the file offset) in ``path``, for the given pids."""

    path: str
    address: int
    pids: tuple[int, ...]
    capture_args: bool = False
    capture_return: bool = False
    sample_rate: int = 1
    ringbuf_pages: int = 256


def render_cflags(spec: ProbeSpec) -> list[str]:
    return [
        f"-DCORAL_RINGBUF_PAGES={spec.ringbuf_pages}",
        f"-DCORAL_SAMPLE_RATE={max(1, spec.sample_rate)}",
        f"-DCORAL_CAPTURE_ARGS={int(spec.capture_args)}",
        f"-DCORAL_CAPTURE_RETURN={int(spec.capture_return)}",
    ]


class NativeProbe:
    """Entry uprobe + uretprobe on one native function, in one BPF object."""

    def __init__(self, spec: ProbeSpec) -> None:
        bcc = load_bcc()
        self.spec = spec
        self._pending: list[RawEvent] = []
        source = (bpf_source_dir() / "native_probe.c").read_text()
        try:
            self._bpf = bcc.BPF(text=source, cflags=render_cflags(spec))
        except Exception as exc:  # BCC raises bare Exception on compile errors
            raise RuntimeError(f"BPF compile failed: {exc}") from None
        self.attached = 0
        try:
            for pid in spec.pids:
                self._bpf.attach_uprobe(name=spec.path, addr=spec.address, fn_name=b"coral_entry", pid=pid)
                self.attached += 1
                self._bpf.attach_uretprobe(name=spec.path, addr=spec.address, fn_name=b"coral_return", pid=pid)
                self.attached += 1
        except Exception as exc:
            self.close()
            raise RuntimeError(f"attach to {spec.path}@{spec.address:#x} failed: {exc}") from None
        self._bpf["events"].open_ring_buffer(self._on_record)

    def _on_record(self, _ctx: Any, data: int, size: int) -> int:
        if size < EVENT_FORMAT.size:
            return 0
        f = EVENT_FORMAT.unpack(ctypes.string_at(data, EVENT_FORMAT.size))
        # ts, duration, retval, args[6], pid, tid, kind, flags
        self._pending.append(
            RawEvent(kind=f[11], ts_ns=f[0], duration_ns=f[1], retval=f[2], args=tuple(f[3:9]), pid=f[9], tid=f[10])
        )
        return 0

    def drain(self) -> list[RawEvent]:
        """Everything the kernel has submitted so far (non-blocking)."""
        self._bpf.ring_buffer_consume()
        events, self._pending = self._pending, []
        return events

    def counters(self) -> dict[str, int]:
        table = self._bpf["counters"]
        return {name: int(table[ctypes.c_int(i)].value) for i, name in enumerate(COUNTER_NAMES)}

    def close(self) -> None:
        """Detach every probe and free the maps. Safe to call twice."""
        bpf = getattr(self, "_bpf", None)
        if bpf is None:
            return
        try:
            bpf.cleanup()
        except Exception as exc:  # a detach failure must not stop the others
            log.warning("BPF cleanup: %s", exc)
        self._bpf = None
        self.attached = 0
