"""--count-by on a Python function, end to end: the SDK counts each call
by its key and the record carries only the COUNTED flag, so the kernel
counts the call and nothing is sent; the rows come back with the
DisarmFunction answer. Exact against the service's own counts (the shop
of tests/test_python_where.py)."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import CoralEnv, Process, tool
from tests.test_native_e2e import records, wait_for_service
from tests.test_python_where import MIXED, SERVICE, Call, Shop, attach, shop

__all__ = ["shop"]


def counted(env: CoralEnv, shop: Shop, calls: list[Call], key: str, *options: str) -> tuple[dict[str, Any], dict[str, Any]]:
    p = attach(env, "--count-by", key, *options, capture=False)
    own = shop.run(calls)
    out, _ = p.communicate(timeout=60)
    lines = records(out)
    assert own["escaped"] == [] and own["made"] == len(calls), own
    assert not [x for x in lines if x["kind"] == "call"]
    return lines[-1], own


def rows(summary: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {("(other)" if r["overflow"] else "(unread)" if r["unread"] else r["key"]): (r["calls"], r["errors"])
            for r in summary["counts"]}


def test_counts_by_an_argument_with_errors_exactly(coral_env: CoralEnv, shop: Shop) -> None:
    summary, _ = counted(coral_env, shop, MIXED, "network")
    expected: dict[str, tuple[int, int]] = {}
    for c in MIXED:
        calls, errors = expected.get(c.network, (0, 0))
        expected[c.network] = (calls + 1, errors + bool(c.raised))
    assert rows(summary) == expected
    assert summary["calls"] == len(MIXED) and summary["lost"] == {}


def test_counts_by_an_attribute_and_by_ret_with_where(coral_env: CoralEnv, shop: Shop) -> None:
    summary, _ = counted(coral_env, shop, MIXED, "req.currency")
    assert rows(summary) == {k: (n, sum(1 for c in MIXED if c.currency == k and c.raised))
                             for k, n in Counter(c.currency for c in MIXED).items()}
    summary, _ = counted(coral_env, shop, MIXED, "ret", "--where", "amount >= 0")
    kept = [c for c in MIXED if c.amount >= 0]
    expected = Counter("(unread)" if c.raised else str(c.amount * 2) for c in kept)  # a call that raised has no ret
    assert rows(summary) == {k: (n, n if k == "(unread)" else 0) for k, n in expected.items()}
    assert summary["lost"] == {"filtered": len(MIXED) - len(kept)}


def test_a_redacted_key_is_refused(coral_env: CoralEnv, shop: Shop) -> None:
    out = subprocess.run([tool("coralctl"), "debug", "attach", SERVICE, "--function", "shop.charge", "--count-by",
                          "req.card_number"], env=coral_env.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.strip().endswith(
        "--count-by 'req.card_number', column 1: 'card_number' is redacted; a key on it would reveal it"), out.stderr


@pytest.fixture
def fast_shop(coral_env: CoralEnv, colony: Process, full_speed_agent: Process, tmp_path: Path) -> Iterator[Shop]:
    """The shop, with an agent that has no CPU budget: calls as fast as a loop goes are over the default one."""
    s = Shop(coral_env, tmp_path)
    wait_for_service(coral_env, SERVICE)
    yield s
    s.stop()


def test_at_the_highest_rate_every_call_is_counted_and_none_stored(coral_env: CoralEnv, fast_shop: Shop) -> None:
    """The shop calling as fast as its loop goes: the rows are its own counts, exactly, and nothing is stored."""
    shop = fast_shop
    calls = [Call(i % 5, network=("visa", "amex", "jcb")[i % 3]) for i in range(30_000)]
    p = subprocess.Popen([tool("coralctl"), "--output", "json", "debug", "attach", SERVICE, "--function", "shop.charge",
                          "--duration", "60s", "--count-by", "network"], env=coral_env.env, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None
    session = json.loads(p.stdout.readline())
    own = shop.run(calls)
    subprocess.run([tool("coralctl"), "debug", "detach", session["session_id"]], env=coral_env.env, check=True,
                   capture_output=True, timeout=60)
    out, _ = p.communicate(timeout=60)
    lines = records(out)
    summary = lines[-1]
    assert own["made"] == len(calls) and not [x for x in lines if x["kind"] == "call"]
    assert rows(summary) == {k: (n, 0) for k, n in Counter(c.network for c in calls).items()}
    assert summary["calls"] == len(calls) and summary["lost"] == {}
    shown = subprocess.run([tool("coralctl"), "--output", "json", "debug", "sessions"], env=coral_env.env,
                           capture_output=True, text=True, timeout=60)
    ended = next(json.loads(x) for x in shown.stdout.splitlines() if session["session_id"] in x)
    assert ended["calls"] == 0 and ended["total_calls"] == len(calls)  # none stored


def test_the_table_is_live(coral_env: CoralEnv, fast_shop: Shop) -> None:
    """While the session runs, a counts line with every call the shop made (the agent asks the SDK each second)."""
    p = subprocess.Popen([tool("coralctl"), "--output", "json", "debug", "attach", SERVICE, "--function", "shop.charge",
                          "--duration", "60s", "--count-by", "network"], env=coral_env.env, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None
    session = json.loads(p.stdout.readline())
    own = fast_shop.run(MIXED)
    while True:
        line = json.loads(p.stdout.readline())
        assert line["kind"] == "counts", line
        if sum(r["calls"] for r in line["rows"]) == own["made"]:
            break
    assert rows({"counts": line["rows"]}) == {k: (n, sum(1 for c in MIXED if c.network == k and c.raised))
                                              for k, n in Counter(c.network for c in MIXED).items()}
    subprocess.run([tool("coralctl"), "debug", "detach", session["session_id"]], env=coral_env.env, check=True,
                   capture_output=True, timeout=60)
    p.communicate(timeout=60)
