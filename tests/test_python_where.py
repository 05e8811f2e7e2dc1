"""--where and --errors-only on a Python function, end to end: real colony
and agent, real BPF on the SDK's probe site, a real Python service that
makes the calls it is told to and counts them itself.

Each session's summary must agree with the service's own counts: every
call counted (`calls`), the matching ones shown, the others counted as
`filtered` or, when a value could not be read or compared, `where_error`.
The hostile objects prove that a condition never runs the service's code
(a property, `__getattr__`, `__eq__`, `__getattribute__`) and never raises
into it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import CoralEnv, Process, tool
from tests.test_native_e2e import records, wait_for_service

SERVICE = "shop-api"

SHOP = '''
"""A shop whose functions the tests debug (tests/test_python_where.py)."""
import enum
import time

TOUCHED = {"property": 0, "getattr": 0, "eq": 0, "getattribute": 0}


class Currency(str, enum.Enum):
    EUR = "EUR"
    USD = "USD"


class Tier(enum.IntEnum):
    BASIC = 1
    GOLD = 3


class Req:
    def __init__(self, amount, currency):
        self.amount = amount
        self.currency = currency


class Slotted:
    __slots__ = ("amount", "currency")

    def __init__(self, amount, currency):
        self.amount = amount
        self.currency = currency


class Hostile:
    """Every way of running code on a read: counted if it ever runs."""

    def __init__(self):
        self.currency = "EUR"

    @property
    def amount(self):
        TOUCHED["property"] += 1
        return 1_000_000

    def __getattr__(self, name):
        TOUCHED["getattr"] += 1
        return 1_000_000

    def __eq__(self, other):
        TOUCHED["eq"] += 1
        return True

    __hash__ = object.__hash__


class Exploding:
    def __getattribute__(self, name):
        TOUCHED["getattribute"] += 1
        raise RuntimeError("attribute access exploded")


class Declined(ValueError):
    pass


def charge(amount, network, req=None, tier=Tier.BASIC, *, delay_ms=0):
    """Raises Declined for a negative amount, KeyError for 13."""
    if delay_ms:
        time.sleep(delay_ms / 1000)
    if amount < 0:
        raise Declined(f"negative amount {amount}")
    if amount == 13:
        raise KeyError("unlucky")
    return amount * 2
'''

MAIN = '''
import json
import sys

import coral.sdk
import shop

sdk = coral.sdk.init(service="shop-api")
sdk.wait_registered(10)
print("ready", flush=True)


def argument(kind, amount, currency):
    if kind == "req":
        return shop.Req(amount, currency)
    if kind == "slotted":
        return shop.Slotted(amount, currency)
    if kind == "hostile":
        return shop.Hostile()
    if kind == "exploding":
        return shop.Exploding()
    if kind == "enum":
        return shop.Req(amount, shop.Currency(currency))
    return None


for line in sys.stdin:
    calls = json.loads(line)
    made = raised = 0
    escaped = []
    for amount, network, kind, currency, tier, delay_ms in calls:
        made += 1
        try:
            shop.charge(amount, network, argument(kind, amount, currency), shop.Tier(tier), delay_ms=delay_ms)
        except (shop.Declined, KeyError):
            raised += 1
        except BaseException as exc:  # what a condition must never do to the service
            escaped.append(repr(exc))
    print(json.dumps({"made": made, "raised": raised, "escaped": escaped, "touched": shop.TOUCHED}), flush=True)
'''


@dataclass(frozen=True)
class Call:
    amount: int
    network: str = "visa"
    kind: str = "req"  # what `req` is: req, slotted, hostile, exploding, enum, none
    currency: str = "EUR"
    tier: int = 1
    delay_ms: int = 0

    def row(self) -> list[Any]:
        return [self.amount, self.network, self.kind, self.currency, self.tier, self.delay_ms]

    @property
    def raised(self) -> str:
        return "Declined" if self.amount < 0 else "KeyError" if self.amount == 13 else ""


class Shop:
    def __init__(self, env: CoralEnv, tmp: Path) -> None:
        (tmp / "shop.py").write_text(SHOP)
        (tmp / "shop_main.py").write_text(MAIN)
        penv = dict(env.env)
        penv["PYTHONPATH"] = f"{tmp}:{penv.get('PYTHONPATH', '')}"
        self.proc = subprocess.Popen([sys.executable, str(tmp / "shop_main.py")], env=penv, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        assert self.stdout.readline().strip() == "ready"

    def run(self, calls: list[Call]) -> dict[str, Any]:
        self.stdin.write(json.dumps([c.row() for c in calls]) + "\n")
        self.stdin.flush()
        out: dict[str, Any] = json.loads(self.stdout.readline())
        return out

    def stop(self) -> None:
        self.stdin.close()
        self.proc.wait(10)


@pytest.fixture
def shop(coral_env: CoralEnv, colony: Process, agent: Process, tmp_path: Path) -> Iterator[Shop]:
    s = Shop(coral_env, tmp_path)
    wait_for_service(coral_env, SERVICE)
    yield s
    s.stop()


def attach(env: CoralEnv, *options: str, duration: str = "2s", capture: bool = True) -> subprocess.Popen[str]:
    captures = ["--capture-args", "--capture-return"] if capture else []
    p = subprocess.Popen([tool("coralctl"), "--output", "json", "debug", "attach", SERVICE, "--function", "shop.charge",
                          "--duration", duration, *captures, *options],
                         env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        _, err = p.communicate(timeout=30)
        raise AssertionError(f"attach {options} refused: {err}")
    first = json.loads(line)
    assert first["kind"] == "session" and first["return_probe"] == "python", first
    return p


@dataclass(frozen=True)
class Seen:
    shown: list[dict[str, Any]]
    summary: dict[str, Any]
    own: dict[str, Any]  # the service's own counts

    @property
    def lost(self) -> dict[str, int]:
        lost: dict[str, int] = self.summary["lost"]
        return lost


def session(env: CoralEnv, shop: Shop, calls: list[Call], *options: str) -> Seen:
    p = attach(env, *options)
    own = shop.run(calls)
    out, _ = p.communicate(timeout=60)
    lines = records(out)
    assert own["escaped"] == [] and own["made"] == len(calls), own
    return Seen([e for e in lines if e["kind"] == "call"], lines[-1], own)


def amounts(seen: Seen) -> list[int]:
    return [int(next(a["value"] for a in c["args"] if a["name"] == "amount")) for c in seen.shown]


def check_counts(seen: Seen, calls: list[Call], shown: list[Call], errors: int = 0) -> None:
    """Every call counted; the matching ones shown (in order); the rest
    filtered, or where_error."""
    assert seen.summary["calls"] == seen.own["made"] == len(calls)
    assert amounts(seen) == [c.amount for c in shown]
    expected = {"filtered": len(calls) - len(shown) - errors, "where_error": errors}
    assert seen.lost == {k: v for k, v in expected.items() if v}, seen.lost


MIXED = [Call(a, network=t, currency=cur, tier=tier)
         for a, t, cur, tier in [(5, "visa", "EUR", 1), (1500, "amex", "USD", 3), (-7, "visa", "EUR", 1),
                                 (13, "amex", "EUR", 3), (999, "visa", "USD", 1), (1000, "mastercard", "EUR", 3),
                                 (2500, "visa", "EUR", 1), (0, "amex", "USD", 1), (-1, "amex", "EUR", 3),
                                 (4000, "visa", "EUR", 3)]] * 3


def test_integer_string_and_attribute_conditions_are_exact(coral_env: CoralEnv, shop: Shop) -> None:
    # an integer argument
    seen = session(coral_env, shop, MIXED, "--where", "amount >= 1000")
    check_counts(seen, MIXED, [c for c in MIXED if c.amount >= 1000])
    # a string argument: == and startswith
    seen = session(coral_env, shop, MIXED, "--where", 'network == "amex"')
    check_counts(seen, MIXED, [c for c in MIXED if c.network == "amex"])
    seen = session(coral_env, shop, MIXED, "--where", 'startswith(network, "ma") || startswith(network, "vi")')
    check_counts(seen, MIXED, [c for c in MIXED if c.network.startswith(("ma", "vi"))])
    # an attribute, of an instance dict and of __slots__; an IntEnum by its value, a default too
    seen = session(coral_env, shop, MIXED, "--where", "req.amount > 100 && tier == 3")
    check_counts(seen, MIXED, [c for c in MIXED if c.amount > 100 and c.tier == 3])
    slotted = [Call(c.amount, kind="slotted", currency=c.currency) for c in MIXED]
    seen = session(coral_env, shop, slotted, "--where", 'req->currency != "EUR"')
    check_counts(seen, slotted, [c for c in slotted if c.currency != "EUR"])
    # a str Enum compared as the str it is
    enums = [Call(c.amount, kind="enum", currency=c.currency) for c in MIXED]
    seen = session(coral_env, shop, enums, "--where", 'req.currency == "USD"')
    check_counts(seen, enums, [c for c in enums if c.currency == "USD"])


def test_return_value_exceptions_and_duration(coral_env: CoralEnv, shop: Shop) -> None:
    # ret: a call that raised has none, so `ret > 3000` cannot be decided for it
    seen = session(coral_env, shop, MIXED, "--where", "ret > 3000")
    check_counts(seen, MIXED, [c for c in MIXED if not c.raised and c.amount * 2 > 3000],
                 errors=sum(1 for c in MIXED if c.raised))
    # raised, and --errors-only which means the same for Python
    for options in (("--where", "raised"), ("--errors-only",)):
        seen = session(coral_env, shop, MIXED, *options)
        check_counts(seen, MIXED, [c for c in MIXED if c.raised])
        assert seen.own["raised"] == len(seen.shown)
        assert all(c["return_value"]["is_error"] for c in seen.shown)
    # raised(ValueError): Declined is a subclass; KeyError is not; by module too
    seen = session(coral_env, shop, MIXED, "--where", "raised(ValueError)")
    check_counts(seen, MIXED, [c for c in MIXED if c.raised == "Declined"])
    seen = session(coral_env, shop, MIXED, "--where", "raised(builtins.KeyError) || raised(shop.Declined)")
    check_counts(seen, MIXED, [c for c in MIXED if c.raised])
    # --errors-only and --where together
    seen = session(coral_env, shop, MIXED, "--errors-only", "--where", "amount < -3")
    check_counts(seen, MIXED, [c for c in MIXED if c.raised and c.amount < -3])
    # duration, measured at the return
    slow = [Call(a, delay_ms=d) for a, d in [(1, 0), (2, 30), (3, 0), (4, 30), (5, 0)]]
    seen = session(coral_env, shop, slow, "--where", "duration > 20ms")
    check_counts(seen, slow, [c for c in slow if c.delay_ms])
    assert all(c["duration_ns"] > 20_000_000 for c in seen.shown)


def test_a_three_clause_condition(coral_env: CoralEnv, shop: Shop) -> None:
    cond = '(amount >= 1000 && req.currency == "EUR") || raised(ValueError)'
    seen = session(coral_env, shop, MIXED, "--where", cond)
    check_counts(seen, MIXED, [c for c in MIXED if (c.amount >= 1000 and c.currency == "EUR") or c.raised == "Declined"])
    # with a value read at the entry and one at the return, and !
    cond = '!(network == "visa") && ret >= 2000 && tier == 3'
    seen = session(coral_env, shop, MIXED, "--where", cond)
    check_counts(seen, MIXED, [c for c in MIXED if c.network != "visa" and not c.raised and c.amount * 2 >= 2000
                               and c.tier == 3],
                 # a call that raised has no ret: unknown, unless another clause is false
                 errors=sum(1 for c in MIXED if c.network != "visa" and c.raised and c.tier == 3))


def test_a_condition_never_runs_the_services_code(coral_env: CoralEnv, shop: Shop) -> None:
    """A property with a side effect, __getattr__, __eq__ and an object whose
    attribute access raises: none runs, the service sees no exception, and
    every such call is counted as where_error."""
    hostile = [Call(10, kind="hostile"), Call(20, kind="exploding"), Call(30, kind="hostile"),
               Call(2000, kind="req"), Call(40, kind="exploding")]
    seen = session(coral_env, shop, hostile, "--where", "req.amount > 5")  # a property / __getattribute__
    check_counts(seen, hostile, [hostile[3]], errors=4)
    seen = session(coral_env, shop, hostile, "--where", "req.missing == 1")  # __getattr__ would answer
    check_counts(seen, hostile, [], errors=5)
    seen = session(coral_env, shop, hostile, "--where", "req == 1")  # __eq__ would answer True
    check_counts(seen, hostile, [], errors=5)
    seen = session(coral_env, shop, hostile, "--where", "req != nil && amount > 25")  # identity: no __eq__
    check_counts(seen, hostile, [c for c in hostile if c.amount > 25])
    assert seen.own["touched"] == {"property": 0, "getattr": 0, "eq": 0, "getattribute": 0}


def ctl(env: CoralEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("coralctl"), *args], env=env.env, capture_output=True, text=True, timeout=30)


def test_what_the_agent_and_the_sdk_refuse(coral_env: CoralEnv, shop: Shop) -> None:
    base = ("debug", "attach", SERVICE, "--function", "shop.charge", "--duration", "2s")
    out = ctl(coral_env, *base, "--where", "amout > 1")
    assert out.returncode == 1 and ("--where 'amout > 1', column 1: shop.charge has no parameter 'amout'; its "
                                    "parameters are: amount, network, req, tier, delay_ms") in out.stderr, out.stderr
    out = ctl(coral_env, *base, "--where", "err != nil")
    assert out.returncode == 1 and "err is a Go function's error result" in out.stderr, out.stderr
    out = ctl(coral_env, *base, "--where", "req.card_number == 1")
    assert out.returncode == 1 and "'card_number' is redacted" in out.stderr, out.stderr
    # nothing was armed by any of them: a plain session sees every call
    calls = [Call(a) for a in range(1, 6)]
    seen = session(coral_env, shop, calls)
    check_counts(seen, calls, calls)


def test_one_condition_per_python_function_at_a_time(coral_env: CoralEnv, shop: Shop) -> None:
    first = attach(coral_env, "--where", "amount > 2", duration="4s")
    same = attach(coral_env, "--where", "amount > 2", duration="2s")  # the same condition: shared
    out = ctl(coral_env, "debug", "attach", SERVICE, "--function", "shop.charge", "--where", "amount > 3")
    assert out.returncode == 1 and "a Python function runs one condition at a time" in out.stderr, out.stderr
    calls = [Call(a) for a in range(1, 6)]
    own = shop.run(calls)
    for p in (same, first):
        lines = records(p.communicate(timeout=60)[0])
        assert lines[-1]["calls"] == own["made"] == 5 and lines[-1]["lost"] == {"filtered": 2}
