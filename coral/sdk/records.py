"""Call records as Python values: the struct coral_call of bpf/coral_call.h
decoded, and the records the extension keeps in test mode."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from coral.agentd.probes import bpf_source_dir
from coral.layouts import read_layouts
from coral.sdk import _probe

# struct coral_call as bpf/coral_call.h declares it (the extension is built from the same header)
RECORD_FORMAT = "<" + read_layouts(bpf_source_dir() / "coral_call.h")["coral_call"].format
CALL_STACK = 0x20  # CORAL_CALL_STACK (bpf/coral_call.h): `stack` holds the call's Python frames


@dataclass(frozen=True)
class CallRecord:
    fn_id: int
    call_id: int
    start_ns: int
    end_ns: int
    flags: int
    args: tuple[tuple[str, str], ...]  # (name, repr) in call order
    ret: str  # return value's repr, or "Type: message" when raised
    stack: str = ""  # --stack: "qualname\tfile\tline" a line, the function's own frame first (bpf/coral_call.h)

    @property
    def raised(self) -> bool:
        return bool(self.flags & _probe.CALL_RAISED)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & _probe.CALL_TRUNCATED)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def arg(self, name: str) -> str:
        for key, value in self.args:
            if key == name:
                return value
        raise KeyError(name)


def decode_args(raw: bytes) -> tuple[tuple[str, str], ...]:
    """ "name=repr" entries separated by NUL bytes."""
    out = []
    for entry in raw.split(b"\0"):
        if entry:
            name, _, value = entry.decode("utf-8", errors="replace").partition("=")
            out.append((name, value))
    return tuple(out)


def parse_record(buf: bytes) -> CallRecord:
    """One struct coral_call as copied out of the process (e.g. by BPF)."""
    fn_id, call_id, start, end, flags, args_len, ret_len, stack_len, args, ret, stack = \
        struct.unpack_from(RECORD_FORMAT, buf)
    args_len = min(args_len, _probe.ARGS_MAX)
    ret_len = min(ret_len, _probe.RET_MAX)
    stack_len = min(stack_len, _probe.STACK_MAX) if flags & CALL_STACK else 0
    return CallRecord(
        fn_id, call_id, start, end, flags, decode_args(args[:args_len]), ret[:ret_len].decode("utf-8", errors="replace"),
        stack[:stack_len].decode("utf-8", errors="replace"),
    )


def from_test_capture(d: dict[str, Any]) -> CallRecord:
    ret = d["ret"].decode("utf-8", "replace")
    return CallRecord(d["fn_id"], d["call_id"], d["start_ns"], d["end_ns"], d["flags"], decode_args(d["args"]), ret,
                      d["stack"].decode("utf-8", "replace") if d["flags"] & CALL_STACK else "")


def take_test_records() -> list[CallRecord]:
    """The records kept since the last call (test mode only, see
    _probe._set_test_mode)."""
    return [from_test_capture(d) for d in _probe._take_records()]
