"""A `--where` condition on a native function, as data the BPF program
evaluates (bpf/coral_probes.c, `struct where_prog`): no compile per session.

The condition is parsed by coral/expr.py, then each test is resolved
against the function's metadata into a *term*: which value (a register of
the arguments or of the results, a field through a pointer, the
duration), how to read it (an integer at its width and sign, a C string,
a pointer and a length, a string held in an object), and what to compare
it with. The boolean structure becomes a short postfix code over the
terms. Terms on arguments (and the fields and strings they lead to) are
evaluated at the call's entry, the others at its return; the kernel keeps
only the entry terms' answers (two bit masks) until the return.

Everything is bounded by coral/expr.py (16 tests, 64-byte strings), so the
program fits a fixed map value and is evaluated in bounded time. A name
the function does not have, a field its type does not have, a string
compared as a number, `err` off Go, `raised` (Python only) and a redacted
argument or field are refused here, naming the column.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from coral import expr
from coral.agentd import abi, conditions
from coral.agentd.values import int_kind
from coral.daemon.errors import InvalidArgument
from coral.proto import coral_pb2 as pb
from coral.redact import Rules

# Shared with bpf/coral_probes.c (engine.bpf_constants() passes them as -D flags).
WHERE_MAX_TERMS = expr.MAX_TERMS
WHERE_MAX_CODE = 64  # joins: 15 `&&` or `||`, and a `!` on each term or join at most (31)
WHERE_VALUES = 128  # the kernel's values: terms, return terms' patterns, then one per join
WHERE_STR = expr.MAX_STRING  # bytes of a string constant, and of a string compared
WHERE_ARG_REGS = 6  # argument registers a condition reads at the entry (coral_where): System V's six, Go's first six
WHERE_SLOTS = 1  # sessions with a condition on one function at a time (the kernel evaluates theirs inline)
WHERE_RETURN_TERMS = 4  # tests of ret, err and duration in one condition: the entry tabulates their 16 combinations
# When a term is read.
W_ENTRY, W_RETURN, W_DURATION = 1, 2, 3
# How its value is read.
WK_INT, WK_CSTR, WK_PAIR, WK_HELD = 1, 2, 3, 4
# What is done with it (Term.negate turns each into its opposite: >= is !<).
W_EQ, W_LT, W_GT, W_SEQ, W_PREFIX, W_NONEMPTY = range(1, 7)
# Values: 0..15 entry term i's answer; WHERE_PUSH_RET + j return term j's; then one per join.
WHERE_PUSH_RET = 16
W_AND, W_OR, W_NOT = 1, 2, 3
_RET_PATTERNS = (0xAAAA, 0xCCCC, 0xF0F0, 0xFF00)  # return term j's answer in each of the 16 combinations

_INT_OPS = {"==": (W_EQ, False), "!=": (W_EQ, True), "<": (W_LT, False), "<=": (W_GT, True), ">": (W_GT, False),
            ">=": (W_LT, True)}
_FLIPPED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def constants() -> dict[str, int]:
    """The names bpf/coral_probes.c uses for the above."""
    names = ("WHERE_SLOTS", "WHERE_MAX_TERMS", "WHERE_MAX_CODE", "WHERE_VALUES", "WHERE_STR", "WHERE_RETURN_TERMS",
             "WHERE_PUSH_RET", "W_ENTRY", "W_RETURN", "W_DURATION", "WK_INT", "WK_CSTR", "WK_PAIR", "WK_HELD", "W_EQ",
             "W_LT", "W_GT", "W_SEQ", "W_PREFIX", "W_NONEMPTY")
    return {name: int(globals()[name]) for name in names}


@dataclass(frozen=True)
class Term:
    """One test, as the kernel reads and decides it."""

    when: int  # W_ENTRY | W_RETURN | W_DURATION
    kind: int  # WK_*
    op: int  # W_EQ ..
    negate: bool = False
    reg: int = 0  # the argument's or result's register (index into the six copied, or the three results)
    len_reg: int = 0  # WK_PAIR: the length's register
    deref: bool = False  # the value is a field at `offset` in what the register points to
    offset: int = 0  # deref: the field's offset; WK_HELD: the data pointer's offset in the object
    len_off: int = 0  # WK_HELD: the length's offset in the object
    width: int = 8  # WK_INT: bytes of the value (the register's upper bits are not part of it)
    signed: bool = True
    value: int = 0  # WK_INT: the constant
    text: bytes = b""  # strings: the constant


@dataclass(frozen=True)
class Program:
    terms: tuple[Term, ...]
    code: tuple[tuple[int, int, int, int], ...]  # joins: (W_AND | W_OR | W_NOT, value a, value b, value dst)
    result: int  # the value that is the condition's answer

    @property
    def entry_mask(self) -> int:
        """Bit i: term i is read at the call's entry."""
        return sum(1 << i for i, t in enumerate(self.terms) if t.when == W_ENTRY)

    @property
    def return_terms(self) -> tuple[int, ...]:
        """The terms read at the return, in the order of their bits."""
        return tuple(i for i, t in enumerate(self.terms) if t.when != W_ENTRY)

    def table(self, truth: int = 0, unread: int = 0) -> int:
        """What the kernel's entry works out (coral_probes.c, where_table):
        for each of the 16 combinations of the return terms' answers, the
        condition's answer (bits 0-15) and whether it is unread (16-31),
        given the entry terms' answers (bit i: term i)."""
        values = {i: (0xFFFF if truth >> i & 1 else 0, 0xFFFF if unread >> i & 1 else 0)
                  for i in range(WHERE_MAX_TERMS)}
        values.update({WHERE_PUSH_RET + j: (p, 0) for j, p in enumerate(_RET_PATTERNS)})
        for op, a_at, b_at, dst in self.code:
            (a, ua), (b, ub) = values[a_at], values[b_at]
            if op == W_NOT:
                values[dst] = (~a & ~ua & 0xFFFF, ua)
            elif op == W_AND:
                decided = (~a & ~ua) | (~b & ~ub)  # one side is false: so is the whole
                values[dst] = (a & b & ~ua & ~ub & 0xFFFF, ~decided & (ua | ub) & 0xFFFF)
            else:
                decided = (a & ~ua) | (b & ~ub)  # one side is true: so is the whole
                values[dst] = (decided & 0xFFFF, ~decided & (ua | ub) & 0xFFFF)
        value, unread_bits = values[self.result]
        return value | unread_bits << 16

    def holds(self, answers: list[bool | None], returns: int = 0) -> bool | None:
        """The condition given each term's answer (None: unread) and the return terms' bits."""
        truth = sum(1 << i for i, a in enumerate(answers) if a)
        unread = sum(1 << i for i, a in enumerate(answers) if a is None)
        table = self.table(truth, unread)
        return None if table >> 16 + returns & 1 else bool(table >> returns & 1)


@dataclass(frozen=True)
class _Value:
    """A path resolved: where its value is and what it is."""

    shown: str  # how the user wrote it
    type: str
    kind: str  # int | pointer | cstring | pair | held | iface | duration
    when: int
    reg: int = 0
    len_reg: int = 0
    deref: bool = False
    offset: int = 0
    len_off: int = 0
    width: int = 8
    signed: bool = True


class _Refused(Exception):
    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message, self.column = message, column


def compile_condition(text: str, meta: pb.FunctionMetadata, rules: Rules) -> Program | None:
    """The program for `text` on the native function `meta` (None for no
    condition); InvalidArgument, naming the column, if it cannot hold."""
    if not text:
        return None
    try:
        node = expr.parse_condition(text)
        return _Compiler(meta, rules).program(node)
    except expr.ExprError as exc:
        raise InvalidArgument(f"--where {expr.described(text, exc)}") from None
    except _Refused as exc:
        raise InvalidArgument(f"--where {expr.described(text, expr.ExprError(exc.message, exc.column))}") from None


class _Compiler:
    def __init__(self, meta: pb.FunctionMetadata, rules: Rules) -> None:
        self.meta = meta
        self.rules = rules
        self.go = meta.kind == "go"
        self.arguments = {s.name: s for s in abi.argument_layout(meta)}
        self.fields = {a.name: list(a.fields) for a in meta.arguments if a.fields}
        self.terms: list[Term] = []
        self.joins: list[tuple[int, int, int, int]] = []

    def program(self, node: expr.Node) -> Program:
        result = self.emit(node)
        return Program(tuple(self.terms), tuple(self.joins), result)

    # -- the boolean structure: each join a value of its own; `!!x` is x
    def emit(self, node: expr.Node, negated: bool = False) -> int:
        if isinstance(node, expr.Not):
            return self.emit(node.operand, not negated)
        if isinstance(node, (expr.And, expr.Or)):
            at = self.emit(node.operands[0])
            for operand in node.operands[1:]:
                at = self.join(W_AND if isinstance(node, expr.And) else W_OR, at, self.emit(operand))
        else:
            term = self.term(node)
            if term.when == W_ENTRY:
                at = len(self.terms)
            else:
                returns = sum(t.when != W_ENTRY for t in self.terms)
                if returns == WHERE_RETURN_TERMS:
                    raise _Refused(f"at most {WHERE_RETURN_TERMS} tests of ret, err and duration in one condition",
                                   _column(node))
                at = WHERE_PUSH_RET + returns
            self.terms.append(term)
        return self.join(W_NOT, at, at) if negated else at

    def join(self, op: int, a: int, b: int) -> int:
        dst = WHERE_PUSH_RET + WHERE_RETURN_TERMS + len(self.joins)
        self.joins.append((op, a, b, dst))
        return dst

    # -- one test
    def term(self, node: expr.Node) -> Term:
        if isinstance(node, expr.Raised):
            language = {"go": "Go", "c++": "C++", "rust": "Rust"}.get(self.meta.kind, "C")
            raise _Refused(f"raised is for Python functions; {self.function} is {language}, whose exceptions and "
                           "panics are not values a probe can test (calls they end are counted as unwound): "
                           "test its result instead (ret < 0; err != nil in Go)", node.column)
        if isinstance(node, expr.Truthy):
            v = self.value(node.path)
            if v.kind in ("cstring", "pair", "held"):
                return self.string_term(v, W_NONEMPTY, b"", column=node.path.column)
            return self.int_term(v, "!=", 0)
        if isinstance(node, expr.StartsWith):
            v = self.value(node.path)
            if v.kind not in ("cstring", "pair", "held"):
                raise _Refused(f"startswith takes a string; {v.shown} is {v.type or 'an integer'}",
                               node.path.column)
            return self.string_term(v, W_PREFIX, node.prefix.encode(), column=node.path.column)
        if not isinstance(node, expr.Compare):
            raise _Refused(f"cannot evaluate {node}", 1)  # And, Or, Not: handled by emit
        left, op, right = node.left, node.op, node.right
        if isinstance(left, expr.Literal):
            left, right, op = right, left, _FLIPPED[op]
        if not isinstance(left, expr.Path):
            raise _Refused("compares two constants; one side must be a name", node.left.column)
        if isinstance(right, expr.Path):
            raise _Refused(f"compares {left} with {right}; a native condition compares a value with a constant",
                           right.column)
        v = self.value(left)
        if v.kind in ("cstring", "pair", "held") and right.kind != "nil":
            if right.kind != "string" or op not in ("==", "!="):
                raise _Refused(f"{v.shown} is a string ({v.type}): compare it with == or != to a quoted string, "
                               f"or use startswith({v.shown}, \"...\")", right.column)
            return self.string_term(v, W_SEQ, str(right.value).encode(), op == "!=", left.column)
        if right.kind == "string":
            raise _Refused(f"{v.shown} is {_a(v.type)}, not a string: compare it with a number", right.column)
        if right.kind == "nil":
            if v.kind not in ("pointer", "cstring", "iface", "held"):
                raise _Refused(f"{v.shown} is {_a(v.type)}, which cannot be nil", right.column)
            return self.int_term(_pointer(v), op, 0)
        if v.kind == "iface":
            raise _Refused(f"{v.shown} ({v.type}) compares only with nil: {v.shown} != nil", right.column)
        if v.kind == "duration" and right.kind not in ("duration", "int"):
            raise _Refused("duration compares with a duration such as 5ms", right.column)
        value = int(right.value or 0)
        bits = v.width * 8
        low, high = (-(1 << bits - 1), (1 << bits - 1) - 1) if v.signed else (0, (1 << bits) - 1)
        if not low <= value <= high:
            raise _Refused(f"{value} is out of range of {v.shown} ({v.type or 'integer'}: {bits}-bit "
                           f"{'signed' if v.signed else 'unsigned'})", right.column)
        return self.int_term(v, op, value)

    def int_term(self, v: _Value, op: str, value: int) -> Term:
        code, negate = _INT_OPS[op]
        return Term(v.when, WK_INT, code, negate, v.reg, 0, v.deref, v.offset, 0, v.width, v.signed, value)

    def string_term(self, v: _Value, op: int, text: bytes, negate: bool = False, column: int = 1) -> Term:
        if v.when != W_ENTRY:
            raise _Refused(f"{v.shown} is a string returned ({v.type}); a condition tests a returned string only "
                           "for nil: test the arguments' strings", column)
        kind = {"cstring": WK_CSTR, "pair": WK_PAIR, "held": WK_HELD}[v.kind]
        return Term(v.when, kind, op, negate, v.reg, v.len_reg, v.deref, v.offset, v.len_off, text=text)

    # -- values
    @property
    def function(self) -> str:
        return self.meta.name or "the function"

    def value(self, path: expr.Path) -> _Value:
        root = path.root
        if root == "duration":
            return _Value("duration", "duration", "duration", W_DURATION, signed=False)
        if root in ("ret", "err"):
            slot = self.result(path)
            when = W_RETURN
        else:
            argument = self.arguments.get(root)
            if argument is None:
                names = ", ".join(self.arguments) or "none"
                raise _Refused(f"{self.function} has no argument {root!r}; its arguments are: {names}", path.column)
            slot, when = argument, W_ENTRY
        self.check_secret(slot.name if root not in ("ret", "err") else "", path, 0)
        if len(path.names) == 1:
            return self.of_slot(slot, root, when, path.column)
        if len(path.names) > 2:
            raise _Refused(f"one level of fields can be read: {path.names[0]}{'->' if path.arrows[0] else '.'}"
                           f"{path.names[1]}, not {path}", path.column)
        field = path.names[1]
        shown = str(path)
        self.check_secret(field, path, 1)
        if slot.shape == "struct":  # Go, by value: its fields are in registers of their own
            inner = next((f for f in slot.fields if f.name == field), None)
            if inner is None:
                raise _Refused(f"{slot.type} has no field {field!r}; its fields are: "
                               f"{', '.join(f.name for f in slot.fields) or 'none'}", path.column)
            return self.of_slot(inner, shown, when, path.column)
        members = self.fields.get(slot.name) if when == W_ENTRY and slot.regs and slot.regs[0] < WHERE_ARG_REGS \
            else None
        if members is None or slot.shape != "int" or not slot.regs:
            raise _Refused(f"{root} ({slot.type or 'unknown type'}) has no fields Coral can read: fields are read "
                           "through a pointer to a struct whose members DWARF describes", path.column)
        member = next((m for m in members if m.name == field), None)
        if member is None:
            raise _Refused(f"{slot.type} has no field {field!r}; its fields are: "
                           f"{', '.join(m.name for m in members)}", path.column)
        base = _Value(shown, member.type, "int", when, slot.regs[0], deref=True, offset=member.offset)
        if member.type.strip() in abi.C_STRING_TYPES:
            return _with(base, kind="cstring")
        if "*" in member.type:
            return _with(base, kind="pointer", width=8, signed=False)
        width, signed = self.int_of(member.type, member.size)
        return _with(base, width=width, signed=signed)

    def result(self, path: expr.Path) -> abi.Slot:
        results = abi.result_layout(self.meta)
        if path.root == "err":
            if not self.go:
                raise _Refused(f"err is a Go function's error result; {self.function} is not Go: test its return "
                               "value, e.g. ret < 0", path.column)
            slot = next((r for r in results if r.type == "error"), None)
            if slot is None:
                raise _Refused(f"{self.function} returns no error", path.column)
        else:
            slot = results[0] if results else None
            if slot is None:
                raise _Refused(f"{self.function} returns nothing to test", path.column)
        if slot.regs and max(slot.regs) >= abi.CAPTURED_RESULT_REGS:
            raise _Refused(f"{path.root} is in a register a condition cannot read (results: only RAX, RBX and RCX)",
                           path.column)
        self.check_secret(slot.name, path, 0)
        if len(path.names) > 1 and slot.shape != "struct":
            raise _Refused(f"{path.root} ({slot.type}) has no fields Coral can read: fields are read through an "
                           "argument's pointer", path.column)
        return slot

    def of_slot(self, slot: abi.Slot, shown: str, when: int, column: int) -> _Value:
        why = {"float": "is in a floating-point register, which a probe cannot read",
               "stack": "is passed on the stack, which is not copied",
               "struct": "is a struct: test one of its fields",
               "goslice": "is a slice: test its elements through a function that takes them",
               "fat": "is a slice or trait object", "variants": "is an enum returned in registers"}.get(slot.shape)
        if why is None and slot.regs and max(slot.regs) >= WHERE_ARG_REGS and when == W_ENTRY:
            why = f"is in a register past the first {WHERE_ARG_REGS}, which a condition does not read"
        if why is not None or slot.shape == "unsupported" or not slot.regs:
            reason = why or "is not in a register the probe copies"
            raise _Refused(f"{shown} ({slot.type or 'unknown type'}) {reason}", column)
        v = _Value(shown, slot.type, "int", when, slot.regs[0])
        if slot.shape == "cstring":
            return _with(v, kind="cstring")
        if slot.shape == "gostring":
            return _with(v, kind="pair", len_reg=slot.regs[1])
        if slot.shape == "held":
            return _with(v, kind="held", offset=slot.held[0], len_off=slot.held[1])
        if slot.shape == "iface":
            return _with(v, kind="iface", width=8, signed=False)
        type_name = (slot.underlying or slot.type).strip()
        if type_name.startswith("*") or "*" in type_name or "&" in type_name or type_name.startswith(
                ("map[", "chan ", "func(", "unsafe.Pointer")):
            return _with(v, kind="pointer", width=8, signed=False)
        width, signed = self.int_of(type_name, 8)
        return _with(v, width=width, signed=signed)

    def int_of(self, type_name: str, size: int) -> tuple[int, bool]:
        """Width and sign of an integer type, as the capture shows it."""
        t = type_name.strip()
        if self.go and t in ("int", "uint"):
            return 8, t == "int"
        if t in ("bool", "_Bool"):
            return 1, False
        kind = int_kind(t)
        if kind is not None:
            return kind
        if t.startswith("enum "):
            return (size if size in (1, 2, 4, 8) else 4), True
        return (size if size in (1, 2, 4, 8) else 8), True

    def check_secret(self, name: str, path: expr.Path, index: int) -> None:
        if name and self.rules.is_secret_name(name):
            shown = path.names[0] + "".join(("->" if a else ".") + n for a, n in zip(path.arrows[:index],
                                                                                      path.names[1:index + 1],
                                                                                      strict=True))
            raise _Refused(f"{shown} is redacted (its name is a secret's): a condition on it would reveal it",
                           path.column)


def _column(node: expr.Node) -> int:
    paths = expr.paths_in(node)
    return paths[0].column if paths else 1


def _with(v: _Value, **changes: object) -> _Value:
    return dataclasses.replace(v, **changes)  # type: ignore[arg-type]


def _pointer(v: _Value) -> _Value:
    """The register (or field) itself, as an address: what `nil` is compared with."""
    return _with(v, kind="pointer", width=8, signed=False, len_reg=0, len_off=0,
                 offset=v.offset if v.deref else 0)


def _a(type_name: str) -> str:
    return f"an integer ({type_name})" if type_name else "an integer"


# --errors-only on C++ and Rust (conditions.unwinding_errors): the calls that
# leave by unwinding are kept by the kernel as it finds their frames dead
# (bpf/coral_probes.c, unwound_calls), never at a return; at a return the
# condition holds only for a Rust Result's Err. So: no return holds (C++, and
# Rust functions returning no Result), or the discriminant says Err.
NO_RETURN = Program((), (), 0)  # no terms: value 0 is false for every return


def errors_program(meta: pb.FunctionMetadata) -> tuple[Program, str]:
    """The kernel's test at a return for --errors-only on C++ or Rust, and
    what the session reports (for the log and the attach's answer)."""
    if conditions.language(meta) != "rust":
        return NO_RETURN, "calls that leave by an exception"
    results = abi.result_layout(meta)
    declared = meta.return_values[0].type if meta.return_values else ""
    if not _is_result(declared):
        return NO_RETURN, f"calls that panic ({meta.name} returns no Result)"
    slot = results[0] if results else None
    if slot is None or slot.shape != "variants" or not slot.pieces:
        raise InvalidArgument(f"--errors-only: {meta.name} returns {declared} in memory, not in registers (more than "
                              "16 bytes, or variants with more than one value), so the probe cannot test it for Err; "
                              "attach without --errors-only")
    v: pb.EnumMetadata = slot.variants
    d = v.discriminant
    err = next((x for x in v.variants if x.name == "Err"), None)
    others = [x for x in v.variants if x is not err]
    reg = slot.regs[slot.pieces.index(d.offset)] if d.offset in slot.pieces else -1
    if err is None or len(others) != 1 or reg < 0 or reg >= abi.CAPTURED_RESULT_REGS or d.size not in (1, 2, 4, 8):
        raise InvalidArgument(f"--errors-only: the layout of {declared}, which {meta.name} returns, has no "
                              "discriminant the probe can test for Err; attach without --errors-only")
    # A niche layout gives the dataful variant no value of its own (is_default):
    # Err is then every value that is not Ok's.
    chosen = others[0] if err.is_default else err
    term = Term(W_RETURN, WK_INT, W_EQ, negate=err.is_default, reg=reg, width=d.size, signed=False,
                value=chosen.discriminant & ((1 << 8 * d.size) - 1))
    return Program((term,), (), WHERE_PUSH_RET), "calls that panic or return Err"


def _is_result(type_name: str) -> bool:
    name = type_name.removeprefix("struct ").strip()
    return name.startswith(("Result<", "core::result::Result<", "std::result::Result<"))
