"""A probe finds its site by its attach cookie: an index the agent gives
each site and gives again only once every probe that carried it is
closed. The engine runs in this process, its probes on libc functions
that this test calls itself, so every count is exact."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from dataclasses import replace

import pytest

from coral.agentd.engine import ProbeEngine, ProbeError, SlotConfig
from coral.agentd.targets import own_function_site
from coral.agentd.uprobes import AttachError, UprobeAttacher

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
                                  "refused by the kernel: perf_event_open (uprobe PMU): errno 2 "
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
