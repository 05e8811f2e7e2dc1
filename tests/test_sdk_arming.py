"""Arming and disarming Python functions by name, in-process, no BPF:
what callers reach while armed, that behaviour does not change, and that
disarming puts back the very objects that were there."""

from __future__ import annotations

import asyncio
import functools
import pickle
import sys
import traceback
import types
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from coral.daemon.errors import InvalidArgument, NotFound
from coral.sdk import _probe
from coral.sdk.arming import ARMS
from coral.sdk.records import CallRecord, take_test_records

MODULE = __name__


# ------------------------------------------------------------ the targets


def validate_card(card: str, amount: int) -> dict[str, object]:
    """Approve or decline."""
    if amount > 1000:
        raise ValueError("card declined")
    return {"approved": True, "amount": amount}


def traced(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    wrapper.extra = "kept"  # type: ignore[attr-defined]
    return wrapper


@traced
def decorated(x: int) -> int:
    """A function behind a functools.wraps decorator."""
    return x * 2


async def fetch_rate(currency: str, delay: float) -> float:
    await asyncio.sleep(delay)
    return 1.25


async def fetch_fails() -> None:
    await asyncio.sleep(0)
    raise ValueError("card declined")


def batches(n: int) -> Generator[int, None, str]:
    yield from range(n)
    return "done"


async def ticks() -> Any:
    yield 1


class Gateway:
    fee = 3

    def charge(self, amount: int) -> int:
        return amount + self.fee

    @staticmethod
    def currency(code: str) -> str:
        return code.upper()

    @classmethod
    def create(cls, fee: int) -> Gateway:
        gateway = cls()
        gateway.fee = fee
        return gateway

    @property
    def name(self) -> str:
        return "gw"

    async def settle(self, delay: float) -> str:
        await asyncio.sleep(delay)
        return "settled"


class EuGateway(Gateway):
    pass


@functools.lru_cache(maxsize=8)
def cached_rate(currency: str) -> float:
    return 1.0


rounded = functools.partial(round, ndigits=2)


# --------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def clean_arms() -> Iterator[None]:
    yield
    ARMS.disarm_all()
    _probe._set_test_mode(semaphore=0, capture=False)
    take_test_records()


@pytest.fixture
def tracer() -> Iterator[None]:
    _probe._set_test_mode(semaphore=1, capture=True)
    take_test_records()
    yield


@pytest.fixture
def importer() -> Iterator[types.ModuleType]:
    """Another loaded module that did `from <this module> import validate_card`."""
    module = types.ModuleType("coral_test_importer")
    module.validate_card = validate_card  # type: ignore[attr-defined]
    module.decorated = decorated  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def this() -> types.ModuleType:
    return sys.modules[MODULE]


def fn_ids(records: list[CallRecord]) -> list[int]:
    return [r.fn_id for r in records]


# -------------------------------------------------------------------- tests


def test_arm_replaces_the_module_attribute_and_from_imports_then_disarm_restores_them(importer: types.ModuleType) -> None:
    original = validate_card
    ARMS.arm(f"{MODULE}.validate_card", 1)
    armed = this().validate_card
    assert armed is not original and importer.validate_card is armed
    assert armed.__wrapped__ is original
    assert ARMS.disarm(1) is True
    assert this().validate_card is original and importer.validate_card is original
    assert ARMS.disarm(1) is False


def test_armed_functions_behave_the_same_with_or_without_a_tracer(tracer: None) -> None:
    ARMS.arm(f"{MODULE}.validate_card", 1)
    for semaphore in (0, 1):
        _probe._set_test_mode(semaphore=semaphore, capture=True)
        assert this().validate_card("4000000000000002", 10) == {"approved": True, "amount": 10}
        with pytest.raises(ValueError, match="card declined"):
            this().validate_card("4000000000000002", 5000)
    assert [r.raised for r in take_test_records()] == [False, True]


def _frames(call: Callable[[], object]) -> list[tuple[str, str]]:
    try:
        call()
    except ValueError as exc:
        return [(f.filename, f.name) for f in traceback.extract_tb(exc.__traceback__)]
    raise AssertionError("did not raise")


def test_exceptions_keep_the_originals_traceback_frames(tracer: None) -> None:
    def call() -> object:
        return this().validate_card("4000000000000002", 5000)

    before = _frames(call)
    ARMS.arm(f"{MODULE}.validate_card", 1)
    assert _frames(call) == before  # the wrapper is C: no frame of its own
    (record,) = take_test_records()
    assert record.raised and record.ret == "ValueError: card declined"


def test_functools_wraps_metadata_survives_arming(importer: types.ModuleType) -> None:
    original = decorated
    ARMS.arm(f"{MODULE}.decorated", 2)
    armed = this().decorated
    assert (armed.__name__, armed.__qualname__, armed.__doc__, armed.__module__) == (
        "decorated",
        "decorated",
        "A function behind a functools.wraps decorator.",
        MODULE,
    )
    assert armed.__wrapped__ is original and armed.extra == "kept"
    assert armed.__code__ is original.__code__ and armed.__defaults__ is None
    import inspect

    assert str(inspect.signature(armed)) == "(x: 'int') -> 'int'"
    assert armed(21) == 42 and importer.decorated is armed
    ARMS.disarm(2)
    assert this().decorated is original and importer.decorated is original


def test_armed_functions_pickle_and_weakref_like_functions() -> None:
    ARMS.arm(f"{MODULE}.validate_card", 1)
    armed = this().validate_card
    assert pickle.loads(pickle.dumps(armed)) is armed  # by reference, as functions are
    assert weakref.ref(armed)() is armed


def test_methods_bind_self_and_are_restored(tracer: None) -> None:
    entry = Gateway.__dict__["charge"]
    ARMS.arm(f"{MODULE}.Gateway.charge", 3)
    assert Gateway.__dict__["charge"] is not entry
    assert Gateway().charge(10) == 13
    assert Gateway.charge(Gateway(), 1) == 4
    (record,) = take_test_records()[-1:]
    assert record.args == (("self", f"<{Gateway.__qualname__} object>"), ("amount", "1"))
    ARMS.disarm(3)
    assert Gateway.__dict__["charge"] is entry


def test_staticmethod_and_classmethod_keep_their_kind_and_are_restored_exactly(tracer: None) -> None:
    static_entry, class_entry = Gateway.__dict__["currency"], Gateway.__dict__["create"]
    ARMS.arm(f"{MODULE}.Gateway.currency", 4)
    ARMS.arm(f"{MODULE}.Gateway.create", 5)
    assert isinstance(Gateway.__dict__["currency"], staticmethod)
    assert isinstance(Gateway.__dict__["create"], classmethod)
    assert Gateway.currency("eur") == "EUR" and Gateway().currency("usd") == "USD"
    assert EuGateway.create(7).__class__ is EuGateway and Gateway.create(7).fee == 7
    assert sorted({r.fn_id for r in take_test_records()}) == [4, 5]
    ARMS.disarm_all()
    assert Gateway.__dict__["currency"] is static_entry and Gateway.__dict__["create"] is class_entry


def test_an_inherited_method_is_shadowed_on_the_named_class_only() -> None:
    ARMS.arm(f"{MODULE}.EuGateway.charge", 6)
    assert "charge" in EuGateway.__dict__ and Gateway.__dict__["charge"] is Gateway.__dict__["charge"]
    assert EuGateway().charge(1) == 4
    ARMS.disarm(6)
    assert "charge" not in EuGateway.__dict__


def test_async_def_times_the_awaited_run_not_the_coroutine_creation(tracer: None) -> None:
    original = fetch_rate
    ARMS.arm(f"{MODULE}.fetch_rate", 8)
    armed = this().fetch_rate
    import inspect

    assert inspect.iscoroutinefunction(armed) and armed.__wrapped__ is original
    coroutine = armed("EUR", 0.05)
    assert take_test_records() == []  # created, not yet run
    assert asyncio.run(coroutine) == 1.25
    (record,) = take_test_records()
    assert record.args == (("currency", "'EUR'"), ("delay", "0.05"))
    assert record.ret == "1.25"
    assert record.duration_ns >= 45_000_000  # covers the awaited sleep of 50 ms
    ARMS.disarm(8)
    assert this().fetch_rate is original


def test_async_exceptions_and_async_methods(tracer: None) -> None:
    ARMS.arm(f"{MODULE}.fetch_fails", 9)
    ARMS.arm(f"{MODULE}.Gateway.settle", 10)
    with pytest.raises(ValueError, match="card declined"):
        asyncio.run(this().fetch_fails())
    assert asyncio.run(Gateway().settle(0)) == "settled"
    first, second = take_test_records()
    assert (first.fn_id, first.raised, first.ret) == (9, True, "ValueError: card declined")
    assert (second.fn_id, second.ret, second.args[1]) == (10, "'settled'", ("delay", "0"))


def test_generators_are_timed_until_exhausted(tracer: None) -> None:
    ARMS.arm(f"{MODULE}.batches", 11)
    gen = this().batches(3)
    assert take_test_records() == []
    assert list(gen) == [0, 1, 2]
    (record,) = take_test_records()
    assert (record.args, record.ret) == ((("n", "3"),), "'done'")


def test_a_bound_method_at_module_level_can_be_armed() -> None:
    import random

    original = random.randint
    ARMS.arm("random.randint", 12)
    assert random.randint(5, 5) == 5 and random.randint is not original
    ARMS.disarm(12)
    assert random.randint is original


def test_stdlib_python_functions_can_be_armed(tracer: None) -> None:
    import json

    original = json.dumps
    ARMS.arm("json.dumps", 13)
    assert json.dumps({"a": 1}) == '{"a": 1}'
    (record,) = [r for r in take_test_records() if r.fn_id == 13]
    assert record.args == (("obj", "{'a': 1}"),) and record.ret == "'{\"a\": 1}'"
    ARMS.disarm(13)
    assert json.dumps is original


def test_arming_is_idempotent_per_fn_id_and_re_stamps_under_a_new_one(tracer: None) -> None:
    first = ARMS.arm(f"{MODULE}.validate_card", 20)
    again = ARMS.arm(f"{MODULE}.validate_card", 20, capture_args=False)
    assert again is first and this().validate_card is first.installed
    ARMS.arm(f"{MODULE}.validate_card", 21)
    this().validate_card("4000000000000002", 1)
    assert fn_ids(take_test_records()) == [21]
    assert ARMS.disarm(20) is False and ARMS.disarm(21) is True
    assert this().validate_card is first.function


def test_one_fn_id_cannot_arm_two_functions() -> None:
    ARMS.arm(f"{MODULE}.validate_card", 22)
    with pytest.raises(InvalidArgument, match="fn_id 22 already arms"):
        ARMS.arm(f"{MODULE}.decorated", 22)


def test_disarm_also_restores_globals_that_picked_up_the_armed_function_later() -> None:
    ARMS.arm(f"{MODULE}.validate_card", 23)
    late = types.ModuleType("coral_test_late_importer")
    late.validate_card = this().validate_card  # type: ignore[attr-defined]  # imported while armed
    sys.modules[late.__name__] = late
    try:
        ARMS.disarm(23)
        assert late.validate_card is validate_card
    finally:
        del sys.modules[late.__name__]


def test_a_reference_kept_elsewhere_becomes_a_pass_through_after_disarm(tracer: None) -> None:
    arm = ARMS.arm(f"{MODULE}.validate_card", 24)
    kept = this().validate_card
    ARMS.disarm(24)
    assert kept("4000000000000002", 1) == {"approved": True, "amount": 1} and arm.probe.armed is False
    assert take_test_records() == []


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("time.sleep", "is implemented in C"),
        ("json.JSONEncoder", "is a class; arm one of its methods"),
        (f"{MODULE}.Gateway.name", "is a property"),
        (f"{MODULE}.cached_rate", "wrapping a function"),
        (f"{MODULE}.rounded", "functools.partial"),
        (f"{MODULE}.ticks", "async generator"),
        (f"{MODULE}.MODULE", "is not a function"),
        ("builtins.dict.get", "immutable"),
        ("coral.sdk.init", "part of Coral itself"),
        ("validate_card", "not a qualified function name"),
    ],
)
def test_what_cannot_be_armed_is_refused_with_the_reason(name: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        ARMS.arm(name, 30)
    assert ARMS.arms() == []


def test_an_unknown_name_is_not_found_with_close_suggestions() -> None:
    with pytest.raises(NotFound) as caught:
        ARMS.arm(f"{MODULE}.validate_crad", 31)
    assert f"{MODULE}.validate_card" in caught.value.suggestions
    with pytest.raises(NotFound, match="no loaded module"):
        ARMS.arm("no_such_module.f", 31)
