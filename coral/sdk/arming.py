"""Arming: make every call of one named Python function pass through the
probe site (coral/sdk/_probe.c), and undo it exactly.

Arming replaces the object where the name is looked up (the module
attribute, or the class attribute, keeping staticmethod/classmethod), and
the other modules' globals that hold the same function (``from x import
f``). Disarming puts the very objects it found back wherever the
replacement is still in place. Functions never armed are never touched.

Synchronous functions are replaced by a C ``ProbeWrapper``. Coroutine and
generator functions get a Python wrapper that times the whole awaited (or
iterated) run, not the creation of the coroutine object, and hands the
record to the same C code.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import time
import types
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from coral.daemon.errors import InvalidArgument
from coral.sdk import _probe, countby, targets, where
from coral.sdk.settings import SdkSettings
from coral.sdk.targets import MISSING, Kind, Target

log = logging.getLogger(__name__)


MAX_STACK_DEPTH = 127  # UprobeConfig.stack_depth at most (docs/protocol.md)


@dataclass
class Site:
    """One place a replacement was installed, and what was there before
    (MISSING: a class inherited the attribute; disarming deletes it)."""

    holder: dict[str, Any] | type
    attr: str
    original: Any
    replacement: Any


@dataclass
class Arm:
    fn_id: int
    name: str
    kind: Kind
    function: Callable[..., Any]  # the original function (or bound method)
    probe: _probe.ProbeWrapper
    installed: Callable[..., Any]  # what callers reach now: the probe, or a coroutine/generator wrapper
    sites: list[Site] = field(default_factory=list)
    condition: str = ""  # the --where text the probe evaluates ("" for none)
    tally: countby.Tally | None = None  # --count-by: the calls counted by key, none reported


def _entry_verdict(probe: _probe.ProbeWrapper, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, int]:
    """The --where condition's entry half, as the C wrapper runs it: (the
    snapshot for the return half, or None; the verdict so far)."""
    entry, at_return = probe.where_entry, probe.where_return
    if entry is None:
        return None, 0
    try:
        got = entry(*args, **kwargs)
    except Exception:
        return None, where.WHERE_ERROR
    return (got, 0) if at_return is not None else (None, got)


def _verdict(probe: _probe.ProbeWrapper, snapshot: Any, verdict: int, result: Any, exc: BaseException | None,
             duration_ns: int) -> int:
    at_return = probe.where_return
    if verdict or at_return is None:
        return verdict
    try:
        return int(at_return(snapshot, result, exc, duration_ns))
    except Exception:
        return where.WHERE_ERROR


def _coroutine_wrapper(fn: Callable[..., Any], probe: _probe.ProbeWrapper) -> Callable[..., Any]:
    async def armed(*args: Any, **kwargs: Any) -> Any:
        if not _probe.tracing():
            return await fn(*args, **kwargs)
        snapshot, verdict = _entry_verdict(probe, args, kwargs)
        start = time.monotonic_ns()  # CLOCK_MONOTONIC, like the C side and bpf_ktime_get_ns
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            end = time.monotonic_ns()
            probe.emit(args, kwargs, start, end, None, exc, _verdict(probe, snapshot, verdict, None, exc, end - start))
            raise
        end = time.monotonic_ns()
        probe.emit(args, kwargs, start, end, result, None, _verdict(probe, snapshot, verdict, result, None, end - start))
        return result

    return functools.update_wrapper(armed, fn)


def _generator_wrapper(fn: Callable[..., Any], probe: _probe.ProbeWrapper) -> Callable[..., Any]:
    def armed(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        if not _probe.tracing():
            return (yield from fn(*args, **kwargs))
        snapshot, verdict = _entry_verdict(probe, args, kwargs)
        start = time.monotonic_ns()
        try:
            result = yield from fn(*args, **kwargs)
        except BaseException as exc:  # GeneratorExit included: the consumer stopped early
            end = time.monotonic_ns()
            probe.emit(args, kwargs, start, end, None, exc, _verdict(probe, snapshot, verdict, None, exc, end - start))
            raise
        end = time.monotonic_ns()
        probe.emit(args, kwargs, start, end, result, None, _verdict(probe, snapshot, verdict, result, None, end - start))
        return result

    return functools.update_wrapper(armed, fn)


def _code_of(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn.__func__ if isinstance(fn, types.MethodType) else fn


def safe_repr_types() -> tuple[type, ...]:
    """Types besides builtin scalars whose repr is C code of bounded cost
    (datetime, Decimal), if their modules are loaded: never imported here."""
    found: list[type] = []
    for module_name, names in (("datetime", ("datetime", "date", "time", "timedelta", "timezone")), ("decimal", ("Decimal",))):
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for name in names:
            cls = targets.module_dict(module).get(name)
            if isinstance(cls, type) and type(targets.class_dict(cls).get("__repr__")) is types.WrapperDescriptorType:
                found.append(cls)
    return tuple(found)


def _get_own(holder: dict[str, Any] | type, attr: str) -> Any:
    if isinstance(holder, dict):
        return holder.get(attr, MISSING)
    return targets.class_dict(holder).get(attr, MISSING)


def _put(holder: dict[str, Any] | type, attr: str, value: Any) -> None:
    if isinstance(holder, dict):
        if value is MISSING:
            holder.pop(attr, None)
        else:
            holder[attr] = value
    elif value is MISSING:
        type.__delattr__(holder, attr)
    else:
        type.__setattr__(holder, attr, value)  # a metaclass __setattr__ is not ours to run


class ArmRegistry:
    """The armed functions of this process, by fn_id. One per process
    (``ARMS``): arming is process-wide state, whoever asks for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.settings = SdkSettings()
        self._by_id: dict[int, Arm] = {}
        self._by_installed: dict[int, Arm] = {}  # id(arm.installed) -> arm

    def configure(self, settings: SdkSettings) -> None:
        self.settings = settings
        _probe._set_redact_patterns(settings.rules.terms)

    def arm_of(self, obj: Any) -> Arm | None:
        arm = self._by_installed.get(id(obj))
        return arm if arm is not None and arm.installed is obj else None

    def is_armed(self, obj: Any) -> bool:
        return self.arm_of(obj) is not None

    def resolve(self, name: str) -> Target:
        return targets.resolve(name, self.is_armed)

    def arms(self) -> list[Arm]:
        return list(self._by_id.values())

    def get(self, fn_id: int) -> Arm | None:
        return self._by_id.get(fn_id)

    def arm(self, name: str, fn_id: int, *, capture_args: bool = True, capture_return: bool = True,
            condition: str = "", count_by: str = "", stack_depth: int = 0) -> Arm:
        """Arm ``name`` under ``fn_id``. Idempotent per fn_id; arming an
        armed function under another fn_id re-stamps it (last one wins).
        ``condition`` (--where) replaces the one it was armed with; a
        condition that does not fit the function is InvalidArgument, and
        nothing is armed. ``count_by`` (--count-by) counts each call by that
        key in a new table (arm.tally) and reports none. ``stack_depth``
        (--stack): each record carries that many Python frames at most, the
        function's own first; 0: none."""
        with self.lock:
            target = self.resolve(name)
            tally = countby.Tally() if count_by else None
            if tally is not None:
                compiled: where.Condition | None = countby.compile_counting(
                    count_by, condition, name, target.function, self.settings.is_sensitive, tally)
            else:
                compiled = (where.compile_condition(condition, name, target.function, self.settings.is_sensitive)
                            if condition else None)
            arm = self.arm_of(target.function)
            other = self._by_id.get(fn_id)
            if other is not None and other is not arm:
                raise InvalidArgument(f"fn_id {fn_id} already arms {other.name}; disarm it first or use another fn_id")
            if arm is None:
                arm = self._build(target, fn_id)
                for site in arm.sites:
                    _put(site.holder, site.attr, site.replacement)
                self._by_installed[id(arm.installed)] = arm
                log.info("armed %s (fn_id %d, %d places)", name, fn_id, len(arm.sites))
            elif arm.fn_id != fn_id:
                log.info("re-stamping %s: fn_id %d -> %d", arm.name, arm.fn_id, fn_id)
                del self._by_id[arm.fn_id]
            arm.fn_id = arm.probe.fn_id = fn_id
            arm.probe.capture_args = capture_args
            arm.probe.capture_return = capture_return
            arm.probe.stack_depth = max(0, min(stack_depth, MAX_STACK_DEPTH))
            arm.condition = condition
            arm.tally = tally
            # another thread's call between the two stores may see one half of each: at worst a where_error
            arm.probe.where_return = compiled.at_return if compiled else None
            arm.probe.where_entry = compiled.at_entry if compiled else None
            self._by_id[fn_id] = arm
            _probe._set_safe_repr_types(safe_repr_types())
            return arm

    def _build(self, target: Target, fn_id: int) -> Arm:
        fn = target.function
        names, varargs = targets.parameter_names(fn)
        probe = _probe.ProbeWrapper(
            fn,
            fn_id,
            names,
            self.settings.redact_flags(names),
            varargs,
            bool(varargs) and self.settings.is_sensitive(varargs),
        )
        functools.update_wrapper(probe, fn)
        code = _code_of(fn)
        installed: Callable[..., Any] = probe
        if inspect.iscoroutinefunction(code):
            installed = _coroutine_wrapper(fn, probe)
        elif inspect.isgeneratorfunction(code):
            installed = _generator_wrapper(fn, probe)
        replacement: Any = installed
        if target.kind == "staticmethod":
            replacement = staticmethod(installed)
        elif target.kind == "classmethod":
            replacement = classmethod(installed)
        arm = Arm(fn_id, target.name, target.kind, fn, probe, installed)
        arm.sites.append(Site(target.holder, target.attr, target.entry, replacement))
        # `from x import f` and friends: other globals holding the same object
        for _, module in targets.loaded_modules():
            d = targets.module_dict(module)
            for attr, value in list(d.items()):
                if value is fn and not (d is target.holder and attr == target.attr):
                    arm.sites.append(Site(d, attr, value, installed))
        return arm

    def disarm(self, fn_id: int) -> bool:
        with self.lock:
            arm = self._by_id.pop(fn_id, None)
            if arm is None:
                return False
            self._undo(arm)
            return True

    def disarm_all(self) -> int:
        with self.lock:
            arms = list(self._by_id.values())
            self._by_id.clear()
            for arm in arms:
                self._undo(arm)
            return len(arms)

    def _undo(self, arm: Arm) -> None:
        del self._by_installed[id(arm.installed)]
        arm.probe.armed = False  # any reference left over becomes a plain pass-through
        for site in reversed(arm.sites):
            if _get_own(site.holder, site.attr) is site.replacement:
                _put(site.holder, site.attr, site.original)
            else:
                log.info("%s: %r was reassigned since arming; left as it is", arm.name, site.attr)
        # globals that picked the armed function up after arming (a module imported later)
        for _, module in targets.loaded_modules():
            d = targets.module_dict(module)
            for attr, value in list(d.items()):
                if value is arm.installed:
                    d[attr] = arm.function
        log.info("disarmed %s (fn_id %d)", arm.name, arm.fn_id)


ARMS = ArmRegistry()
