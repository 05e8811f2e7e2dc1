"""`--count-by KEY` on a native function: the key as data the BPF program
reads at each return (bpf/coral_probes.c, `struct count_by`), and the
kernel's rows turned back into what a user reads (docs/protocol.md,
UprobeConfig.count_by).

The key is parsed by coral/expr.py (`parse_value`) and resolved against
the function's metadata by the same code as a `--where` value
(where_native), so the same names, fields and refusals hold, redaction
included. Keys are values: the agent shows a string key through the
redaction rules, and rows that then read the same are merged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from coral import expr
from coral.agentd import abi, where_native
from coral.daemon.errors import InvalidArgument
from coral.proto import coral_pb2 as pb
from coral.redact import Rules

# Shared with bpf/coral_probes.c (engine.bpf_constants() passes them as -D flags).
COUNT_MAX_KEYS = 1024  # distinct keys per session on one agent; later ones go to the overflow row
COUNT_ROWS = 8192  # rows in the kernel for all sessions together (each also has an overflow and an unread row)
COUNT_STR = 32  # bytes of a string key kept in the kernel, its NUL included
# How the key is read: an integer (a register, or a field through a pointer), or a string.
CB_INT, CB_CSTR, CB_PAIR, CB_HELD = 1, 2, 3, 4
# struct count_key.overflow
ROW_KEY, ROW_OVERFLOW, ROW_UNREAD = 0, 1, 2
# struct count_key.num for strings
STR_WHOLE, STR_NULL, STR_CUT = 0, 1, 2

_KINDS = {"int": CB_INT, "pointer": CB_INT, "iface": CB_INT, "cstring": CB_CSTR, "pair": CB_PAIR, "held": CB_HELD}


def constants() -> dict[str, int]:
    names = ("COUNT_MAX_KEYS", "COUNT_ROWS", "COUNT_STR", "CB_INT", "CB_CSTR", "CB_PAIR", "CB_HELD", "ROW_KEY",
             "ROW_OVERFLOW", "ROW_UNREAD", "STR_WHOLE", "STR_NULL", "STR_CUT")
    return {name: int(globals()[name]) for name in names}


@dataclass(frozen=True)
class Key:
    """Where the kernel reads one call's key, and how it is shown."""

    shown: str  # as the user wrote it
    kind: int  # CB_*
    when: int  # where_native.W_ENTRY (an argument, from the frame) | W_RETURN (a result register)
    reg: int = 0
    len_reg: int = 0
    deref: bool = False
    offset: int = 0
    len_off: int = 0
    width: int = 8
    signed: bool = True
    shape: str = "int"  # int | pointer | iface | string: how the agent shows the value
    err_reg: int = -1  # a result register that is non-zero for a failed call (Go's err); -1: no convention


def compile_key(text: str, meta: pb.FunctionMetadata, rules: Rules) -> Key:
    """The key `text` on the native function `meta`; InvalidArgument, naming
    the column, if it cannot be read."""
    try:
        path = expr.parse_value(text)
        compiler = where_native._Compiler(meta, rules)  # the same resolution of names as --where
        if path.root == "duration":
            raise where_native._Refused("duration is what each row measures, not a key", path.column)
        value = compiler.value(path)
        err_reg = -1
        if meta.kind == "go":
            err = next((r for r in abi.result_layout(meta) if r.type == "error"), None)
            if err is not None and err.regs and max(err.regs) < abi.CAPTURED_RESULT_REGS:
                err_reg = err.regs[0]
    except expr.ExprError as exc:
        raise InvalidArgument(f"--count-by {expr.described(text, exc)}") from None
    except where_native._Refused as exc:
        raise InvalidArgument(f"--count-by {expr.described(text, expr.ExprError(exc.message, exc.column))}") from None
    if value.kind not in _KINDS:
        raise InvalidArgument(f"--count-by {expr.described(text, expr.ExprError(f'{value.shown} cannot be a key', 1))}")
    kind = _KINDS[value.kind]
    shape = "string" if kind != CB_INT else value.kind if value.kind in ("pointer", "iface") else "int"
    return Key(str(path), kind, value.when, value.reg, value.len_reg, value.deref, value.offset, value.len_off,
               value.width, value.signed, shape, err_reg)


@dataclass
class Row:
    """One row's counts, as the kernel keeps them (or several merged)."""

    calls: int = 0
    errors: int = 0
    sum_ns: int = 0
    max_ns: int = 0
    histogram: dict[int, int] = field(default_factory=dict)

    def add(self, other: Row) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.sum_ns += other.sum_ns
        self.max_ns = max(self.max_ns, other.max_ns)
        for bucket, n in other.histogram.items():
            self.histogram[bucket] = self.histogram.get(bucket, 0) + n


# (key as shown, overflow, unread, cut): rows that read the same are one
RowId = tuple[str, bool, bool, bool]


def shown(key: Key, num: int, text: bytes, rules: Rules) -> tuple[str, bool]:
    """A kernel key as the user reads it, and whether it was cut."""
    if key.kind != CB_INT:
        if num == STR_NULL:
            return "NULL" if key.shape == "string" and key.kind == CB_CSTR else "nil", False
        return rules.text(text.split(b"\0", 1)[0].decode(errors="replace")), num == STR_CUT
    bits = key.width * 8
    value = num & ((1 << bits) - 1)
    if key.shape == "iface":
        return ("nil" if value == 0 else "non-nil"), False
    if key.shape == "pointer":
        return ("NULL" if value == 0 else hex(value)), False
    if key.signed and value >> (bits - 1):
        value -= 1 << bits
    return str(value), False


def merged(rows: Iterable[tuple[RowId, Row]]) -> dict[RowId, Row]:
    out: dict[RowId, Row] = {}
    for row_id, row in rows:
        out.setdefault(row_id, Row()).add(row)
    return out


def to_messages(rows: dict[RowId, Row]) -> list[pb.CountRow]:
    """Most calls first; the overflow and unread rows last; rows with no call left out."""
    ordered = sorted(((k, r) for k, r in rows.items() if r.calls),
                     key=lambda item: (item[0][1] or item[0][2], -item[1].calls, item[0][0], item[0][2]))
    return [pb.CountRow(key=k, overflow=o, unread=u, cut=c, calls=r.calls, errors=r.errors, sum_duration_ns=r.sum_ns,
                        max_duration_ns=r.max_ns, histogram=r.histogram) for (k, o, u, c), r in ordered]


def to_json(rows: dict[RowId, Row]) -> list[dict[str, object]]:
    """For the session's row in agent.duckdb."""
    return [{"key": k, "overflow": o, "unread": u, "cut": c, "calls": r.calls, "errors": r.errors,
             "sum_ns": r.sum_ns, "max_ns": r.max_ns, "histogram": {str(b): n for b, n in r.histogram.items()}}
            for (k, o, u, c), r in rows.items()]


def from_json(items: Iterable[dict[str, object]]) -> list[pb.CountRow]:
    rows = {}
    for item in items:
        hist = item.get("histogram", {})
        rows[(str(item.get("key", "")), bool(item.get("overflow")), bool(item.get("unread")), bool(item.get("cut")))] = \
            Row(int(str(item.get("calls", 0))), int(str(item.get("errors", 0))), int(str(item.get("sum_ns", 0))),
                int(str(item.get("max_ns", 0))),
                {int(b): int(n) for b, n in hist.items()} if isinstance(hist, dict) else {})
    return to_messages(rows)


def check_python_key(text: str, rules: Rules) -> None:
    """What the agent refuses of a Python key before arming: a syntax error,
    `err`, `duration`, a redacted name (the SDK checks the rest against the function)."""
    try:
        path = expr.parse_value(text)
    except expr.ExprError as exc:
        raise InvalidArgument(f"--count-by {expr.described(text, exc)}") from None
    refusal = ""
    if path.root == "duration":
        refusal = "duration is what each row measures, not a key"
    elif path.root == "err":
        refusal = "err is a Go function's error result; a Python call's failure is counted in ERRORS"
    else:
        secret = next((n for n in path.names if rules.is_secret_name(n)), None)
        if secret is not None:
            refusal = f"{secret!r} is redacted; a key on it would reveal it"
    if refusal:
        raise InvalidArgument(f"--count-by {expr.described(text, expr.ExprError(refusal, path.column))}")


def check_config(config: pb.UprobeConfig) -> None:
    """--count-by reports no calls: the options that shape reported calls do not apply."""
    if not config.count_by:
        return
    clashes = [name for name, on in (("--capture-args", config.capture_args),
                                     ("--capture-return", config.capture_return),
                                     ("--print", bool(config.capture_only)),
                                     ("--sample-rate", config.sample_rate > 1),
                                     ("--rate", bool(config.rate_per_s)),
                                     ("--min-duration", bool(config.min_duration_ns)),
                                     ("--max-calls", bool(config.max_events)),
                                     ("--stack", config.stack)) if on]
    if clashes:
        raise InvalidArgument(f"--count-by counts every call and reports none: leave out {', '.join(clashes)}")
