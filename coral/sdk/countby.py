"""`--count-by KEY` for a Python function: the key read for each call by
code compiled once at arm time (the same reading as `--where`'s, in
coral/sdk/where.py: no user code runs), the call added to its key's row
in this process, and the record flagged CALL_COUNTED, so the BPF program
counts it (calls, histogram) and sends nothing. The rows go to the agent
with the DisarmFunction answer at the session's end, and when it asks
(CountCalls) while the session runs (docs/protocol.md, UprobeConfig.count_by).

Bounded like the kernel's: at most MAX_KEYS distinct keys, later ones in
one overflow row, so the rows add up to every call counted; a key that
cannot be read (an argument not passed, an attribute that is not there,
a value that is not a plain builtin) is counted in one unread row. Keys
are redacted as values are when they leave the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from coral import expr, histogram
from coral.daemon.errors import InvalidArgument
from coral.proto import coral_pb2 as pb
from coral.sdk import _probe, where

MAX_KEYS = 1024  # as the kernel's (coral/agentd/countby.py COUNT_MAX_KEYS)
KEY_CHARS = 64  # characters of a string key kept
COUNTED: int = _probe.CALL_COUNTED
_OVERFLOW, _UNREAD = ("", True, False), ("", False, True)  # row ids of the two rows with no key


class Tally:
    """Rows by key: [calls, errors, sum_ns, max_ns, {bucket: calls}]."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        self.lock = threading.Lock()  # calls return on any thread
        self.rows: dict[tuple[str, bool, bool], list[Any]] = {}
        self.keys = 0

    def add(self, key: Any, exc: Any, duration_ns: int) -> int:
        try:
            row_id = _UNREAD if key is where._UNREAD else (_shown(key), False, False)
        except where._Fail:  # not a plain builtin: its own __str__ is never run
            row_id = _UNREAD
        bucket = histogram.bucket_of(duration_ns)
        with self.lock:
            row = self.rows.get(row_id)
            if row is None:
                if row_id != _UNREAD:
                    if self.keys >= self.max_keys:
                        row_id = _OVERFLOW
                    else:
                        self.keys += 1
                row = self.rows.get(row_id)
                if row is None:
                    row = self.rows[row_id] = [0, 0, 0, 0, {}]
            row[0] += 1
            row[1] += exc is not None
            row[2] += duration_ns
            row[3] = max(row[3], duration_ns)
            row[4][bucket] = row[4].get(bucket, 0) + 1
        return COUNTED

    def messages(self, redact: Callable[[str], str]) -> list[pb.CountRow]:
        """The rows as they leave the process: keys redacted (rows that then read the same are merged)."""
        with self.lock:
            items = [(k, [r[0], r[1], r[2], r[3], dict(r[4])]) for k, r in self.rows.items()]
        out: dict[tuple[str, bool, bool, bool], pb.CountRow] = {}
        for (key, overflow, unread), (calls, errors, sum_ns, max_ns, hist) in items:
            text = redact(key) if key else ""
            row_id = (text[:KEY_CHARS], overflow, unread, len(key) > KEY_CHARS)
            row = out.setdefault(row_id, pb.CountRow(key=row_id[0], overflow=overflow, unread=unread, cut=row_id[3]))
            row.calls += calls
            row.errors += errors
            row.sum_duration_ns += sum_ns
            row.max_duration_ns = max(row.max_duration_ns, max_ns)
            for b, n in hist.items():
                row.histogram[b] += n
        return sorted(out.values(), key=lambda r: (r.overflow or r.unread, -r.calls, r.key, r.unread))


def _shown(value: Any) -> str:
    """A key as text: plain builtins only (their own str), never a call into the service's code."""
    value = where._scalar(value)  # _Fail for anything else: the caller counts it unread
    if type(value) is bytes:
        return value.decode(errors="replace")
    return str(value) if type(value) is not str else value


def compile_counting(key: str, condition: str, function: str, func: Callable[..., Any],
                     is_secret: Callable[[str], bool], tally: Tally) -> where.Condition:
    """The probe's two halves for a session that counts by `key` (and keeps
    only the calls `condition` holds for, if any): the return half adds the
    call to `tally` and answers COUNTED, or the condition's verdict."""
    try:
        path = expr.parse_value(key)
    except expr.ExprError as exc:
        raise InvalidArgument("--count-by " + expr.described(key, exc)) from None
    if path.root == "duration":
        raise InvalidArgument("--count-by " + expr.described(key, expr.ExprError(
            "duration is what each row measures, not a key", path.column, key)))
    tree = None
    if condition:
        try:
            tree = expr.parse_condition(condition)
        except expr.ExprError as exc:
            raise InvalidArgument("--where " + expr.described(condition, exc)) from None
    compiler = where._Compiler(condition, where.Signature.of(function, func), is_secret)
    test = compiler.node(tree, "_coral_result") if tree is not None else ["_coral_result = True"]
    compiler.text = key
    try:
        read = compiler.value(path, "_coral_key")
    except InvalidArgument as exc:
        raise InvalidArgument("--count-by " + exc.message.removeprefix("--where ")) from None
    namespace = compiler.namespace
    namespace["_coral_tally"] = tally.add
    snapshot = [f"_coral_e{i}" for i in range(len(compiler.entry_values))]
    snapshot_tuple = f"({', '.join(snapshot)},)" if snapshot else "()"
    unpack = f"{snapshot_tuple} = _coral_snap" if snapshot else "pass"
    verdict = f"return {where.FILTERED} if _coral_result is False else {where.WHERE_ERROR}"
    source = (f"def _coral_entry({compiler.parameters()}):\n"
              f"{_indent(compiler.entry_code)}\n    return {snapshot_tuple}\n\n"
              f"def _coral_return(_coral_snap, _coral_ret, _coral_exc, _coral_dur):\n"
              f"    try:\n        {unpack}\n    except _coral_Exception:\n        return {where.WHERE_ERROR}\n"
              f"{_indent(test)}\n    if _coral_result is not True:\n        {verdict}\n"
              f"    try:\n{_indent(read, 8)}\n    except _coral_Exception:\n        _coral_key = _coral_unread\n"
              f"    return _coral_tally(_coral_key, _coral_exc, _coral_dur)\n")
    exec(compile(source, f"<--count-by {key!r}>", "exec"), namespace)
    return where.Condition(key, namespace["_coral_entry"], namespace["_coral_return"], source)


def _indent(lines: list[str], by: int = 4) -> str:
    return "\n".join(" " * by + line for line in lines) if lines else " " * by + "pass"
