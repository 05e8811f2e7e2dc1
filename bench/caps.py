"""Which capabilities coral-agentd really needs, measured.

For the unit's capability set, and for that set minus each capability in
turn, this starts a real colony, a real coral-agentd whose capability
bounding set is cut to that set (as root: what systemd's
CapabilityBoundingSet= does) and with the unit's SupplementaryGroups=, a real C target under coral-run running as
another user (`nobody`, as a service would), then a real attach with
argument capture through the colony. It records whether the agent started,
whether the attach saw calls, whether the probes were gone from the kernel
after the session, and the first error line.

    .venv/bin/python -m bench.caps            # as root; prints a Markdown table
    .venv/bin/python -m bench.caps CAP_BPF ...  # another set instead of the unit's
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.harness import REPO, CoralEnv, Process, coralctl, start_colony, tool
from tests.test_native_e2e import wait_for_service

UNIT = REPO / "systemd" / "coral-agentd.service"


def unit_setting(name: str, unit: Path = UNIT) -> list[str]:
    m = re.search(rf"^{name}=(.*)$", unit.read_text(), re.M)
    return m.group(1).split() if m else []


@dataclass(frozen=True)
class Outcome:
    started: bool
    calls: int
    probes_left: bool
    error: str

    @property
    def works(self) -> bool:
        return self.started and self.calls > 0 and not self.probes_left and not self.error


def agent_probes(pid: int) -> bool:
    """Uprobes that process still holds in the kernel."""
    out = subprocess.run(["bpftool", "perf", "-j"], capture_output=True, text=True, check=False).stdout
    return any(e.get("pid") == pid for e in json.loads(out or "[]"))


def first_error(text: str) -> str:
    for line in text.splitlines():
        if line.startswith(("coral-agentd:", "coralctl:")) or "ERROR" in line or "fatal" in line:
            return line.strip()
    return ""


def try_capabilities(caps: list[str], binary: Path) -> Outcome:
    """One real run: agent bounded to `caps`, target as nobody, one attach."""
    env = CoralEnv.create()
    os.chmod(env.root, 0o755)  # the target's user reaches the sockets
    colony = start_colony(env)
    bounding = ",".join(["-all"] + ["+" + c.lower().removeprefix("cap_") for c in caps])
    groups = ",".join(unit_setting("SupplementaryGroups")) or "-"
    argv = [
        "setpriv",
        f"--bounding-set={bounding}",
        "--inh-caps=-all",
        *(["--groups", groups] if groups != "-" else ["--clear-groups"]),
        "--",
        tool("coral-agentd"),
    ]
    agent = Process("agentd", argv, env)
    run: Process | None = None
    try:
        try:
            agent.wait_ready(60)
        except AssertionError:
            return Outcome(False, 0, False, first_error(agent.output()) or "agent did not start")
        run = Process(
            "run",
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--groups=coral",
                "--",
                tool("coral-run"),
                "--service",
                "payments",
                "--",
                str(binary),
                "--loop-ms",
                "10",
                "--sleep-ms",
                "1",
            ],
            env,
        )
        wait_for_service(env, "payments")  # (nobody may write to our notify socket: ask the colony)
        out = coralctl(
            env,
            "--output",
            "json",
            "debug",
            "attach",
            "payments",
            "--function",
            "validate_card",
            "--duration",
            "1s",
            "--capture-args",
            "--no-save",
        )
        if out.returncode != 0:
            return Outcome(True, 0, agent_probes(agent.pid), first_error(out.stderr) or out.stderr.strip())
        summary = json.loads(out.stdout.splitlines()[-1])
        return Outcome(True, int(summary["calls"]), agent_probes(agent.pid), first_error(agent.output()))
    finally:
        if run is not None:
            run.stop()
        agent.stop()
        colony.stop()
        env.remove()


def main() -> int:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        print("run as root, with setpriv (util-linux)", file=sys.stderr)
        return 2
    caps = sys.argv[1:] or unit_setting("CapabilityBoundingSet")  # or a set to try instead of the unit's
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "payments"
        subprocess.run(["gcc", "-g", "-O1", "-o", str(binary), str(REPO / "examples" / "native" / "payments.c")], check=True)
        os.chmod(tmp, 0o755)
        print(f"set: {' '.join(caps)}; supplementary groups: {' '.join(unit_setting('SupplementaryGroups')) or 'none'}")
        print("\n| capabilities | agent starts | attach sees calls | probes gone after | error |")
        print("|---|---|---|---|---|")
        rows = [("the whole set", caps)] + [(f"without {c}", [x for x in caps if x != c]) for c in caps]
        for label, subset in rows:
            o = try_capabilities(subset, binary)
            print(
                f"| {label} | {'yes' if o.started else 'no'} | {'yes' if o.calls else 'no'} ({o.calls} calls) | "
                f"{'no' if o.probes_left else 'yes'} | {o.error or '—'} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
