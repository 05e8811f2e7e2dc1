"""A probe finds its site by its attach cookie: an index the agent gives
each site and gives again only once every probe that carried it is
closed. The engine runs in this process, its probes on libc functions
that this test calls itself, so every count is exact."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import replace

import pytest

from coral.agentd.engine import ProbeEngine, ProbeError, SlotConfig
from coral.agentd.targets import own_function_site
from coral.agentd.uprobes import AttachError, UprobeAttacher, stale_events, tracefs_dir
from tests.harness import CoralEnv, NativeService, Process, coralctl, start_agent, start_attach
from tests.test_native_e2e import wait_for_service

libc = ctypes.CDLL(None)


@pytest.fixture
def engine(bpf: None) -> Iterator[ProbeEngine]:
    e = ProbeEngine(16)
    try:
        yield e
    finally:
        e.close()


def test_a_closing_probe_never_counts_for_the_next_site(engine: ProbeEngine) -> None:
    """Twenty times: a session on getppid, called 10 times, ends (its probes
    are removed by a thread, about 175 ms); at once a session on getsid
    starts, and getppid is called all the while its old probes may still
    fire. The getsid session sees its own 10 calls, exactly: a late hit of
    getppid's probes found no slot, never getsid's site."""
    getppid_site, getsid_site = own_function_site(libc.getppid), own_function_site(libc.getsid)
    late_calls = 0
    for _ in range(20):
        first = engine.open_slot(SlotConfig(), [getppid_site])
        for _ in range(10):
            libc.getppid()
        (ended,) = engine.close_slots([first], in_background=True)
        removing = engine.closing[first]
        second = engine.open_slot(SlotConfig(), [getsid_site])
        for _ in range(10):
            libc.getsid(0)
        while not removing.done.is_set():
            libc.getppid()
            late_calls += 1
        assert (ended.calls, engine.close_slot(second).calls) == (10, 10)
        engine.drain()
    assert late_calls > 0  # the probes were there to fire


def test_a_refused_probe_names_the_kernels_reason_and_leaves_nothing(engine: ProbeEngine) -> None:
    """The kernel's errno in the message, for a file that is not there and
    for a process that is gone; the session's sites are let go, so the
    next session attaches as if nothing had happened."""
    site = own_function_site(libc.getppid)
    missing = replace(site, path="/nonexistent/libc.so")
    with pytest.raises(ProbeError) as refused:
        engine.open_slot(SlotConfig(), [missing])
    assert str(refused.value) == (f"uretprobe at /nonexistent/libc.so+{site.file_offset:#x} (pid {os.getpid()}) "
                                  "refused by the kernel: uprobe event (tracefs uprobe_events): errno 2 "
                                  "(No such file or directory)")
    gone_pid = 1 << 22 | 12345  # above pid_max: no such process
    with pytest.raises(ProbeError, match=f"errno {errno.ESRCH} "):
        engine.open_slot(SlotConfig(), [replace(site, pid=gone_pid)])
    assert engine.attachment_count == 0 and not engine._site_index
    slot = engine.open_slot(SlotConfig(), [site])
    for _ in range(5):
        libc.getppid()
    assert engine.close_slot(slot).calls == 5


def test_a_refused_link_says_so_and_closes_its_perf_event(bpf: None) -> None:
    """BPF_LINK_CREATE refused (here: the program is not a BPF program): the
    error names that step and the kernel's errno, and the uprobe's perf
    event made before it is closed again."""
    site = own_function_site(libc.getppid)
    attacher = UprobeAttacher()
    before = sorted(os.listdir("/proc/self/fd"))
    not_a_program = os.open("/dev/null", os.O_RDONLY)
    try:
        with pytest.raises(AttachError) as refused:
            attacher.attach(not_a_program, False, site.path, site.file_offset, site.pid, 0, cookie=1)
        after = sorted(os.listdir("/proc/self/fd"))
    finally:
        os.close(not_a_program)
    assert str(refused.value).startswith("BPF_LINK_CREATE (a BPF program on the uprobe, with a cookie): errno ")
    assert refused.value.errno in (errno.EINVAL, errno.EBADF)
    assert len(after) == len(before) + 1  # /dev/null alone


def events_of(agent_pid: int) -> list[str]:
    """The agent's uprobe events in tracefs (its group, coral_<pid>)."""
    lines = (tracefs_dir() / "uprobe_events").read_text().splitlines()
    return [line for line in lines if line[1:].startswith(f":coral_{agent_pid}/")]


def test_the_agents_uprobe_events_go_with_its_sessions_and_after_it_was_killed(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    """A session's two probes are two tracefs events of the agent's group,
    removed when the session ends. An agent killed with SIGKILL cannot remove
    its events (the kernel takes its probes out of the process, not the
    events): the next agent removes them when it starts."""
    wait_for_service(coral_env, "payments")
    attach, first = start_attach(coral_env, "payments", "validate_card", "--local", "--duration", "5m", "--no-save")
    exe = f"/proc/{payments.child_pid}/exe:"
    assert sorted(line[0] for line in events_of(agent.pid) if exe in line) == ["p", "r"]
    detached = coralctl(coral_env, "--local", "debug", "detach", first["session_id"])
    assert detached.returncode == 0, detached.stderr
    attach.wait(30)  # its last line comes once the probes are removed
    assert events_of(agent.pid) == []

    expired = coralctl(coral_env, "--local", "--output", "json", "debug", "attach", "payments",
                       "--function", "validate_card", "--duration", "1s", "--no-save")
    assert json.loads(expired.stdout.splitlines()[-1])["status"] == "expired", expired.stderr
    assert events_of(agent.pid) == []

    attach, _ = start_attach(coral_env, "payments", "validate_card", "--local", "--duration", "5m", "--no-save")
    assert len(events_of(agent.pid)) == 2
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    attach.kill()
    attach.wait()
    assert len(events_of(agent.pid)) == 2  # left behind
    restarted = start_agent(coral_env)
    try:
        assert events_of(agent.pid) == []
        assert re.search(r"removed \d+ uprobe events of agents no longer running", restarted.output())
        assert payments.call(3) == "done 3 declined 0"
    finally:
        assert restarted.stop() == 0
    assert events_of(restarted.pid) == []


def test_stale_events_are_those_of_agents_no_longer_running() -> None:
    """Events of the agent's own groups and libbcc's events of earlier agents,
    by their pid; anybody else's events are left alone."""
    lines = [
        "p:coral_100/p1 /proc/7/exe:0x00000000000011d7",
        "r:coral_100/r2 /proc/7/exe:0x00000000000011d7",
        "p:coral_200/p1 /usr/lib/x86_64-linux-gnu/libc.so.6:0x00000000000d54f0(0x40)",
        "r:uprobes/coral_7220_11d7_r_bcc_300 /proc/7220/exe:0x00000000000011d7",
        "p:uprobes/coral_7220_11d7_p_bcc_200 /proc/7220/exe:0x00000000000011d7",
        "p:uprobes/p_usr_bin_bash_0x1234_bcc_100 /usr/bin/bash:0x0000000000001234",
        "p:coral_x/p1 /usr/bin/bash:0x0000000000001234",
        "p:other/coral_1 /usr/bin/bash:0x0000000000001234",
    ]
    running = {200}.__contains__
    assert stale_events(lines, running) == ["coral_100/p1", "coral_100/r2", "uprobes/coral_7220_11d7_r_bcc_300"]
