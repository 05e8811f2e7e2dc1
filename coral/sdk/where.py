"""`--where` for a Python function: the condition, compiled once at arm
time into closures the probe wrapper calls for each traced call.

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
``__dict__`` or from a slot's member descriptor, found by walking class
``__dict__``s (no ``getattr``, so no property, ``__getattr__`` or
``__getattribute__`` override runs); values are compared only as exact
builtin ``int``/``float``/``str``/``bytes``/``bool``/``None`` (a subclass
of one is converted by the builtin type's own C method first); exception
classes are matched by name along their MRO. Nothing raises out of the
closures: any failure is the CALL_WHERE_ERROR verdict.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coral import expr
from coral.daemon.errors import InvalidArgument
from coral.sdk import _probe, targets

FILTERED: int = _probe.CALL_FILTERED
WHERE_ERROR: int = _probe.CALL_WHERE_ERROR
_PLANS_MAX = 64  # types remembered per attribute step; cleared when full


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


# --- reading without running user code ------------------------------------

_OBJECT_GETATTRIBUTE = object.__dict__["__getattribute__"]
_MRO = type.__dict__["__mro__"]
_TYPE_NAME = type.__dict__["__name__"]
_TYPE_QUALNAME = type.__dict__["__qualname__"]
_TYPE_MODULE = type.__dict__["__module__"]


def _mro(tp: type) -> tuple[type, ...]:
    mro = _MRO.__get__(tp, type)  # type's own descriptor: a metaclass cannot answer for it
    return mro if type(mro) is tuple else ()


def _in_type(tp: type, name: str) -> Any:
    for klass in _mro(tp):
        d = targets.class_dict(klass)
        if name in d:
            return d[name]
    return _NOTHING


@dataclass(frozen=True)
class _Plan:
    """How one type's instances give one attribute: a slot's member
    descriptor, or the instance dict (through the type's C `__dict__`
    getter) with maybe a plain class attribute behind it."""

    slot: Any  # member descriptor, or None
    dict_getter: Any  # the getset descriptor of __dict__, or None
    holder: type | None  # where a plain class attribute lives (looked up again each time)


def _plan(tp: type, name: str) -> _Plan | None:
    if _in_type(tp, "__getattribute__") is not _OBJECT_GETATTRIBUTE:
        return None  # its own attribute lookup decides what obj.name is: not ours to imitate or run
    dict_getter = _in_type(tp, "__dict__")
    if type(dict_getter) is not types.GetSetDescriptorType:
        dict_getter = None  # no instance dict, or a `__dict__` the class computes
    for klass in _mro(tp):
        d = targets.class_dict(klass)
        if name not in d:
            continue
        found = d[name]
        if type(found) is types.MemberDescriptorType:
            return _Plan(found, None, None)
        kind = type(found)
        if _in_type(kind, "__set__") is not _NOTHING or _in_type(kind, "__delete__") is not _NOTHING:
            return None  # a property or another data descriptor: its code would run
        if _in_type(kind, "__get__") is not _NOTHING:
            return _Plan(None, dict_getter, None)  # a method: only an instance value can shadow it
        return _Plan(None, dict_getter, klass)
    return _Plan(None, dict_getter, None)


def _attribute(name: str) -> Callable[[Any], Any]:
    plans: dict[type, _Plan | None] = {}

    def read(obj: Any) -> Any:
        tp = type(obj)
        if tp is types.ModuleType:
            value = targets.module_dict(obj).get(name, _NOTHING)
            if value is _NOTHING:
                raise _Fail
            return value
        plan = plans.get(tp, _NOTHING)
        if plan is _NOTHING:
            if len(plans) >= _PLANS_MAX:
                plans.clear()
            plan = plans[tp] = _plan(tp, name)
        if plan is None:
            raise _Fail
        if plan.slot is not None:
            try:
                return plan.slot.__get__(obj, tp)
            except AttributeError:  # an empty slot
                raise _Fail from None
        if plan.dict_getter is not None:
            d = plan.dict_getter.__get__(obj, tp)
            if type(d) is dict:
                value = dict.get(d, name, _NOTHING)
                if value is not _NOTHING:
                    return value
        if plan.holder is not None:
            value = targets.class_dict(plan.holder).get(name, _NOTHING)
            if value is not _NOTHING and _in_type(type(value), "__get__") is _NOTHING:
                return value
        raise _Fail

    return read


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


_NUMBERS = (int, float, bool)
_SIZED = (list, tuple, dict, set, frozenset)


def _category(value: Any) -> type:
    tp = type(value)
    return int if tp in _NUMBERS else tp


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


# --- compiling ------------------------------------------------------------

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: bool(a == b), "!=": lambda a, b: bool(a != b),
    "<": lambda a, b: bool(a < b), "<=": lambda a, b: bool(a <= b),
    ">": lambda a, b: bool(a > b), ">=": lambda a, b: bool(a >= b),
}


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
    def __init__(self, text: str, sig: Signature, is_secret: Callable[[str], bool]) -> None:
        self.text = text
        self.sig = sig
        self.is_secret = is_secret
        self.entry: list[Callable[[tuple[Any, ...], dict[str, Any]], Any]] = []  # readers, by snapshot index
        self.entry_index: dict[str, int] = {}
        self.at_return = False  # reads ret, raised or duration

    def refuse(self, message: str, column: int) -> InvalidArgument:
        return InvalidArgument("--where " + expr.described(self.text, expr.ExprError(message, column, self.text)))

    def path(self, path: expr.Path) -> Getter:
        root = path.root
        for name in path.names:
            if self.is_secret(name):
                raise self.refuse(f"{name!r} is redacted; a condition on it would reveal it", path.column)
        if root == "err":
            raise self.refuse("err is a Go function's error result; for Python write raised or raised(ValueError)",
                              path.column)
        steps = [_attribute(name) for name in path.names[1:]]
        if root == "duration":
            self.at_return = True
            return lambda env: env[3]
        if root == "ret":
            self.at_return = True

            def result(env: Env) -> Any:
                if env[2] is not None:
                    raise _Fail  # the call raised: it has no return value
                value = env[1]
                for step in steps:
                    value = step(value)
                return value

            return result
        if root not in self.sig.names:
            raise self.refuse(f"{self.sig.function} has no parameter {root!r}; its parameters are: "
                              f"{', '.join(self.sig.names) or 'none'}", path.column)
        key = str(path)
        index = self.entry_index.get(key)
        if index is None:
            arg = self.sig.reader(root)

            def at_entry(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                value = arg(args, kwargs)
                for step in steps:
                    value = step(value)
                return value

            index = self.entry_index[key] = len(self.entry)
            self.entry.append(at_entry)

        def snapshot(env: Env) -> Any:
            value = env[0][index]
            if value is _UNREAD:
                raise _Fail
            return value

        return snapshot

    def value(self, v: expr.Value) -> tuple[Getter | None, Any]:
        """A getter for a path, or the constant itself."""
        if isinstance(v, expr.Path):
            return self.path(v), None
        return None, v

    def node(self, node: expr.Node) -> Test:
        # An operand that cannot be evaluated is unknown, and the rest may
        # still decide: `raised || req.amount > 5` holds for a call that
        # raised, whatever req is; `false && unknown` is false.
        if isinstance(node, expr.And):
            return _kleene(tuple(self.node(o) for o in node.operands), decisive=False)
        if isinstance(node, expr.Or):
            return _kleene(tuple(self.node(o) for o in node.operands), decisive=True)
        if isinstance(node, expr.Not):
            inner = self.node(node.operand)
            return lambda env: not inner(env)
        if isinstance(node, expr.Raised):
            self.at_return = True
            if node.exception is None:
                return lambda env: env[2] is not None
            wanted = node.exception
            return lambda env: env[2] is not None and _raised_as(type(env[2]), wanted)
        if isinstance(node, expr.Truthy):
            get = self.path(node.path)
            return lambda env: _truthy(get(env))
        if isinstance(node, expr.StartsWith):
            get = self.path(node.path)
            prefix, raw = node.prefix, node.prefix.encode()

            def startswith(env: Env) -> bool:
                value = _scalar(get(env))
                if type(value) is str:
                    return value.startswith(prefix)
                if type(value) is bytes:
                    return value.startswith(raw)
                raise _Fail

            return startswith
        return self.compare(node)

    def compare(self, node: expr.Compare) -> Test:
        left, lconst = self.value(node.left)
        right, rconst = self.value(node.right)
        op = node.op
        if left is None:  # constant on the left: flip it, `1000 < amount` is `amount > 1000`
            left, rconst, right = right, lconst, None
            op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
        if left is None:  # the parser refuses two constants; kept out all the same
            raise self.refuse("compares two constants; one side must be a name", 1)
        test = _OPS[op]
        if right is not None:
            both = right

            def paths(env: Env) -> bool:
                a, b = _scalar(left(env)), _scalar(both(env))
                if a is None or b is None:
                    if op not in ("==", "!="):
                        raise _Fail
                    return test(a is None and b is None, True)
                if _category(a) is not _category(b):
                    raise _Fail
                return test(a, b)

            return paths
        const: expr.Literal = rconst
        if const.kind == "nil":
            same = op == "=="
            return lambda env: (left(env) is None) is same
        want: Any = const.value
        if const.kind == "string":
            text, raw = str(want), str(want).encode()

            def string(env: Env) -> bool:
                value = _scalar(left(env))
                if type(value) is str:
                    return test(value, text)
                if type(value) is bytes:
                    return test(value, raw)
                raise _Fail

            return string

        def number(env: Env) -> bool:
            value = _scalar(left(env))
            if type(value) not in _NUMBERS:
                raise _Fail
            return test(value, want)

        return number


def _kleene(parts: tuple[Test, ...], decisive: bool) -> Test:
    """`&&` (decisive False) or `||` (decisive True) over operands some of
    which may fail: the first operand equal to `decisive` decides; else a
    failure makes the whole unknown."""

    def test(env: Env) -> bool:
        unknown = False
        for part in parts:
            try:
                if part(env) is decisive:
                    return decisive
            except Exception:  # unknown; a later operand may decide
                unknown = True
        if unknown:
            raise _Fail
        return not decisive

    return test


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
    """Parse `text` and check it against `func`'s parameters: InvalidArgument
    (one line, with the column) for a mistake, an unknown or redacted name."""
    try:
        tree = expr.parse_condition(text)
    except expr.ExprError as exc:
        raise InvalidArgument("--where " + expr.described(text, exc)) from None
    compiler = _Compiler(text, Signature.of(function, func), is_secret)
    test = compiler.node(tree)
    readers = tuple(compiler.entry)

    def decide(env: Env) -> int:
        try:
            return 0 if test(env) else FILTERED
        except Exception:
            return WHERE_ERROR

    def snapshot(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        values = []
        for read in readers:
            try:
                values.append(read(args, kwargs))
            except Exception:
                values.append(_UNREAD)
        return tuple(values)

    if not compiler.at_return:
        def entry_verdict(*args: Any, **kwargs: Any) -> int:
            return decide((snapshot(*args, **kwargs), None, None, 0))

        return Condition(text, entry_verdict, None)

    def return_verdict(snap: Any, result: Any, exc: Any, duration_ns: int) -> int:
        return decide((snap if type(snap) is tuple else (), result, exc, duration_ns))

    return Condition(text, snapshot if readers else None, return_verdict)
