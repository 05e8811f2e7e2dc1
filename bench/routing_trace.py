"""Where an attach's time goes: bench/routing.py's colony, simulated agents
and clients for one run, each stage of every AttachUprobe and DetachUprobe
stamped with CLOCK_MONOTONIC (one clock for every process here), and the
median time between stages printed.

Nothing in the daemons changes: the colony and the simulator run under a
wrapper that wraps a few of their functions with stamps (as routing_cpu.py
runs the colony under cProfile), so the stamps cost nothing when not traced.
The stamps cost some time of their own: compare the end-to-end figure with
bench/routing.py's.

    .venv/bin/python bench/routing_trace.py [--agents 1000] [--clients 8] [--seconds 10] [--pin]

--pin: the colony on one CPU, the bench on the others (as bench/routing.py --pin).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zmq

from bench.routing import pin, pinned_cpus, wait_for_agents
from coral.daemon.client import Client
from coral.daemon.errors import CoralError
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, start_colony

# The colony under stamps. Each request is known by (method, session id);
# the agent's request by its request id, the client's reply by the
# client's request id, an audit append by the journal's batch number.
COLONY = r"""
import collections, json, sys, time
from coral.colonyd import journal, main as colony_main, routing, broker as broker_mod, writer as writer_mod
ns = time.monotonic_ns
out, sys.argv = sys.argv[1], sys.argv[2:]
import os
running = [0]  # the journal batch the thread is on
orig_fdatasync = os.fdatasync
def fdatasync(fd):
    batches.setdefault(running[0], {})["sync"] = ns()
    orig_fdatasync(fd)
    batches[running[0]]["synced"] = ns()  # before the thread has the GIL back
os.fdatasync = fdatasync
T = {}          # (method, session) -> {stage: ns}
by_agent_rid = {}   # agent request id -> key
by_client_rid = {}  # client request id -> key
batches = {}    # journal batch -> {stage: ns}
current = {}    # the message the loop is on: "front"/"back" -> ns at the handler's entry
TRACED = ("AttachUprobe", "DetachUprobe")

def stamp(key, stage, t=None):
    T.setdefault(key, {}).setdefault(stage, t if t is not None else ns())

orig_front, orig_back = colony_main.Colony.on_frontend, colony_main.Colony.on_backend
def on_frontend(self, now):
    current["front"] = ns()
    return orig_front(self, now)
def on_backend(self, now):
    current["back"] = ns()
    return orig_back(self, now)
colony_main.Colony.on_frontend, colony_main.Colony.on_backend = on_frontend, on_backend

orig_send = routing.Router.send
def send(self, agent, method, request, now, gather, pull=None, held=0.0):
    o = orig_send(self, agent, method, request, now, gather, pull, held)
    if gather is not None and method in TRACED:
        key = (method, request.session_id)
        stamp(key, "front", current.get("front"))
        stamp(key, "routed")
        by_agent_rid[o.request_id] = key
        by_client_rid[gather.client_request_id] = key
    return o
routing.Router.send = send

orig_handle_reply = broker_mod.Broker.handle_reply
def handle_reply(self, frame, now):
    key = by_agent_rid.pop(frame.request_id, None)
    if key is not None:
        stamp(key, "back", current.get("back"))
        stamp(key, "decoded")
    return orig_handle_reply(self, frame, now)
broker_mod.Broker.handle_reply = handle_reply

orig_send_now = colony_main.Colony._send_now
def send_now(self, m):
    orig_send_now(self, m)
    if m.socket == "backend" and m.request_id:
        key = by_agent_rid.get(m.request_id)
        if key is not None:
            stamp(key, "to_agent")
    elif m.socket == "frontend" and len(m.frames) >= 4:
        key = by_client_rid.pop(m.frames[-3], None)
        if key is not None:
            stamp(key, "replied")
            T[key]["written_then"] = self.store.journal.written
colony_main.Colony._send_now = send_now

class Waiting(collections.deque):
    def append(self, item):
        batch, m = item
        key = by_client_rid.get(m.frames[-3]) if len(m.frames) >= 4 else None
        if key is not None:
            stamp(key, "held")
            T[key]["batch"] = batch
        super().append(item)

orig_init = colony_main.Colony.__init__
def init(self, config):
    orig_init(self, config)
    self._waiting = Waiting()
    j = self.store.journal
    orig_submit = j._writer.submit
    def submit(job):
        batch = j.submitted  # behind() and covered() count a batch, then submit it
        batches.setdefault(batch, {})["submit"] = ns()
        def run():
            running[0] = batch
            batches[batch]["start"] = ns()
            job()
            batches[batch]["done"] = ns()
        orig_submit(run)
    j._writer.submit = submit
    orig_on_written = j.on_written
    def on_written(wait=False):
        before = j.written
        n = orig_on_written(wait)
        t = ns()
        for b in range(before + 1, n + 1):
            batches.setdefault(b, {})["seen"] = t
        return n
    j.on_written = on_written
colony_main.Colony.__init__ = init

try:
    colony_main.main()
finally:
    with open(out, "w") as f:
        json.dump({"requests": [[k[0], k[1], v] for k, v in T.items()], "batches": batches}, f)
"""

# The simulator under stamps: when it has read a request, and when it replies.
SIMULATOR = r"""
import json, sys, time
from coral.daemon import wire
from coral.proto import coral_pb2 as pb
ns = time.monotonic_ns
out = sys.argv.pop(1)
T = {}
orig_parse, orig_reply = wire.parse_body, wire.encode_reply
def parse_body(cls, body):
    r = orig_parse(cls, body)
    if cls in (pb.AttachUprobeRequest, pb.DetachUprobeRequest):
        T.setdefault(cls.__name__[:-len("UprobeRequest")] + "|" + r.session_id, {})["agent_in"] = ns()
    return r
def encode_reply(request_id, response, *a, **k):
    if isinstance(response, (pb.AttachUprobeResponse, pb.DetachUprobeResponse)):
        T.setdefault(type(response).__name__[:-len("UprobeResponse")] + "|" + response.session.session_id, {})["agent_out"] = ns()
    return orig_reply(request_id, response, *a, **k)
wire.parse_body, wire.encode_reply = parse_body, encode_reply
sys.path.insert(0, sys.argv[1].rsplit("/", 1)[0])
import runpy
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
finally:
    with open(out, "w") as f:
        json.dump(T, f)
"""

# (label, from stage, to stage), in order. Medians do not add up to the
# median of the whole; "hand-over" includes waiting for the append before.
STAGES = [
    ("client send -> colony loop takes it", "client_send", "front"),
    ("colony: recv, decode, check, route", "front", "routed"),
    ("colony: -> sent to agent (rest of the turn)", "routed", "to_agent"),
    ("agent: wake-up, recv, decode", "to_agent", "agent_in"),
    ("agent: handle, encode", "agent_in", "agent_out"),
    ("agent reply -> colony loop takes it", "agent_out", "back"),
    ("colony: recv, decode, session, row, hand-over", "back", "submit"),
    ("journal thread: wake-up", "submit", "start"),
    ("journal thread: append", "start", "sync"),
    ("journal thread: fdatasync", "sync", "synced"),
    ("journal thread: has the GIL back, signals", "synced", "done"),
    ("colony loop sees the append done", "done", "seen"),
    ("colony: -> reply sent", "seen", "replied"),
    ("reply -> client has it", "replied", "client_done"),
]


def drive(endpoint: str, agents: int, clients: int, seconds: float) -> dict[str, dict[str, int]]:
    stamps: dict[str, dict[str, int]] = {}
    stop_at = time.monotonic() + seconds

    def run(k: int) -> None:
        rng = random.Random(k)
        with Client(endpoint, 30, zmq.Context.instance()) as c:
            while time.monotonic() < stop_at:
                service = f"svc-{rng.randrange(agents):04d}"
                try:
                    t0 = time.monotonic_ns()
                    reply = c.call("AttachUprobe", pb.AttachUprobeRequest(service=service, function="f", duration_ms=60_000))
                    t1 = time.monotonic_ns()
                    sid = reply.session.session_id  # type: ignore[attr-defined]
                    stamps[f"Attach|{sid}"] = {"client_send": t0, "client_done": t1}
                    t2 = time.monotonic_ns()
                    c.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid))
                    stamps[f"Detach|{sid}"] = {"client_send": t2, "client_done": time.monotonic_ns()}
                except CoralError:
                    pass

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stamps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--pin", action="store_true", help="the colony on one CPU, the bench on the others")
    args = ap.parse_args()
    colony_cpus, bench_cpus = pinned_cpus() if args.pin else (set(), set())  # before anything starts
    tmp = Path(tempfile.mkdtemp(prefix="routing-trace-"))
    env = CoralEnv.create()
    colony = start_colony(env, (sys.executable, "-c", COLONY, str(tmp / "colony.json")))
    if args.pin:
        pin(colony.pid, colony_cpus)
        pin(os.getpid(), bench_cpus)
    sim = subprocess.Popen(
        [sys.executable, "-c", SIMULATOR, str(tmp / "sim.json"), str(Path(__file__).with_name("routing.py")),
         "--simulate", str(args.agents), env.endpoint("colony/colony-backend.sock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_agents(sim, env, args.agents)
        load = os.getloadavg()[0]
        stamps = drive(env.endpoint("colony/colony.sock"), args.agents, args.clients, args.seconds)
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
        colony.stop()
        env.remove()
    colony_t = json.loads((tmp / "colony.json").read_text())
    sim_t = json.loads((tmp / "sim.json").read_text())
    shutil.rmtree(tmp)
    batches = {int(b): v for b, v in colony_t["batches"].items()}
    for method, sid, v in colony_t["requests"]:
        key = f"{method[:-len('Uprobe')]}|{sid}"
        if key in stamps:
            stamps[key].update(v)
            if "batch" in v:
                stamps[key].update(batches.get(v["batch"], {}))
    for key, v in sim_t.items():
        if key in stamps:
            stamps[key].update(v)
    print(f"load {load:.2f}; {args.agents} agents, {args.clients} clients, {args.seconds:g}s")
    for method in ("Attach", "Detach"):
        rows = [v for k, v in stamps.items() if k.startswith(method + "|")]
        whole = [(v["client_done"] - v["client_send"]) / 1e6 for v in rows]
        print(f"\n{method}Uprobe: {len(rows):,} requests, median {statistics.median(whole):.3f} ms end to end")
        for label, a, b in STAGES:
            d = [(v[b] - v[a]) / 1e6 for v in rows if a in v and b in v]
            if d:
                p90 = statistics.quantiles(d, n=10)[8]
                print(f"  {label:<48} {statistics.median(d):7.3f} ms  (p90 {p90:6.3f}, n={len(d):,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
