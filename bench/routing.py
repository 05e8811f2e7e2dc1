"""Routing: attach latency through one real colony with many agents.

The agents are simulated: one process holds a DEALER socket per agent and
speaks the real worker protocol (READY with one service each, heartbeats
when it has sent nothing else for a second,
REPLY to AttachUprobe, DetachUprobe and the colony's event pulls
(QueryUprobeEvents, no events) with a session as a real agent would: a
pull with wait_ms on a running session is held until the session ends or
the wait is over).
No BPF is involved: this measures the colony's routing, bookkeeping and audit,
not probes. The baseline is the same colony with one agent, in the same run.

    .venv/bin/python bench/routing.py [--agents 1000] [--clients 1 8] [--seconds 10] [--repeats 3] [--pin]

--pin runs the colony on one CPU and the bench (clients and simulated
agents) on the others, so that the colony's figures are its own on one
CPU, not shared with the apparatus that measures it (real agents and
clients run on other hosts).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zmq
from zmq.backend import zmq_poll

from bench.report import table
from coral.daemon import wire
from coral.daemon.client import Client
from coral.daemon.errors import CoralError, NotFound
from coral.daemon.server import recv_frames
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, start_colony

HEARTBEAT_SECONDS = 1.0  # the colony's default [colony] heartbeat_interval
BEAT_SLICES = 50  # the simulated agents' heartbeats go out in this many groups a second

# The simulator's socket calls, without pyzmq's Python layer: its
# send_multipart, recv_multipart and getsockopt(EVENTS) make enums of flags
# and options on every frame and call (enum's __call__, __or__ and __and__
# were half of the simulator's CPU under cProfile). The same frames go out.
_send = zmq.backend.Socket.send
_POLLIN, _MORE, _NOBLOCK = int(zmq.POLLIN), int(zmq.SNDMORE), int(zmq.NOBLOCK)


def _send_frames(s: zmq.Socket[bytes], frames: list[bytes], flags: int = 0) -> None:
    """send_multipart(frames, flags), as it sends them."""
    for frame in frames[:-1]:
        _send(s, frame, flags | _MORE)
    _send(s, frames[-1], flags)


def simulate_agents(endpoint: str, count: int) -> None:
    """Run `count` agents until SIGTERM; print one line once all are READY.

    The sockets are watched with epoll on their ZMQ_FD, not zmq.Poller: a
    zmq_poll over 1,000 sockets costs about 0.7 ms of CPU, paid for every
    wake-up, and this process shares the machine with the colony it
    measures (it took 0.6 CPU of 2 with 1,000 agents, 0.15 with one).
    ZMQ_FD only says that a socket's state may have changed: each socket it
    names, and each socket used since, is asked ZMQ_EVENTS (one zmq_poll
    of just those sockets) until it has nothing more to read."""
    context = zmq.Context()
    sockets: dict[zmq.Socket[bytes], int] = {}
    by_fd: dict[int, zmq.Socket[bytes]] = {}
    epoll = select.epoll()
    for i in range(count):
        s = context.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        hello = pb.AgentHello(
            agent_id=f"sim-{i:04d}",
            hostname=f"host-{i:04d}",
            version="sim",
            heartbeat_interval_ms=int(HEARTBEAT_SECONDS * 1000),
            services=[pb.ServiceInstance(service=f"svc-{i:04d}", pid=10_000 + i, kind="native", agent_id=f"sim-{i:04d}")],
        )
        s.send_multipart(wire.encode_ready(hello))
        sockets[s] = i
        fd = int(s.getsockopt(zmq.FD))
        by_fd[fd] = s
        epoll.register(fd, select.EPOLLIN)
    print("ready", flush=True)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sessions: dict[str, pb.DebugSession] = {}
    # Held pulls, by session id, oldest first: (socket, request id, cursor,
    # when the wait is over). As a real agent does (docs/protocol.md,
    # "Pulling calls"), a held pull is answered when its session has news
    # (here: it ended) or its wait_ms is over, not at once: answered at
    # once, each held pull cost the colony a second pull after the detach.
    held: dict[str, tuple[zmq.Socket[bytes], bytes, int, float]] = {}
    # When each agent last sent anything: as a real agent does (docs/protocol.md,
    # "Heartbeats"), one beats only when it has sent nothing else for an interval.
    last_sent = dict.fromkeys(sockets, time.monotonic())

    def reply(s: zmq.Socket[bytes], frames: list[bytes]) -> None:
        _send_frames(s, frames)
        last_sent[s] = time.monotonic()
        used.append(s)

    def answer_pull(s: zmq.Socket[bytes], request_id: bytes, session_id: str, cursor: int) -> None:
        session = sessions[session_id]
        if session.status != "active":
            del sessions[session_id]  # its last (empty) page: the colony is done with it
        reply(s, wire.encode_reply(request_id, pb.QueryUprobeEventsResponse(session=session, next_cursor=cursor)))

    request_command = bytes([wire.Command.REQUEST])

    def answer(s: zmq.Socket[bytes], frames: list[bytes]) -> None:
        if len(frames) == 6 and frames[1] == wire.HEADER and frames[2] == request_command:
            # A request from the colony, [delimiter, header, command, id,
            # method, body], taken apart here: wire.decode's checks and its
            # frozen Frame were a sixth of this process's time under
            # cProfile, and this is the simulator, not the colony under test.
            name, request_id, body = frames[4], frames[3], frames[5]
        else:
            try:
                frame = wire.decode(frames)
            except wire.FrameError:
                return
            if frame.command != wire.Command.REQUEST:
                return
            name, request_id, body = frame.name.encode("ascii"), frame.request_id, frame.body
        i = sockets[s]
        if name == b"AttachUprobe":
            req = wire.parse_body(pb.AttachUprobeRequest, body)
            now = time.time_ns()
            session = pb.DebugSession(
                session_id=req.session_id,
                service=req.service,
                function=req.function,
                agent_id=f"sim-{i:04d}",
                pids=[10_000 + i],
                started_unix_ns=now,
                expires_unix_ns=now + req.duration_ms * 1_000_000,
                status="active",
                config=req.config,
                probes=1,
            )
            sessions[req.session_id] = session
            reply(s, wire.encode_reply(request_id, pb.AttachUprobeResponse(session=session)))
        elif name == b"DetachUprobe":
            req_d = wire.parse_body(pb.DetachUprobeRequest, body)
            session = sessions[req_d.session_id]
            session.status, session.ended_unix_ns, session.probes = "detached", time.time_ns(), 0
            reply(s, wire.encode_reply(request_id, pb.DetachUprobeResponse(session=session)))
            if req_d.session_id in held:  # the session's news: its held pull is answered after the detach
                hs, held_id, cursor, _ = held.pop(req_d.session_id)
                answer_pull(hs, held_id, req_d.session_id, cursor)
        elif name == b"QueryUprobeEvents":
            req_q = wire.parse_body(pb.QueryUprobeEventsRequest, body)
            if req_q.session_id not in sessions:
                reply(s, wire.encode_error(request_id, NotFound(f"no session {req_q.session_id!r}")))
                return
            if req_q.wait_ms and sessions[req_q.session_id].status == "active" and req_q.session_id not in held:
                held[req_q.session_id] = (s, request_id, req_q.cursor, time.monotonic() + req_q.wait_ms / 1000)
            else:
                answer_pull(s, request_id, req_q.session_id, req_q.cursor)

    used = list(sockets)  # asked ZMQ_EVENTS before the next wait: READY was sent on each
    heartbeat = wire.encode_signal(wire.Command.HEARTBEAT)
    # Each agent is looked at once a second, and beats if it has sent
    # nothing since the last second, but not all in the same moment: real
    # agents are not in step. A thousand beats sent together
    # held the simulator (and the colony, which took them together) for
    # about 10 ms each second, in front of the attaches that came then.
    order = list(sockets)
    slices = min(BEAT_SLICES, len(order))
    start, beats = time.monotonic(), 0  # beat slices sent so far
    while not stop:
        next_beat = start + beats * HEARTBEAT_SECONDS / slices
        woken = [by_fd[fd] for fd, _ in epoll.poll(0 if used else min(0.1, max(0.0, next_beat - time.monotonic())))]
        asked = dict.fromkeys([*used, *woken])
        used = []
        while asked:
            # One zmq_poll over them asks each its ZMQ_EVENTS (what ZMQ_FD
            # wants before the next wait): a getsockopt(EVENTS) each, twice
            # per message, made an enum each time (9% of this process's
            # time under cProfile). The sockets it finds readable, and those
            # sent on meanwhile, are asked again until none has anything.
            polled = zmq_poll([(s, _POLLIN) for s in asked], 0)
            for s, _ in polled:  # type: ignore[assignment]
                frames = recv_frames(s)[0]
                if frames != heartbeat:  # the colony's, each second: nothing to answer, nothing to decode
                    answer(s, frames)
                used.append(s)
            asked = dict.fromkeys(used)
            used = []
        now = time.monotonic()
        while held and next(iter(held.values()))[3] <= now:  # waits over (all are one interval long: oldest first)
            session_id, (hs, request_id, cursor, _) = next(iter(held.items()))
            del held[session_id]
            answer_pull(hs, request_id, session_id, cursor)
            used.append(hs)
        while time.monotonic() >= start + beats * HEARTBEAT_SECONDS / slices:
            j = beats % slices
            now = time.monotonic()
            for s in order[j * len(order) // slices: (j + 1) * len(order) // slices]:
                if now - last_sent[s] >= HEARTBEAT_SECONDS:
                    _send_frames(s, heartbeat, _NOBLOCK)
                    last_sent[s] = now
                    used.append(s)
            beats += 1
    for s in sockets:
        s.send_multipart(wire.encode_signal(wire.Command.DISCONNECT), flags=zmq.NOBLOCK)
        s.close()
    epoll.close()
    context.term()


def drive(endpoint: str, agents: int, clients: int, seconds: float) -> tuple[list[float], int]:
    """`clients` threads attach to a random service and detach again, for
    `seconds`; returns the attach latencies and the error count."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = time.monotonic() + seconds

    def run(k: int) -> None:
        rng = random.Random(k)
        with Client(endpoint, 30, zmq.Context.instance()) as c:
            while time.monotonic() < stop_at:
                service = f"svc-{rng.randrange(agents):04d}"
                t = time.perf_counter()
                try:
                    reply = c.call("AttachUprobe", pb.AttachUprobeRequest(service=service, function="f", duration_ms=60_000))
                    latencies[k].append(time.perf_counter() - t)
                    c.call("DetachUprobe", pb.DetachUprobeRequest(session_id=reply.session.session_id))  # type: ignore[attr-defined]
                except CoralError:
                    errors[k] += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for per in latencies for x in per], sum(errors)


def wait_for_agents(sim: subprocess.Popen[str], env: CoralEnv, agents: int) -> None:
    """The simulator says it is ready, then the colony lists every one of its agents' services."""
    if sim.stdout is None or sim.stdout.readline().strip() != "ready":
        raise SystemExit("the simulator did not start")
    with Client(env.endpoint("colony/colony.sock"), 30) as c:
        while len(c.call("ListServices", pb.ListServicesRequest()).services) < agents:  # type: ignore[attr-defined]
            pass  # their READY messages are still arriving: each ask is a round trip


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` to `cpus` (the threads they start inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


def pinned_cpus() -> tuple[set[int], set[int]]:
    """The colony's CPU and the bench's: the first this process may use, and the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs two CPUs")
    return {cpus[0]}, set(cpus[1:])


def measure(agents: int, clients: list[int], seconds: float, repeats: int, pinned: bool = False) -> list[list[str]]:
    everywhere = os.sched_getaffinity(0)
    colony_cpus, bench_cpus = pinned_cpus() if pinned else (everywhere, everywhere)  # before anything starts
    env = CoralEnv.create()
    colony = start_colony(env)
    if pinned:
        pin(colony.pid, colony_cpus)
        pin(os.getpid(), bench_cpus)  # the clients' threads, and the simulator started next, inherit it
    sim = subprocess.Popen(
        [sys.executable, __file__, "--simulate", str(agents), env.endpoint("colony/colony-backend.sock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    rows = []
    try:
        wait_for_agents(sim, env, agents)
        for n in clients:
            runs = [drive(env.endpoint("colony/colony.sock"), agents, n, seconds) for _ in range(repeats)]
            p50 = statistics.median(statistics.median(lat) for lat, _ in runs)
            p99 = statistics.median(statistics.quantiles(lat, n=100)[98] for lat, _ in runs)
            # each attach is followed by a detach: two routed requests
            rate = statistics.median(2 * len(lat) / seconds for lat, _ in runs)
            errs = sum(e for _, e in runs)
            rows.append(
                [
                    f"{agents:,}",
                    str(n),
                    f"{sum(len(lat) for lat, _ in runs):,}",
                    f"{p50 * 1e3:.2f}",
                    f"{p99 * 1e3:.2f}",
                    f"{rate:,.0f}",
                    str(errs),
                    f"{rss_mib(colony.pid):.0f}",
                ]
            )
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
        colony.stop()
        env.remove()
        pin(os.getpid(), everywhere)
    return rows


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pin", action="store_true", help="the colony on one CPU, the bench on the others")
    ap.add_argument("--simulate", nargs=2, metavar=("COUNT", "ENDPOINT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.simulate:
        simulate_agents(args.simulate[1], int(args.simulate[0]))
        return 0
    load = os.getloadavg()
    rows = measure(1, args.clients, args.seconds, args.repeats, args.pin) + measure(
        args.agents, args.clients, args.seconds, args.repeats, args.pin)
    where = "the colony pinned to one CPU, the bench to the other(s)" if args.pin else "nothing pinned"
    print(
        f"\n{os.cpu_count()} CPUs ({where}); load average {load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
        f"{args.seconds:g}s per run, median of {args.repeats} runs; "
        "each attach is routed to its agent, recorded and audited, then detached"
    )
    table(
        "Attach routing through one colony",
        ["agents", "clients", "attaches", "P50 ms", "P99 ms", "routed requests/s", "errors", "colony RSS MiB"],
        rows,
    )
    base = {r[1]: float(r[4]) for r in rows if r[0] == "1"}
    for r in rows:
        if r[0] != "1":
            print(f"- {r[1]} client(s): P99 with {r[0]} agents / P99 with 1 agent = {float(r[4]) / base[r[1]]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
