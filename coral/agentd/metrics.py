"""The agent's /metrics families (docs/reliability.md, "Metrics"), built by
the loop once per heartbeat from what `coralctl ping` shows and the
sessions' call counts. Counts only: the labels are statuses, causes,
methods and counter names, never a service, function, process or value."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coral.agentd.sessions import DETACHED, EXPIRED, FAILED
from coral.daemon.metrics import Family, Snapshot, one

if TYPE_CHECKING:
    from coral.agentd.main import Agent

P = "coral_agent"
# Every cause a session's lost map can name (docs/json.md), shown from 0.
LOST_CAUSES = ("sampled", "filtered", "ringbuf_full", "unreadable", "unwound", "too_deep", "tail_call", "max_events",
               "storage", "rate")
ENDED_STATUSES = (EXPIRED, DETACHED, FAILED)
# Ping counters that have a family of their own below; the others are
# coral_agent_ping_counter{name="..."}.
OWN_FAMILY = frozenset({"sessions.active", "processes", "colony.connected", "kernel.trap_ns", "kernel.attached_probes",
                        "storage.failing", "storage.write_failures", "storage.held_calls", "storage.pending_calls",
                        "followers.held"})


def agent_snapshot(agent: Agent) -> Snapshot:
    counters = agent.counters_now()
    sessions = agent.sessions
    calls, lost = sessions.call_totals()
    ended = {status: 0 for status in ENDED_STATUSES} | dict(sessions.totals.ended)
    return (
        one(f"{P}_sessions_active", "gauge", "Sessions running now", len(sessions.active)),
        one(f"{P}_sessions_starting", "gauge", "Attaches waiting for their processes' answers", len(sessions.starting)),
        Family(f"{P}_sessions_ended", "counter", "Sessions ended in this run, by status", ended, "status"),
        one(f"{P}_calls", "counter",
            "Calls the kernel saw return while their session ran (this run's sessions; sampled and filtered ones too)",
            calls),
        one(f"{P}_calls_stored", "counter", "Calls handed to agent.duckdb and taken (written, or held while it "
            "cannot be written)", sessions.totals.stored),
        Family(f"{P}_calls_lost", "counter", "Calls not kept, by cause (a session's lost map)",
               {cause: 0 for cause in LOST_CAUSES} | dict(lost), "cause"),
        one(f"{P}_probe_hit_cost_seconds", "gauge", "What one uprobe hit costs here, as measured at start (CPU "
            "budgets charge it)", counters["kernel.trap_ns"] / 1e9),
        one(f"{P}_probes_attached", "gauge", "Uprobes attached now", counters["kernel.attached_probes"]),
        one(f"{P}_storage_failing", "gauge", "1 while agent.duckdb cannot be written", counters["storage.failing"]),
        one(f"{P}_storage_write_failures", "counter", "Writes to agent.duckdb that failed",
            counters["storage.write_failures"]),
        one(f"{P}_storage_held_calls", "gauge", "Calls held in memory while agent.duckdb cannot be written",
            counters["storage.held_calls"]),
        one(f"{P}_pending_calls", "gauge", "Calls read from the ring buffer, waiting to be written",
            counters["storage.pending_calls"]),
        one(f"{P}_deferred_questions", "gauge", "Questions for calls waiting for the ingest budget to refill",
            agent.deferred_questions),
        one(f"{P}_followers_waiting", "gauge", "Followers' questions held until their session has news",
            counters.get("followers.held", 0)),
        one(f"{P}_process_questions_waiting", "gauge", "Questions sent to registered processes, not answered yet",
            agent.calls.waiting),
        one(f"{P}_processes", "gauge", "Registered processes", counters["processes"]),
        one(f"{P}_colony_connected", "gauge", "1 while the link to the colony is up", counters["colony.connected"]),
        Family(f"{P}_ping_counter", "gauge", "Every other counter `coralctl ping` shows, by its name",
               {name: value for name, value in counters.items() if name not in OWN_FAMILY}, "name"),
    )


__all__ = ["agent_snapshot"]
