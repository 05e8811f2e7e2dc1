"""Markdown tables for the benchmark scripts."""

from __future__ import annotations

import os
from typing import Any

from tests.harness import CoralEnv

FULL_SPEED = ("[sessions]\nmax_events_per_session = 100000000\ncpu_budget_percent = 0\n"
              "[agent]\ningest_cpu_percent = 0\n")  # every call measured and stored, none cut


def full_speed_env() -> CoralEnv:
    """A fresh environment whose agent has no CPU budget and no ingest cap."""
    env = CoralEnv.create()
    (env.root / "bin").mkdir(parents=True)
    config = env.root / "bench.toml"
    config.write_text(FULL_SPEED)
    env.env["CORAL_CONFIG"] = str(config)
    return env


def cpu_seconds(pid: int) -> float:
    """A process's user and system CPU so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


SUSTAINED_HEADER = ["asked calls/s", "achieved calls/s", "calls in kernel", "calls stored", "not stored, by cause",
                    "stored + not stored = calls"]


def sustained_row(asked: str, ns_per_call: float, calls: int, session: Any) -> list[str]:
    """One row of a sustained-rate table, from the ended session's counts."""
    lost = dict(session.lost)
    return [asked, f"{1e9 / ns_per_call:,.0f}" if ns_per_call else "0", f"{session.total_calls:,}", f"{session.calls:,}",
            ", ".join(f"{n:,} {cause}" for cause, n in sorted(lost.items())) or "0",
            "yes" if session.calls + sum(lost.values()) == session.total_calls == calls else "NO"]
