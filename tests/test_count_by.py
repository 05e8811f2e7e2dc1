"""`--count-by KEY` on native functions, counted in the kernel: real targets
in C, C++, Rust and Go (those of test_where_native), each fed a known list of
calls and printing each call itself; the session's rows are exactly the
target's own counts by that key, no call is stored, and keys past the
session's maximum are counted in one overflow row so the total stays
exact."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from coral.agentd.countby import COUNT_MAX_KEYS
from tests.harness import CoralEnv, Process, build_go, start_agent, start_colony, tool
from tests.test_native_capture import run_service
from tests.test_where_native import CALLS, GO, Call, _target, parse

# Every call of CALLS three times, so that keys repeat.
FED = CALLS * 3


@dataclass
class Target:
    env: CoralEnv
    service: str
    function: str
    run: Process

    def feed(self, lines: list[str]) -> list[Call]:
        proc = self.run.proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("".join(f"{line}\n" for line in lines).encode())
        proc.stdin.flush()
        return [parse(line, proc.stdout.readline().decode()) for line in lines]

    def count(self, key: str, lines: list[str], *flags: str, local: bool = True,
              live: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any], list[Call]]:
        """Attach with --count-by KEY, make the calls (if `live`, wait for the
        live table to count them all), detach: every JSON line coralctl
        printed, the summary, and the calls as the target printed them."""
        where = ["--local"] if local else []
        p = subprocess.Popen([tool("coralctl"), *where, "--output", "json", "debug", "attach", self.service,
                              "--function", self.function, "--duration", "120s", "--no-save", "--count-by", key,
                              *flags], env=self.env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout is not None
        first = p.stdout.readline()
        if not first:
            raise AssertionError(p.communicate(timeout=30)[1])
        session = json.loads(first)
        assert session["kind"] == "session" and session["config"]["count_by"] == key
        made = self.feed(lines)
        before = []
        while live:
            line = json.loads(p.stdout.readline())
            before.append(line)
            live = not (line["kind"] == "counts" and line["total_calls"] == len(made))
        detached = subprocess.run([tool("coralctl"), *where, "debug", "detach", session["session_id"]],
                                  env=self.env.env, capture_output=True, text=True, timeout=60)
        assert detached.returncode == 0, detached.stderr
        out, _ = p.communicate(timeout=60)
        printed = before + [json.loads(x) for x in out.splitlines()]
        assert printed[-1]["kind"] == "summary"
        assert not [x for x in printed if x["kind"] == "call"]  # counted, never reported
        return printed, printed[-1], made


def rows(summary: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """key -> (calls, errors); the overflow and unread rows as '(other)' and '(unread)'."""
    out = {}
    for r in summary["counts"]:
        name = "(other)" if r["overflow"] else "(unread)" if r["unread"] else r["key"]
        if r["calls"]:
            out[name] = (r["calls"], r["errors"])
    return out


@pytest.fixture(scope="module")
def world(bpf: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoralEnv]:
    # No CPU budget: a target calling as fast as it can is over the default one (10% of one CPU).
    env = CoralEnv.create().with_config("[sessions]\ncpu_budget_percent = 0\n")
    colony = start_colony(env)
    agent = start_agent(env)
    yield env
    agent.stop()
    colony.stop()
    env.remove()


@pytest.fixture(scope="module", params=["c", "c++", "rust"])
def native(request: pytest.FixtureRequest, world: CoralEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    t = _target(world, tmp_path_factory.mktemp(request.param), request.param)
    yield Target(t.env, t.service, t.function, t.run)
    t.run.stop()


def test_count_by_a_string_argument_is_the_targets_own_count(native: Target) -> None:
    _, summary, made = native.count("ref", FED)
    assert rows(summary) == {ref: (n, 0) for ref, n in Counter(c.ref for c in made).items()}
    assert summary["calls"] == len(made)
    assert sum(r["calls"] for r in summary["counts"]) == len(made)
    slow = {r["key"]: r["max_duration_ns"] for r in summary["counts"]}
    assert all(slow[c.ref] >= 30_000_000 for c in made if c.slow)  # each row's own latency


def test_count_by_the_return_value(native: Target) -> None:
    _, summary, made = native.count("ret", FED)
    assert rows(summary) == {str(r): (n, 0) for r, n in Counter(c.ret for c in made).items()}


def test_count_by_a_field_through_a_pointer_and_a_null_one(native: Target) -> None:
    _, summary, made = native.count("order->cents", FED)
    expected = Counter("(unread)" if c.null else str(c.cents) for c in made)
    assert rows(summary) == {k: (n, 0) for k, n in expected.items()}


def test_count_by_with_where_counts_only_the_calls_it_keeps(native: Target) -> None:
    _, summary, made = native.count("ret", FED, "--where", "amount > 0")
    kept = [c for c in made if c.amount > 0]
    assert rows(summary) == {str(r): (n, 0) for r, n in Counter(c.ret for c in kept).items()}
    assert summary["lost"]["filtered"] == len(made) - len(kept)


def test_keys_past_the_maximum_are_one_overflow_row(native: Target) -> None:
    lines = [f"r{i} 1 {i} 0" for i in range(COUNT_MAX_KEYS + 100)]
    _, summary, made = native.count("amount", lines)
    got = rows(summary)
    assert got.pop("(other)") == (100, 0)
    assert len(got) == COUNT_MAX_KEYS
    assert sum(n for n, _ in got.values()) + 100 == len(made) == summary["calls"]
    assert set(got) <= {str(c.amount) for c in made}


def test_through_the_colony_with_a_live_table(native: Target) -> None:
    printed, summary, made = native.count("ref", FED, local=False, live=True)
    expected = {ref: (n, 0) for ref, n in Counter(c.ref for c in made).items()}
    assert rows(summary) == expected
    table = [x for x in printed if x["kind"] == "counts"][-1]
    assert table["count_by"] == "ref" and rows({"counts": table["rows"]}) == expected


@pytest.fixture(scope="module")
def gotarget(world: CoralEnv, go: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    binary = build_go(go, GO, tmp_path_factory.mktemp("go"), "charge_go")
    run = run_service(world, "count-go", binary)
    yield Target(world, "count-go", "main.charge", run)
    run.stop()


def test_go_counts_by_a_string_with_its_errors(gotarget: Target) -> None:
    _, summary, made = gotarget.count("ref", FED)
    expected: dict[str, tuple[int, int]] = {}
    for c in made:
        calls, errors = expected.get(c.ref, (0, 0))
        expected[c.ref] = (calls + 1, errors + c.err)
    assert rows(summary) == expected


def test_bad_keys_get_one_line_pointing_at_the_column(native: Target) -> None:
    def attach(*flags: str) -> list[str]:
        out = subprocess.run([tool("coralctl"), "--local", "debug", "attach", native.service, "--function",
                              native.function, "--duration", "5s", "--no-save", *flags],
                             env=native.env.env, capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        return out.stderr.strip().splitlines()

    # A typing mistake: coralctl's own usage error, its last line pointing at the column.
    assert attach("--count-by", "ret ==")[-1] == \
        "coralctl debug attach: error: argument --count-by: 'ret ==', column 5: unexpected '=='"
    # What the agent refuses: one line, naming the column.
    for key, message in (("nosuch", "column 1: "),
                         ("order->nosuch", "column 1: "),
                         ("duration", "column 1: duration is what each row measures, not a key")):
        lines = attach("--count-by", key)
        assert len(lines) == 1 and f"--count-by '{key}', {message}" in lines[0], lines
        assert key != "nosuch" or "has no argument 'nosuch'; its arguments are: ref, order, amount" in lines[0]
    lines = attach("--count-by", "ret", "--capture-args")
    assert len(lines) == 1 and "--count-by counts every call and reports none: leave out --capture-args" in lines[0]


BUSY = r"""
// Each input line "N": N calls of tally(i % 7) as fast as it can go, then its own count per kind.
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) int tally(int kind)
{
    __asm__ volatile("" ::: "memory");
    return kind * 2;
}
int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        long n = atol(line), seen[7] = {0};
        for (long i = 0; i < n; i++)
            seen[tally((int)(i % 7)) / 2]++;
        for (int k = 0; k < 7; k++)
            printf("%d %ld%c", k, seen[k], k == 6 ? '\n' : ' ');
    }
    return 0;
}
"""


def test_at_the_highest_rate_every_call_is_counted_and_none_stored(world: CoralEnv,
                                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """A target calling as fast as it can (a few hundred thousand calls a
    second under the probes here): the rows are its own counts, exactly,
    and no call is stored."""
    tmp = tmp_path_factory.mktemp("busy")
    (tmp / "busy.c").write_text(BUSY)
    subprocess.run(["gcc", "-g", "-O1", "-o", str(tmp / "busy"), str(tmp / "busy.c")], check=True)
    run = run_service(world, "count-busy", tmp / "busy")
    try:
        target = Target(world, "count-busy", "tally", run)
        n = 500_000
        p = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "count-busy",
                              "--function", "tally", "--duration", "120s", "--no-save", "--count-by", "kind"],
                             env=world.env, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        session = json.loads(p.stdout.readline())
        proc = target.run.proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{n}\n".encode())
        proc.stdin.flush()
        own = proc.stdout.readline().decode().split()
        expected = {own[i]: (int(own[i + 1]), 0) for i in range(0, len(own), 2)}
        subprocess.run([tool("coralctl"), "--local", "debug", "detach", session["session_id"]], env=world.env,
                       check=True, capture_output=True, timeout=60)
        out, _ = p.communicate(timeout=60)
        summary = json.loads(out.splitlines()[-1])
        assert rows(summary) == expected
        assert summary["calls"] == n and sum(r["calls"] for r in summary["counts"]) == n
        ended = json.loads(subprocess.run([tool("coralctl"), "--local", "--output", "json", "debug", "sessions"],
                                          env=world.env, capture_output=True, text=True, timeout=60).stdout.splitlines()[-1])
        assert ended["session_id"] == session["session_id"] and ended["calls"] == 0  # none stored
    finally:
        run.stop()
