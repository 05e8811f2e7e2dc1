"""--where in the SDK, in-process, no BPF (the probe's test mode keeps each
record): which calls get a full record, which only a header flagged
filtered or where_error, and that evaluating never runs the service's code
nor raises into it. tests/test_python_where.py does the same for real."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sys
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from coral.daemon.errors import InvalidArgument
from coral.sdk import _probe
from coral.sdk.arming import ARMS
from coral.sdk.records import take_test_records

MODULE = __name__
FILTERED, WHERE_ERROR = _probe.CALL_FILTERED, _probe.CALL_WHERE_ERROR
FN_IDS = {"charge": 4242, "fetch": 4244, "numbers": 4245, "odd": 4246, "shadows": 4247}
RAN: list[str] = []  # service code that ran where only a read was allowed


class Tier(enum.IntEnum):
    GOLD = 3


class Name(str):
    def __eq__(self, other: object) -> bool:
        RAN.append("Name.__eq__")
        return True

    __hash__ = str.__hash__

    def startswith(self, *args: Any) -> bool:
        RAN.append("Name.startswith")
        return True


class Req:
    kind = "card"  # a plain class attribute
    amount: Any
    _secret: Any

    def __init__(self, amount: Any) -> None:
        self.amount = amount

    @property
    def doubled(self) -> int:
        RAN.append("property")
        return 2

    def __getattr__(self, name: str) -> Any:
        RAN.append("__getattr__")
        return 1


class Slots:
    __slots__ = ("amount", "unset")

    def __init__(self, amount: int) -> None:
        self.amount = amount


class Sneaky:
    def __getattribute__(self, name: str) -> Any:
        RAN.append("__getattribute__")
        raise RuntimeError("boom")


class Declined(ValueError):
    pass


def charge(amount: Any, network: str = "visa", req: Any = None, *rest: Any, retry: bool = False, **extra: Any) -> Any:
    if isinstance(amount, int) and amount < 0:
        raise Declined("negative")
    if amount == 13:
        raise KeyError("unlucky")
    return amount


def odd(_coral_x: int, /, y: int = 2, *, z: str = 'a"b') -> int:
    return _coral_x


def shadows(type: Any, str: Any, Exception: Any) -> int:  # the names the generated code must not call
    return 0


class Shop:
    def pay(self, amount: int) -> int:
        return amount


async def fetch(amount: int) -> int:
    await asyncio.sleep(0)
    if amount < 0:
        raise Declined("negative")
    return amount


def numbers(n: int) -> Generator[int, None, int]:
    yield from range(n)
    return n


@pytest.fixture(autouse=True)
def tracer() -> Iterator[None]:
    _probe._set_test_mode(semaphore=1, capture=True)
    take_test_records()
    RAN.clear()
    yield
    ARMS.disarm_all()
    _probe._set_test_mode(semaphore=0, capture=False)
    take_test_records()


def armed(condition: str, name: str = "charge") -> None:
    ARMS.arm(f"{MODULE}.{name}", FN_IDS[name], condition=condition)


def verdicts(*calls: tuple[tuple[Any, ...], dict[str, Any]]) -> list[int]:
    """Call charge() as each (args, kwargs) says; each record's verdict."""
    fn = sys.modules[MODULE].charge
    for args, kwargs in calls:
        with contextlib.suppress(Declined, KeyError):
            fn(*args, **kwargs)
    return [r.flags & (FILTERED | WHERE_ERROR) for r in take_test_records()]


def call(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def test_arguments_by_position_keyword_and_default() -> None:
    armed('amount > 10 && network == "amex" && !retry')
    assert verdicts(call(20, "amex"), call(20, network="amex"), call(amount=20, network="amex"), call(20),
                    call(5, "amex"), call(20, "amex", retry=True)) == [0, 0, 0, FILTERED, FILTERED, FILTERED]


def test_a_filtered_call_has_only_its_header() -> None:
    armed("amount > 10")
    sys.modules[MODULE].charge(5, "visa")
    sys.modules[MODULE].charge(50, "visa")
    low, high = take_test_records()
    assert low.flags == FILTERED and low.args == () and low.ret == "" and low.end_ns >= low.start_ns > 0
    assert high.flags == 0 and high.arg("amount") == "50" and high.ret == "50"


def test_varargs_and_kwargs_by_their_names() -> None:
    armed("rest && extra")
    assert verdicts(call(1, "v", None, 7, note="x"), call(1, "v", None, 7), call(1)) == [0, FILTERED, FILTERED]


def test_attributes_dict_slots_class_and_what_is_never_read() -> None:
    armed('req.amount >= 100 && req.kind == "card"')
    assert verdicts(call(1, req=Req(150)), call(1, req=Req(5)), call(1, req=Slots(150)), call(1, req=Sneaky()),
                    call(1, req=None)) == [0, FILTERED, WHERE_ERROR, WHERE_ERROR, WHERE_ERROR]
    ARMS.disarm_all()
    armed("req.amount >= 100")
    assert verdicts(call(1, req=Slots(150)), call(1, req=Slots(5))) == [0, FILTERED]
    ARMS.disarm_all()
    armed("req.unset == 1 || req.doubled == 2 || req.missing == 1")  # an empty slot, a property, __getattr__
    assert verdicts(call(1, req=Slots(1)), call(1, req=Req(1))) == [WHERE_ERROR, WHERE_ERROR]
    assert RAN == []


def test_values_compare_as_builtins_and_never_through_their_methods() -> None:
    armed('network == "amex"')
    assert verdicts(call(1, Name("amex")), call(1, Name("visa")), call(1, b"amex"), call(1, 5), call(1, Req(1))) == \
        [0, FILTERED, 0, WHERE_ERROR, WHERE_ERROR]
    ARMS.disarm_all()
    armed('startswith(network, "am") && amount == 3')
    assert verdicts(call(Tier.GOLD, Name("amex")), call(3.0, "amex"), call(True, "amex")) == [0, 0, FILTERED]
    ARMS.disarm_all()
    armed("req == nil || req != 1")  # identity for nil; an object compared with a number cannot be
    assert verdicts(call(1), call(1, req=Req(1)), call(1, req=2)) == [0, WHERE_ERROR, 0]
    assert RAN == []


def test_return_exceptions_and_duration() -> None:
    armed("ret > 10")
    assert verdicts(call(20), call(5), call(-1)) == [0, FILTERED, WHERE_ERROR]  # a call that raised has no ret
    ARMS.disarm_all()
    armed("raised(ValueError)")
    assert verdicts(call(-1), call(13), call(1)) == [0, FILTERED, FILTERED]
    ARMS.disarm_all()
    armed(f"raised({MODULE}.Declined) || raised(builtins.KeyError)")
    assert verdicts(call(-1), call(13), call(1)) == [0, 0, FILTERED]
    ARMS.disarm_all()
    armed("raised || amount == 1")  # an entry value and a return value
    assert verdicts(call(-1), call(13), call(1), call(2)) == [0, 0, 0, FILTERED]
    ARMS.disarm_all()
    armed("duration >= 0ns && duration < 10s")
    assert verdicts(call(1)) == [0]


def test_an_unknown_operand_the_rest_decides_without() -> None:
    armed("req.amount > 1 || raised")
    assert verdicts(call(-1, req=Sneaky()), call(1, req=Sneaky()), call(1, req=Req(5))) == [0, WHERE_ERROR, 0]
    ARMS.disarm_all()
    armed("amount > 5 && req.amount > 1")
    assert verdicts(call(1, req=Sneaky()), call(9, req=Sneaky()), call(9, req=Req(5))) == [FILTERED, WHERE_ERROR, 0]
    ARMS.disarm_all()
    armed("!(req.amount > 1)")
    assert verdicts(call(1, req=Sneaky()), call(1, req=Req(0))) == [WHERE_ERROR, 0]
    assert RAN == []


def test_the_service_sees_its_own_exceptions_unchanged() -> None:
    armed("req.amount > 1 || raised")
    with pytest.raises(Declined, match="negative") as info:
        sys.modules[MODULE].charge(-1, req=Sneaky())
    assert info.value.__traceback__ is not None
    [record] = take_test_records()
    assert record.flags & _probe.CALL_RAISED and not record.flags & (FILTERED | WHERE_ERROR)
    assert sys.exc_info() == (None, None, None)


def test_methods_coroutines_and_generators() -> None:
    ARMS.arm(f"{MODULE}.Shop.pay", 4243, condition="self && amount > 1")
    assert Shop().pay(5) == 5 and Shop().pay(1) == 1
    assert [r.flags for r in take_test_records()] == [0, FILTERED]
    armed("amount > 1 && !raised", "fetch")
    assert asyncio.run(sys.modules[MODULE].fetch(5)) == 5
    assert asyncio.run(sys.modules[MODULE].fetch(1)) == 1
    with pytest.raises(Declined):
        asyncio.run(sys.modules[MODULE].fetch(-5))
    assert [r.flags & ~_probe.CALL_RAISED for r in take_test_records()] == [0, FILTERED, FILTERED]
    armed("ret == 3", "numbers")
    assert list(sys.modules[MODULE].numbers(3)) == [0, 1, 2] and list(sys.modules[MODULE].numbers(2)) == [0, 1]
    assert [r.flags for r in take_test_records()] == [0, FILTERED]


def test_refused_at_arm_time_with_nothing_armed() -> None:
    for condition, message in [
        ("amout > 1", f"--where 'amout > 1', column 1: {MODULE}.charge has no parameter 'amout'; its parameters "
                      "are: amount, network, req, rest, retry, extra"),
        ("err != nil", "column 1: err is a Go function's error result"),
        ("req.password == 1", "column 1: 'password' is redacted"),
        ("amount >", "--where 'amount >', column 9: expected a value"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            armed(condition)
        assert message in info.value.message
        assert ARMS.arms() == [] and not isinstance(sys.modules[MODULE].charge, _probe.ProbeWrapper)


def test_rearming_replaces_the_condition_and_none_removes_it() -> None:
    armed("amount > 10")
    armed("amount > 100")
    armed("")
    assert verdicts(call(50)) == [0]
    armed("amount > 100")
    assert verdicts(call(50)) == [FILTERED]



def test_text_of_the_condition_never_becomes_code() -> None:
    """Constants are passed by reference; a parameter whose name could clash
    with the generated code's own is bound the generic way."""
    hostile = '"); import os; os._exit(1) #'
    armed('network == "\\"); import os; os._exit(1) #" || network == \'it\\\'s\'')
    assert verdicts(call(1, "it's"), call(1, hostile), call(1, "x")) == [0, 0, FILTERED]
    ARMS.disarm_all()
    armed('_coral_x > 1 && y == 2 && z == "a\\"b"', "odd")
    fn = sys.modules[MODULE].odd
    assert [fn(5), fn(0), fn(5, 3), fn(5, z="q")] == [5, 0, 5, 5]
    assert [r.flags for r in take_test_records()] == [0, FILTERED, FILTERED, FILTERED]
    ARMS.disarm_all()

    def boom(*args: Any) -> None:
        RAN.append("called a parameter")

    armed('type == "t" && str == "s" && !raised', "shadows")
    sys.modules[MODULE].shadows(boom, boom, boom)
    sys.modules[MODULE].shadows("t", "s", boom)
    assert [r.flags for r in take_test_records()] == [WHERE_ERROR, 0] and RAN == []
