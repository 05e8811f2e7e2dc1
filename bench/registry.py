"""What the agent's periodic prune of registered processes costs, by how
many are registered: with pidfds (exits told by the kernel, SWEEP
registrations a turn looked at for an exec) against the full scan it
replaced (every registration's /proc files read every turn), measured in
the same run on the same real processes. Run as root.

    .venv/bin/python bench/registry.py --processes 1000 5000 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import table
from coral.agentd.registry import SWEEP, ProcessRegistry
from coral.daemon.server import Peer
from coral.proto import coral_pb2 as pb


def median_ms(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(count: int, repeats: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "many.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        children = [subprocess.Popen(["sleep", "600"]) for _ in range(count)]
        registry = ProcessRegistry(Path(tmp))
        try:
            me = Peer(uid=0, gid=0, pid=os.getpid())
            for i, child in enumerate(children):
                registry.register(pb.RegisterProcessRequest(service=f"s{i}", pid=child.pid, address=f"ipc://{path}"), me)
            full = median_ms(lambda: [registry.loss(r) for r in registry.instances()], repeats)
            prune = median_ms(registry.prune_exited, repeats)
            listing = median_ms(registry.live_instances, repeats)
        finally:
            for child in children:
                child.kill()
            for child in children:
                child.wait()
            registry.close()
            listener.close()
    return [f"{count:,}", f"{full:.1f} ms", f"{prune:.1f} ms", f"{full / prune:.0f}×", f"{listing:.2f} ms"]


def main() -> int:
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    rows = [measure(n, args.repeats) for n in args.processes]
    table(f"One prune of registered processes (median of {args.repeats}; SWEEP = {SWEEP})",
          ["registered", "full scan (before)", "prune (pidfds + sweep)", "ratio", "live_instances"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
