"""Python functions by qualified name: what a name such as
``payments.validate_card`` or ``payments.Gateway.charge`` refers to in this
process, and what can be listed and armed.

Lookups read module and class ``__dict__``s directly, never ``getattr``: a
module ``__getattr__``, a lazy module or a metaclass must not run code (or
import anything) on the SDK's thread because an operator listed functions.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, TypeVar

from coral.daemon.errors import InvalidArgument, NotFound

T = TypeVar("T")
Kind = Literal["function", "method", "staticmethod", "classmethod", "bound method"]

# Py_TPFLAGS_IMMUTABLETYPE: builtin and C-extension types refuse setattr.
_IMMUTABLE_TYPE = 1 << 8
_MAX_CLASS_DEPTH = 3  # nested classes listed: Outer.Inner.method
# Dunder methods worth probing; the others (__eq__, __repr__, ...) would
# mostly be noise in a listing. They can still be armed by name.
_LISTED_DUNDERS = frozenset({"__init__", "__call__", "__enter__", "__exit__", "__aenter__", "__aexit__"})


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Target:
    """A resolved name.

    ``holder`` is where the name is looked up (a module's dict or a class),
    ``entry`` what is stored there under ``attr`` (a function, staticmethod,
    classmethod, bound method, or an armed wrapper; MISSING when a class
    inherits it), ``function`` the Python function whose calls are timed.
    """

    name: str
    holder: dict[str, Any] | type
    attr: str
    entry: Any
    function: Callable[..., Any]
    kind: Kind


def is_coral_module(name: str) -> bool:
    return name == "coral" or name.startswith("coral.")


def module_dict(module: types.ModuleType) -> dict[str, Any]:
    # object.__getattribute__: a lazy module's own __getattribute__ would load it
    d = object.__getattribute__(module, "__dict__")
    return d if isinstance(d, dict) else {}


def class_dict(cls: type) -> Mapping[str, Any]:
    # type's own descriptor: a metaclass __getattribute__ is not consulted
    d = type.__dict__["__dict__"].__get__(cls, type)
    return d if isinstance(d, Mapping) else {}


def loaded_modules() -> list[tuple[str, types.ModuleType]]:
    """Modules under their own name (not aliases such as os.path), coral's excluded."""
    out = []
    for name, module in list(sys.modules.items()):
        if not is_a(module, types.ModuleType) or is_coral_module(name):
            continue
        if module_dict(module).get("__name__") != name:
            continue
        out.append((name, module))
    return out


def underlying(entry: Any) -> Any:
    """The function behind a staticmethod/classmethod entry."""
    if issubclass(type(entry), (staticmethod, classmethod)):
        return entry.__func__
    return entry


def is_a(obj: object, cls: type[T]) -> TypeGuard[T]:
    """isinstance by the real type only: isinstance() also asks the
    object's ``__class__``, which a proxy (e.g. a framework's context-local
    ``request``) computes, and may raise from, in user code."""
    return issubclass(type(obj), cls)


def is_python_function(obj: Any) -> bool:
    return is_a(obj, types.FunctionType)


def _qualname(cls: type) -> str:
    name = type.__dict__["__qualname__"].__get__(cls, type)
    return name if isinstance(name, str) else ""


def _defined_in(fn: Callable[..., Any], module_name: str) -> bool:
    return getattr(fn, "__module__", None) == module_name


def _listable(entry: Any, module_name: str, is_armed: Callable[[Any], bool]) -> bool:
    inner = underlying(entry)
    if is_armed(inner):
        return True
    if is_a(inner, types.MethodType):
        return is_python_function(inner.__func__) and _defined_in(inner.__func__, module_name)
    return is_python_function(inner) and not inspect.isasyncgenfunction(inner) and _defined_in(inner, module_name)


def _class_members(cls: type, prefix: str, module_name: str, is_armed: Callable[[Any], bool], depth: int) -> Iterator[str]:
    for attr, value in list(class_dict(cls).items()):
        if attr.startswith("__") and attr.endswith("__") and attr not in _LISTED_DUNDERS:
            continue
        if is_a(value, type):
            if depth < _MAX_CLASS_DEPTH and class_dict(value).get("__module__") == module_name:
                yield from _class_members(value, f"{prefix}.{attr}", module_name, is_armed, depth + 1)
        elif _listable(value, module_name, is_armed):
            yield f"{prefix}.{attr}"


def iter_function_names(is_armed: Callable[[Any], bool], only_module: str | None = None) -> Iterator[str]:
    """Every function defined in a loaded module (not imported into it):
    module functions, methods, static and class methods, coroutines."""
    for module_name, module in loaded_modules():
        if only_module is not None and module_name != only_module:
            continue
        for attr, value in list(module_dict(module).items()):
            if is_a(value, type):
                if class_dict(value).get("__module__") == module_name and _qualname(value) == attr:
                    yield from _class_members(value, f"{module_name}.{attr}", module_name, is_armed, 1)
            elif _listable(value, module_name, is_armed):
                yield f"{module_name}.{attr}"


def matches(pattern: str, name: str) -> bool:
    """A glob on the full name, or on any dotted tail of it, so
    ``validate_*`` finds ``payments.validate_card``."""
    if not pattern:
        return True
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[i:]), pattern) for i in range(len(parts)))


def closest(name: str, is_armed: Callable[[Any], bool], module_name: str | None = None, n: int = 5) -> list[str]:
    """Suggestions for a name not found: functions of its module when the
    module is loaded, else loaded module names (a bounded comparison: the
    whole process's function list can be tens of thousands of names)."""
    if module_name is None:
        candidates = [m for m, _ in loaded_modules()]
        head = name.rsplit(".", 1)[0]
        return difflib.get_close_matches(head, candidates, n=n, cutoff=0.6)
    prefix = module_name + "."
    tails = {full[len(prefix) :]: full for full in iter_function_names(is_armed, module_name)}
    # compare what follows the module name: the shared prefix would make everything look close
    return [tails[t] for t in difflib.get_close_matches(name[len(prefix) :], list(tails), n=n, cutoff=0.6)]


def _refusal(name: str, obj: Any) -> str:
    """Why ``obj`` cannot be armed, in a sentence an operator can act on."""
    kind = type(obj).__name__
    if any(is_a(obj, t) for t in (types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType)):
        return (
            f"{name} is implemented in C ({kind}); the Python probe can only arm functions written in Python "
            "(attach to the native symbol in its shared library instead)"
        )
    if is_a(obj, type):
        return f"{name} is a class; arm one of its methods instead, e.g. {name}.__init__"
    if is_a(obj, types.ModuleType):
        return f"{name} is a module; name a function in it"
    if is_a(obj, property):
        return f"{name} is a property; arming property getters is not supported"
    if is_a(obj, functools.partial):
        return f"{name} is a functools.partial; arm the function it wraps by its own name"
    if inspect.isasyncgenfunction(obj):
        return f"{name} is an async generator function; its run is not one call and cannot be timed as one"
    if callable(obj) and hasattr(obj, "__wrapped__"):
        return (
            f"{name} is a {kind} object wrapping a function (a C-level decorator such as functools.lru_cache); "
            "it cannot be replaced without bypassing that wrapper"
        )
    if callable(obj):
        return f"{name} is a {kind} object, not a Python function; arm {kind}.__call__ instead"
    return f"{name} is not a function (it is a {kind})"


def resolve(name: str, armed_entry: Callable[[Any], bool]) -> Target:
    """Find ``name`` over sys.modules: the longest loaded module prefix,
    then attributes of modules and classes. ``armed_entry`` says whether an
    object is one of this process's armed wrappers (accepted as is)."""
    parts = name.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise InvalidArgument(f"{name!r} is not a qualified function name like 'package.module.function'")
    module_name = ""
    module: types.ModuleType | None = None
    for i in range(len(parts) - 1, 0, -1):
        candidate = sys.modules.get(".".join(parts[:i]))
        if is_a(candidate, types.ModuleType):
            module_name, module, rest = ".".join(parts[:i]), candidate, parts[i:]
            break
    if module is None:
        raise NotFound(f"no loaded module in {name!r}", closest(name, armed_entry))  # module names
    if is_coral_module(module_name):
        raise InvalidArgument(f"{name} is part of Coral itself, which does not probe its own code")
    holder: dict[str, Any] | type = module_dict(module)
    for depth, attr in enumerate(rest):
        last = depth == len(rest) - 1
        entry = _lookup(holder, attr)
        if entry is MISSING:
            raise NotFound(f"no function {name!r} in this process", closest(name, armed_entry, module_name))
        if last:
            return _classify(name, holder, attr, entry, armed_entry)
        if is_a(entry, type):
            holder = entry
        elif is_a(entry, types.ModuleType):
            holder = module_dict(entry)
        else:
            raise NotFound(f"{'.'.join(parts[: len(parts) - len(rest) + depth + 1])} is not a class or module", [])
    raise NotFound(f"no function {name!r} in this process", [])  # unreachable: rest is never empty


def _lookup(holder: dict[str, Any] | type, attr: str) -> Any:
    if isinstance(holder, dict):
        return holder.get(attr, MISSING)
    for klass in holder.__mro__:
        d = class_dict(klass)
        if attr in d:
            return d[attr]
    return MISSING


def _classify(name: str, holder: dict[str, Any] | type, attr: str, entry: Any, armed_entry: Callable[[Any], bool]) -> Target:
    in_class = isinstance(holder, type)
    if isinstance(holder, type):
        if holder.__flags__ & _IMMUTABLE_TYPE:
            raise InvalidArgument(f"{name} belongs to {holder.__qualname__}, an immutable (C-defined) type; it cannot be armed")
        # inherited: arming shadows it on this class only, disarming deletes it again
        entry_here = entry if attr in class_dict(holder) else MISSING
    else:
        entry_here = entry
    inner = underlying(entry)
    kind: Kind
    if is_a(entry, staticmethod):
        kind = "staticmethod"
    elif is_a(entry, classmethod):
        kind = "classmethod"
    elif is_a(entry, types.MethodType) and not in_class:
        kind = "bound method"
    else:
        kind = "method" if in_class else "function"
    if armed_entry(inner):
        return Target(name, holder, attr, entry_here, inner, kind)
    if kind == "bound method":
        if not is_python_function(entry.__func__):
            raise InvalidArgument(_refusal(name, entry.__func__))
    elif not is_python_function(inner) or inspect.isasyncgenfunction(inner):
        raise InvalidArgument(_refusal(name, inner))
    return Target(name, holder, attr, entry_here, inner, kind)


def parameter_names(func: Callable[..., Any]) -> tuple[tuple[str, ...], str]:
    """Positional parameter names and the name of ``*args`` ("" if none),
    from the code object (no user code runs). A bound method's first
    parameter is its ``self``: dropped, the caller does not pass it."""
    bound = is_a(func, types.MethodType)
    fn = func.__func__ if isinstance(func, types.MethodType) else func
    code = fn.__code__
    names = code.co_varnames[: code.co_argcount]
    varargs = ""
    if code.co_flags & inspect.CO_VARARGS:
        varargs = code.co_varnames[code.co_argcount + code.co_kwonlyargcount]
    return (names[1:] if bound else names), varargs


def defining_function(func: Callable[..., Any]) -> types.FunctionType | None:
    """The function whose source is the definition: through bound methods
    and functools.wraps chains (bounded)."""
    obj: Any = func.__func__ if isinstance(func, types.MethodType) else func
    for _ in range(16):
        wrapped = obj.__dict__.get("__wrapped__") if isinstance(getattr(obj, "__dict__", None), dict) else None
        if wrapped is None:
            break
        obj = wrapped
    return obj if isinstance(obj, types.FunctionType) else None
