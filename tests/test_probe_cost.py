"""Durations are honest: the agent measures how much of a call's
duration is the probes' own cost for each kind of first instruction and
return mechanism, the first time a session needs it; a session carries
the figure for its function, coralctl's summary states it, and --subtract-probe-cost takes
it out of every duration and figure."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from coral.agentd.probecost import entry_kind
from coral.ctl import render
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, NativeService, Process, coralctl, start_attach

SOURCE = r"""
// Each input line N: N calls of quick().
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) long quick(long a)
{
    __asm__ volatile("" ::: "memory");
    return a * 3;
}

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        long n = atol(line), sum = 0;
        for (long i = 0; i < n; i++)
            sum += quick(i);
        printf("done %ld sum %ld\n", n, sum);
    }
    return 0;
}
"""


@pytest.mark.parametrize(("code", "kind"), [
    (b"\x55\x48\x89\xe5", "push"), (b"\x41\x57\x41\x56", "push"), (b"\x90\x90", "nop"),
    (b"\x0f\x1f\x44\x00\x00", "nop5"), (b"\xf3\x0f\x1e\xfa", "endbr64"), (b"\x48\x8d\x07", "other"),
    (b"\x48\x0f\xaf\xf2", "other"), (b"", "other"),
])
def test_first_instructions_are_told_apart(code: bytes, kind: str) -> None:
    assert entry_kind(code) == kind


def test_subtracting_never_goes_below_zero() -> None:
    session = pb.DebugSession(total_calls=2, sum_duration_ns=3000, max_duration_ns=2000, histogram={1: 2},
                              probe_cost_ns=1200)
    kept, cut = render.summarize_session(session, []), render.summarize_session(session, [], subtract=True)
    assert (kept.avg_ns, kept.max_ns, kept.probe_cost_subtracted) == (1500, 2000, False)
    assert (cut.avg_ns, cut.max_ns, cut.p50_ns, cut.probe_cost_ns, cut.probe_cost_subtracted) == (300, 800, 0, 1200, True)
    assert render.without_probe_cost(1000, session) == 0


@pytest.mark.parametrize(("opt", "kind"), [("-O0", "push"), ("-O2", "other")])
def test_a_session_carries_the_probe_cost_the_agent_measured(
    coral_env: CoralEnv, agent: Process, tmp_path: Path, opt: str, kind: str
) -> None:
    """-O0 starts quick() with an emulated `push %rbp`, -O2 with a
    single-stepped instruction: each session carries the agent's own figure
    for its pair (measured then, and only that pair), the summary says it, and --subtract-probe-cost takes exactly
    that out of each call's duration."""
    (tmp_path / "quick.c").write_text(SOURCE)
    binary = tmp_path / "quick"
    subprocess.run(["gcc", opt, "-g", "-o", str(binary), str(tmp_path / "quick.c")], check=True)
    def measured() -> dict[str, int]:
        ping = json.loads(coralctl(coral_env, "--local", "ping", "--output", "json").stdout)["counters"]
        return {k: v for k, v in ping.items() if k.startswith("kernel.probe_cost_ns.")}

    assert measured() == {}  # nothing until a session needs it
    svc = NativeService(coral_env, binary, service="quick")
    try:
        attach, first = start_attach(coral_env, "quick", "quick", "--local", "--duration", "2s", "--no-save")
        assert (first["entry_instruction"], first["return_probe"]) == (kind, "uretprobe")
        assert measured() == {f"kernel.probe_cost_ns.{kind}.uretprobe": first["probe_cost_ns"]}
        assert first["probe_cost_ns"] > 0
        assert svc.call(20) == "done 20 sum 570"
        out, _ = attach.communicate(timeout=60)
        summary = json.loads(out.splitlines()[-1])
        assert (summary["probe_cost_ns"], summary["probe_cost_subtracted"]) == (first["probe_cost_ns"], False)
        sid, cost = first["session_id"], first["probe_cost_ns"]

        def durations(*flags: str) -> list[int]:
            got = coralctl(coral_env, "--local", "--output", "json", "debug", "events", sid, *flags)
            assert got.returncode == 0, got.stderr
            return [json.loads(line)["duration_ns"] for line in got.stdout.splitlines() if '"kind":"call"' in line]

        raw, cut = durations(), durations("--subtract-probe-cost")
        assert len(raw) == 20 and cut == [max(0, d - cost) for d in raw]
        text = coralctl(coral_env, "--local", "debug", "events", sid).stdout
        assert f"of each duration is the probes' own (entry on {render.ENTRY_KINDS[kind]}, return by uretprobe, " \
               "measured by the agent); --subtract-probe-cost takes it out" in text, text
        text = coralctl(coral_env, "--local", "debug", "events", sid, "--subtract-probe-cost").stdout
        assert "taken out above, not in the histogram" in text, text
    finally:
        svc.stop()
