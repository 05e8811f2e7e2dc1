"""The colony's /metrics families (docs/reliability.md, "Metrics"), built
by the loop once per heartbeat from what `coralctl ping` shows. Counts
only: the labels are statuses, methods and counter names, never an
agent, service, function, user or value."""

from __future__ import annotations

from coral.colonyd.broker import Broker
from coral.colonyd.sessions import ACTIVE, FAILED, LOST
from coral.daemon.metrics import Family, Snapshot, one

P = "coral_colony"
ENDED_STATUSES = ("expired", "detached", FAILED, LOST)
# Ping counters that have a family of their own below; the others are
# coral_colony_ping_counter{name="..."}.
OWN_FAMILY = frozenset({"agents", "sessions.open", "pulled_calls", "followers.held", "storage.failing",
                        "storage.write_failures", "storage.held_audit_rows", "storage.held_sessions",
                        "storage.held_calls", "storage.calls_dropped", "storage.journal_failures"})


def colony_snapshot(broker: Broker) -> Snapshot:
    counters = broker.counters_now()
    store = broker.store
    pending = broker.pending.values()
    return (
        one(f"{P}_sessions_active", "gauge", "Sessions running on their agents now",
            sum(s.status == ACTIVE for s in broker.open.values())),
        one(f"{P}_sessions_open", "gauge", "Sessions still pulled from their agents (running, or last calls to come)",
            counters["sessions.open"]),
        Family(f"{P}_sessions_ended", "counter", "Sessions whose every call is here, by status (this run)",
               {status: 0 for status in ENDED_STATUSES} | broker.ended, "status"),
        one(f"{P}_agents_connected", "gauge", "Agents connected now", counters["agents"]),
        one(f"{P}_calls_pulled", "counter", "Calls pulled from agents and kept (each once)",
            counters.get("pulled_calls", 0)),
        one(f"{P}_audit_rows", "counter", "Audit rows recorded (folded floods count as one row each)",
            broker.audit.recorded),
        one(f"{P}_storage_failing", "gauge", "1 while colony.duckdb cannot be written", counters["storage.failing"]),
        one(f"{P}_storage_write_failures", "counter", "Writes to colony.duckdb that failed",
            counters["storage.write_failures"]),
        Family(f"{P}_storage_held", "gauge", "Rows waiting to be written to colony.duckdb (the writer's backlog), "
               "by kind", {"audit_rows": counters["storage.held_audit_rows"],
                           "sessions": counters["storage.held_sessions"],
                           "calls": counters["storage.held_calls"]}, "kind"),
        one(f"{P}_storage_calls_dropped", "counter", "Calls dropped while colony.duckdb could not be written",
            counters["storage.calls_dropped"]),
        one(f"{P}_journal_pending_entries", "gauge", "Journal entries not yet handed to its thread",
            store.journal.pending_entries),
        one(f"{P}_journal_failures", "counter", "Journal appends that failed", counters["storage.journal_failures"]),
        one(f"{P}_agent_requests_waiting", "gauge", "Requests sent to agents, not answered yet (pulls included)",
            len(pending)),
        one(f"{P}_pulls_outstanding", "gauge", "Pulls of calls sent to agents, not answered yet",
            sum(p.gather is None and p.method == "QueryUprobeEvents" for p in pending)),
        one(f"{P}_followers_waiting", "gauge", "Followers' questions held until their session has news",
            counters.get("followers.held", 0)),
        Family(f"{P}_ping_counter", "gauge", "Every other counter `coralctl ping` shows, by its name",
               {name: value for name, value in counters.items() if name not in OWN_FAMILY}, "name"),
    )
