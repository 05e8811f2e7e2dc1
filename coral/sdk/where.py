"""`--where` for a Python function: the condition, compiled once at arm
time into Python functions the probe wrapper calls for each traced call.

Two halves, because values are read when the docs say they are:
``at_entry(*args, **kwargs)`` reads the arguments and their attributes
before the call runs; ``at_return(snapshot, result, exc, duration_ns)``
decides with the return value, the exception and the duration. A
condition that reads nothing at the return has no ``at_return``: its
``at_entry`` gives the verdict itself; one that reads nothing at the
entry has no ``at_entry``.

A verdict is a record flag (coral/sdk/_probe.c, bpf/coral_call.h): 0 to
show the call, CALL_FILTERED when the condition is false, CALL_WHERE_ERROR
when a value it needs could not be read or compared.

Never calls code of the service: attributes come from the instance's own
``__dict__``, a slot's member descriptor or a plain class attribute
(``_probe.attribute_of``, in C: class dicts along the MRO, never
``getattr``, so no property, ``__getattr__`` or ``__getattribute__``
override runs); values are compared only as exact
builtin ``int``/``float``/``str``/``bytes``/``bool``/``None`` (a subclass
of one is converted by the builtin type's own C method first); exception
classes are matched by name along their MRO. Nothing raises out of the
generated functions: any failure is the CALL_WHERE_ERROR verdict.
"""

from __future__ import annotations

import keyword
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coral import expr
from coral.daemon.errors import InvalidArgument
from coral.sdk import _probe

FILTERED: int = _probe.CALL_FILTERED
WHERE_ERROR: int = _probe.CALL_WHERE_ERROR


class _Fail(Exception):
    """A value could not be read or compared: the verdict is WHERE_ERROR."""


_UNREAD: Any = object()  # a snapshot entry that could not be read at the entry
_NOTHING: Any = object()

Env = tuple[tuple[Any, ...], Any, Any, int]  # (snapshot, result, exception or None, duration_ns)
Getter = Callable[[Env], Any]
Test = Callable[[Env], bool]


@dataclass(frozen=True)
class Condition:
    text: str
    at_entry: Callable[..., Any] | None
    at_return: Callable[[Any, Any, Any, int], int] | None
    source: str = ""  # the generated code, for a reader (and a test) to see


# --- reading without running user code ------------------------------------

_MRO = type.__dict__["__mro__"]
_TYPE_NAME = type.__dict__["__name__"]
_TYPE_QUALNAME = type.__dict__["__qualname__"]
_TYPE_MODULE = type.__dict__["__module__"]


def _mro(tp: type) -> tuple[type, ...]:
    mro = _MRO.__get__(tp, type)  # type's own descriptor: a metaclass cannot answer for it
    return mro if type(mro) is tuple else ()


def _scalar(value: Any) -> Any:
    """The value as an exact builtin, or _Fail. A subclass is converted by
    the builtin's own method (int.__int__ on an IntEnum copies the int
    without consulting the subclass)."""
    tp = type(value)
    if tp is int or tp is str or tp is float or tp is bytes or tp is bool or value is None:
        return value
    if issubclass(tp, int):
        return int.__int__(value)
    if issubclass(tp, str):
        return str.__str__(value)
    if issubclass(tp, bytes):
        return bytes.__bytes__(value)
    if issubclass(tp, float):
        return float.__float__(value)
    raise _Fail


_NUMBERS = frozenset({int, float, bool})
_SIZED = frozenset({list, tuple, dict, set, frozenset})


def _number(value: Any) -> Any:
    """An exact int, float or bool, or _Fail."""
    value = _scalar(value)
    if type(value) not in _NUMBERS:
        raise _Fail
    return value


def _text(value: Any) -> Any:
    """An exact str or bytes, or _Fail."""
    value = _scalar(value)
    if type(value) is not str and type(value) is not bytes:
        raise _Fail
    return value


def _truthy(value: Any) -> bool:
    if value is None:
        return False
    tp = type(value)
    if tp in _SIZED:
        return len(value) != 0
    try:
        return bool(_scalar(value))
    except _Fail:
        return True  # an object of another kind: it is not None (its own __bool__ is never run)


def _compare_values(a: Any, b: Any, op: str) -> bool:
    """Two read values (`ret == amount`): both builtin, of one kind."""
    a, b = _scalar(a), _scalar(b)
    if a is None or b is None:
        if op not in ("==", "!="):
            raise _Fail
        return (a is b) is (op == "==")
    if (type(a) in _NUMBERS) is not (type(b) in _NUMBERS) or (type(a) not in _NUMBERS and type(a) is not type(b)):
        raise _Fail
    return bool(_OPS[op](a, b))


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclass(frozen=True)
class Signature:
    """What binding a call's arguments to parameter names needs, from the
    code object (read once, at arm time)."""

    function: str
    positional: tuple[str, ...]  # as the wrapper receives them (a bound method's self not included)
    posonly: int
    keyword_only: tuple[str, ...]
    varargs: str
    varkw: str
    defaults: dict[str, Any]

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.positional, *((self.varargs,) if self.varargs else ()), *self.keyword_only,
                *((self.varkw,) if self.varkw else ()))

    @classmethod
    def of(cls, name: str, func: Callable[..., Any]) -> Signature:
        bound = isinstance(func, types.MethodType)
        fn: Any = func.__func__ if bound else func  # type: ignore[attr-defined]
        code = fn.__code__
        names = code.co_varnames
        n, k = code.co_argcount, code.co_kwonlyargcount
        positional = names[:n]
        at = n + k
        varargs = names[at] if code.co_flags & 0x04 else ""
        varkw = names[at + (1 if varargs else 0)] if code.co_flags & 0x08 else ""
        defaults: dict[str, Any] = {}
        pos_defaults = fn.__defaults__ or ()
        for pname, value in zip(positional[n - len(pos_defaults):], pos_defaults, strict=True):
            defaults[pname] = value
        defaults.update(fn.__kwdefaults__ or {})
        posonly = code.co_posonlyargcount
        if bound:
            positional, posonly = positional[1:], max(posonly - 1, 0)
        return cls(name, tuple(positional), posonly, tuple(names[n:at]), varargs, varkw, defaults)

    def reader(self, name: str) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
        """The argument `name` of one call, from what the wrapper was passed."""
        default = self.defaults.get(name, _NOTHING)
        if name in self.positional:
            index = self.positional.index(name)
            by_keyword = index >= self.posonly

            def positional(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                if len(args) > index:
                    return args[index]
                value = kwargs.get(name, default) if by_keyword else default
                if value is _NOTHING:
                    raise _Fail
                return value

            return positional
        if name == self.varargs:
            count = len(self.positional)
            return lambda args, kwargs: args[count:]
        if name == self.varkw:
            known = frozenset(self.positional[self.posonly:]) | frozenset(self.keyword_only)
            return lambda args, kwargs: {k: v for k, v in kwargs.items() if k not in known}

        def keyword(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            value = kwargs.get(name, default)
            if value is _NOTHING:
                raise _Fail
            return value

        return keyword


class _Compiler:
    """Turns the tree into the source of one or two Python functions,
    compiled once: a call then runs straight-line code (a try per test,
    no call per node). Nothing of the condition's text reaches the source
    but operators from the parser's fixed set; names of the service's
    parameters appear only after the check that they are identifiers, and
    every constant, reader and class name is passed in by reference.

    Locals and globals of the generated code start with `_coral_`; a
    function with a parameter of such a name is bound by the generic path
    (`*args, **kwargs`) instead."""

    def __init__(self, text: str, sig: Signature, is_secret: Callable[[str], bool]) -> None:
        self.text = text
        self.sig = sig
        self.is_secret = is_secret
        self.namespace: dict[str, Any] = {
            "_coral_Fail": _Fail, "_coral_unread": _UNREAD, "_coral_number": _number, "_coral_text": _text,
            "_coral_truthy": _truthy, "_coral_compare": _compare_values, "_coral_raised_as": _raised_as,
            "_coral_nums": _NUMBERS, "_coral_attribute_of": _probe.attribute_of,
            "_coral_unreadable_attribute": _probe.UNREADABLE,
            # builtins by names no parameter can take: a parameter called `type` must not be what is called
            "_coral_type": type, "_coral_str": str, "_coral_Exception": Exception,
        }
        self.entry_values: dict[str, int] = {}  # str(path) -> index of its snapshot local, _coral_e{i}
        self.entry_code: list[str] = []  # reads each entry value into _coral_e{i} (the unread marker on failure)
        self.at_return = False
        self.temps = 0
        self.mirror = all(n.isidentifier() and not keyword.iskeyword(n) and not n.startswith("_coral_")
                          for n in sig.names)

    def refuse(self, message: str, column: int) -> InvalidArgument:
        return InvalidArgument("--where " + expr.described(self.text, expr.ExprError(message, column, self.text)))

    def constant(self, value: Any) -> str:
        name = f"_coral_k{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def temp(self, kind: str) -> str:
        self.temps += 1
        return f"_coral_{kind}{self.temps}"

    # -- values: a list of statements that leave the value in a local, raising _coral_Fail

    def value(self, path: expr.Path, into: str) -> list[str]:
        root = path.root
        for name in path.names:
            if self.is_secret(name):
                raise self.refuse(f"{name!r} is redacted; a condition on it would reveal it", path.column)
        if root == "err":
            raise self.refuse("err is a Go function's error result; for Python write raised or raised(ValueError)",
                              path.column)
        # each attribute by _probe.attribute_of (C: class dicts and the instance dict, no getattr)
        steps = [self.constant(sys.intern(name)) for name in path.names[1:]]
        if root == "duration":
            self.at_return = True
            return [f"{into} = _coral_dur"]
        if root == "ret":
            self.at_return = True
            code = ["if _coral_exc is not None: raise _coral_Fail  # a call that raised has no return value",
                    f"{into} = _coral_ret"]
            return code + [line for step in steps for line in self.step(into, step)]
        if root not in self.sig.names:
            raise self.refuse(f"{self.sig.function} has no parameter {root!r}; its parameters are: "
                              f"{', '.join(self.sig.names) or 'none'}", path.column)
        key = str(path)
        index = self.entry_values.get(key)
        if index is None:
            index = self.entry_values[key] = len(self.entry_values)
            source = root if self.mirror else f"{self.constant(self.sig.reader(root))}(_coral_args, _coral_kwargs)"
            self.entry_code += ["try:", f"    _coral_e{index} = {source}"]
            self.entry_code += ["    " + line for step in steps for line in self.step(f"_coral_e{index}", step)]
            self.entry_code += ["except _coral_Exception:", f"    _coral_e{index} = _coral_unread"]
        return [f"{into} = _coral_e{index}", f"if {into} is _coral_unread: raise _coral_Fail"]

    @staticmethod
    def step(local: str, name: str) -> list[str]:
        return [f"{local} = _coral_attribute_of({local}, {name})",
                f"if {local} is _coral_unreadable_attribute: raise _coral_Fail"]

    # -- tests: statements that leave True, False or None (unknown) in a local

    def node(self, node: expr.Node, into: str) -> list[str]:
        if isinstance(node, (expr.And, expr.Or)):
            # Kleene's logic: an operand that cannot be evaluated is unknown
            # and the others may still decide (`raised || req.amount > 5`
            # holds for a call that raised, whatever req is).
            decisive = isinstance(node, expr.Or)
            code = ["while True:", f"    {into} = {not decisive}"]
            for operand in node.operands:
                part = self.temp("t")
                code += ["    " + line for line in self.node(operand, part)]
                code += [f"    if {part} is {decisive}:", f"        {into} = {decisive}", "        break",
                         f"    if {part} is None:", f"        {into} = None"]
            return [*code, "    break"]
        if isinstance(node, expr.Not):
            inner = self.temp("t")
            return [*self.node(node.operand, inner), f"{into} = None if {inner} is None else not {inner}"]
        if isinstance(node, expr.Raised):
            self.at_return = True
            if node.exception is None:
                return [f"{into} = _coral_exc is not None"]
            wanted = self.constant(node.exception)
            return [f"{into} = _coral_exc is not None and _coral_raised_as(_coral_type(_coral_exc), {wanted})"]
        v = self.temp("v")
        if isinstance(node, expr.Truthy):
            body = [*self.value(node.path, v), f"{into} = _coral_truthy({v})"]
        elif isinstance(node, expr.StartsWith):
            text, raw = self.constant(node.prefix), self.constant(node.prefix.encode())
            body = [*self.value(node.path, v), f"{v} = _coral_text({v})",
                    f"{into} = {v}.startswith({text} if _coral_type({v}) is _coral_str else {raw})"]
        else:
            body = self.compare(node, v, into)
        return ["try:", *("    " + line for line in body), "except _coral_Exception:", f"    {into} = None"]

    def compare(self, node: expr.Compare, v: str, into: str) -> list[str]:
        left, right, op = node.left, node.right, node.op
        if isinstance(left, expr.Literal):  # `1000 < amount` is `amount > 1000`
            left, right, op = right, left, _FLIPPED.get(op, op)
        if not isinstance(left, expr.Path):  # the parser refuses two constants; kept out all the same
            raise self.refuse("compares two constants; one side must be a name", 1)
        code = self.value(left, v)
        if isinstance(right, expr.Path):
            w = self.temp("v")
            return code + self.value(right, w) + [f"{into} = _coral_compare({v}, {w}, {self.constant(op)})"]
        if right.kind == "nil":
            return [*code, f"{into} = {v} is {'' if op == '==' else 'not '}None"]
        if right.kind == "string":
            text, raw = self.constant(right.value), self.constant(str(right.value).encode())
            return [*code, f"if _coral_type({v}) is not _coral_str: {v} = _coral_text({v})",
                    f"{into} = {v} {op} ({text} if _coral_type({v}) is _coral_str else {raw})"]
        want = self.constant(right.value)
        return [*code, f"if _coral_type({v}) not in _coral_nums: {v} = _coral_number({v})", f"{into} = {v} {op} {want}"]

    # -- the functions

    def parameters(self) -> str:
        """The function's own parameter list, defaults by reference, so that
        Python binds a call's arguments exactly as for the function."""
        if not self.mirror:
            return "*_coral_args, **_coral_kwargs"
        sig, parts = self.sig, []
        for i, name in enumerate(sig.positional):
            parts.append(f"{name}={self.constant(sig.defaults[name])}" if name in sig.defaults else name)
            if i + 1 == sig.posonly:
                parts.append("/")
        if sig.varargs:
            parts.append("*" + sig.varargs)
        elif sig.keyword_only:
            parts.append("*")
        for name in sig.keyword_only:
            parts.append(f"{name}={self.constant(sig.defaults[name])}" if name in sig.defaults else name)
        if sig.varkw:
            parts.append("**" + sig.varkw)
        return ", ".join(parts)


def _indent(lines: list[str], by: int) -> str:
    return "\n".join(" " * by + line for line in lines)


def _raised_as(tp: type, wanted: str) -> bool:
    """`wanted` names tp or one of its bases: `ValueError`, or with its
    module, `payments.errors.Declined`."""
    dotted = "." in wanted
    for klass in _mro(tp):
        if dotted:
            module = _TYPE_MODULE.__get__(klass, type)  # "builtins" for KeyError; a class's own for the others
            name = _TYPE_QUALNAME.__get__(klass, type)
            if isinstance(module, str) and f"{module}.{name}" == wanted:
                return True
        elif _TYPE_NAME.__get__(klass, type) == wanted:
            return True
    return False


def compile_condition(text: str, function: str, func: Callable[..., Any],
                      is_secret: Callable[[str], bool]) -> Condition:
    """Parse `text`, check it against `func`'s parameters (InvalidArgument,
    one line with the column, for a mistake, an unknown or a redacted
    name), and compile it."""
    try:
        tree = expr.parse_condition(text)
    except expr.ExprError as exc:
        raise InvalidArgument("--where " + expr.described(text, exc)) from None
    compiler = _Compiler(text, Signature.of(function, func), is_secret)
    test = compiler.node(tree, "_coral_result")
    verdict = (f"return 0 if _coral_result is True else {FILTERED} if _coral_result is False else {WHERE_ERROR}")
    snapshot = [f"_coral_e{i}" for i in range(len(compiler.entry_values))]
    if not compiler.at_return:
        source = (f"def _coral_entry({compiler.parameters()}):\n"
                  f"    _coral_exc = _coral_ret = None\n    _coral_dur = 0\n"
                  f"{_indent(compiler.entry_code, 4)}\n{_indent(test, 4)}\n    {verdict}\n")
    else:
        snapshot_tuple = f"({', '.join(snapshot)},)" if snapshot else "()"
        unpack = f"{snapshot_tuple} = _coral_snap" if snapshot else "pass"
        source = (f"def _coral_entry({compiler.parameters()}):\n"
                  f"{_indent(compiler.entry_code, 4)}\n    return {snapshot_tuple}\n\n"
                  f"def _coral_return(_coral_snap, _coral_ret, _coral_exc, _coral_dur):\n"
                  f"    try:\n        {unpack}\n    except _coral_Exception:\n        return {WHERE_ERROR}\n"
                  f"{_indent(test, 4)}\n    {verdict}\n")
    namespace = compiler.namespace
    exec(compile(source, f"<--where {text!r}>", "exec"), namespace)
    at_entry = namespace["_coral_entry"] if (snapshot or not compiler.at_return) else None
    return Condition(text, at_entry, namespace.get("_coral_return"), source)
