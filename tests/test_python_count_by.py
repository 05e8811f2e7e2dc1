"""--count-by on a Python function, end to end: the SDK counts each call
by its key and the record carries only the COUNTED flag, so the kernel
counts the call and nothing is sent; the rows come back with the
DisarmFunction answer. Exact against the service's own counts (the shop
of tests/test_python_where.py)."""

from __future__ import annotations

import subprocess
from collections import Counter
from typing import Any

from tests.harness import CoralEnv, tool
from tests.test_native_e2e import records
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
