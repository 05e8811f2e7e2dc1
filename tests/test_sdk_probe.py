"""The SDK's C extension without BPF: the records an armed function hands
to its probe site (kept in memory by the extension's test mode), and the
probe site itself as the agent will see it in the built .so."""

from __future__ import annotations

import ctypes
import enum
import functools
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from coral.elfinfo import ElfFunctions
from coral.redact import Rules
from coral.sdk import _probe
from coral.sdk.metadata import NOP5, probe_site
from coral.sdk.records import RECORD_FORMAT, CallRecord, parse_record, take_test_records
from coral.sdk.settings import DEFAULT_REDACT_PATTERNS, SdkSettings


@pytest.fixture
def tracer() -> Iterator[None]:
    """As if a probe were attached: semaphore up, records kept for the test."""
    _probe._set_test_mode(semaphore=1, capture=True)
    take_test_records()
    yield
    _probe._set_test_mode(semaphore=0, capture=False)
    take_test_records()


def validate_card(card: str, amount: int) -> dict[str, object]:
    if amount > 1000:
        raise ValueError("card declined")
    return {"approved": True, "amount": amount}


def charge(number: object, amount: object = 0, *extra: object, **options: object) -> object:
    return number


def probe_for(fn: Any, fn_id: int = 7, **flags: bool) -> _probe.ProbeWrapper:
    """What arming builds, without installing it anywhere."""
    code = fn.__code__
    names = code.co_varnames[: code.co_argcount]
    varargs = code.co_varnames[code.co_argcount + code.co_kwonlyargcount] if code.co_flags & 0x04 else ""
    settings = SdkSettings()
    probe = _probe.ProbeWrapper(fn, fn_id, names, settings.redact_flags(names), varargs, settings.is_sensitive(varargs), **flags)
    functools.update_wrapper(probe, fn)
    return probe


def only_record() -> CallRecord:
    (record,) = take_test_records()
    return record


def test_a_call_yields_one_record_with_argument_and_return_reprs(tracer: None) -> None:
    probe = probe_for(charge)
    assert probe("order-1", 1250, retries=3) == "order-1"
    record = only_record()
    assert (record.fn_id, record.flags) == (7, 0)
    assert record.args == (("number", "'order-1'"), ("amount", "1250"), ("retries", "3"))
    assert record.ret == "'order-1'"
    assert record.end_ns >= record.start_ns > 0


def test_call_ids_increase(tracer: None) -> None:
    probe = probe_for(charge)
    for i in range(3):
        probe(i)
    ids = [r.call_id for r in take_test_records()]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_an_exception_is_recorded_and_re_raised_unchanged(tracer: None) -> None:
    probe = probe_for(validate_card)
    with pytest.raises(ValueError, match="card declined") as caught:
        probe("4000000000000002", 5000)
    record = only_record()
    assert record.raised and record.ret == "ValueError: card declined"
    assert record.arg("amount") == "5000"
    # the traceback is the original's: the C wrapper adds no frame
    frames = [tb.tb_frame.f_code.co_name for tb in _walk(caught.value.__traceback__)]
    assert frames == ["test_an_exception_is_recorded_and_re_raised_unchanged", "validate_card"]


def _walk(tb: Any) -> Iterator[Any]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def test_exception_messages_never_come_from_user_str(tracer: None) -> None:
    class Declined(Exception):
        def __str__(self) -> str:
            raise RuntimeError("must not be called")

    def refuse() -> None:
        raise Declined("insufficient funds", 402)

    with pytest.raises(Declined):
        probe_for(refuse)()
    assert only_record().ret == "Declined: ('insufficient funds', 402)"

    def missing() -> None:
        open("/nonexistent/coral")  # noqa: SIM115 (raises before there is a file)

    with pytest.raises(FileNotFoundError):
        probe_for(missing)()
    assert only_record().ret == "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/coral'"


def test_long_exception_messages_are_cut_not_copied_whole(tracer: None) -> None:
    def fail() -> None:
        raise ValueError("é" * 100_000)

    with pytest.raises(ValueError):
        probe_for(fail)()
    record = only_record()
    assert record.raised and record.truncated
    assert record.ret.startswith("ValueError: éé") and record.ret.endswith("...")
    assert len(record.ret.encode()) <= _probe.RET_MAX


def test_user_repr_is_never_called(tracer: None) -> None:
    called = threading.Event()

    class Slow:
        def __repr__(self) -> str:
            called.set()
            threading.Event().wait(10)  # would stall the service if it ran
            return "slow"

    class Broken:
        def __repr__(self) -> str:
            called.set()
            raise RuntimeError("broken repr")

    assert probe_for(charge)(Slow(), Broken()).__class__ is Slow
    record = only_record()
    assert record.args == (
        ("number", "<test_user_repr_is_never_called.<locals>.Slow object>"),
        ("amount", "<test_user_repr_is_never_called.<locals>.Broken object>"),
    )
    assert record.ret == "<test_user_repr_is_never_called.<locals>.Slow object>"
    assert not called.is_set()


def test_containers_are_shallow_and_bounded(tracer: None) -> None:
    probe_for(charge)([1, "a", None, [2, 3], {"k": 1.5}], (7,), {"password": "hunter2", "user": b"bob"}, frozenset())
    record = only_record()
    assert record.args == (
        ("number", "[1, 'a', None, <list len=2>, <dict len=1>]"),
        ("amount", "(7,)"),
        ("extra[0]", "{'password': <redacted>, 'user': b'bob'}"),
        ("extra[1]", "frozenset()"),
    )


def test_a_huge_repr_is_truncated_and_flagged(tracer: None) -> None:
    huge = "x" * 1_000_000
    assert probe_for(charge)(huge) is huge
    record = only_record()
    assert record.truncated
    value = record.arg("number")
    assert value.startswith("'xxx") and value.endswith("...")
    assert len(value) <= _probe.ARGS_MAX and len(record.ret) <= _probe.RET_MAX


class Color(enum.IntEnum):
    RED = 1

    def __repr__(self) -> str:
        raise RuntimeError("must not be called")


def test_big_ints_and_scalar_subclasses_use_no_user_code(tracer: None) -> None:
    probe_for(charge)(2**5000, Color.RED)
    assert only_record().args == (("number", "<int of 5001 bits>"), ("amount", "Color(1)"))


def test_redaction_by_parameter_name(tracer: None) -> None:
    def login(user: str, password: str, api_key: str = "", **kw: str) -> bool:
        return True

    probe_for(login)("bob", "hunter2", api_key="k-123", Authorization="Bearer abc", note="ok")
    assert only_record().args == (
        ("user", "'bob'"),
        ("password", "<redacted>"),
        ("api_key", "<redacted>"),
        ("Authorization", "<redacted>"),
        ("note", "'ok'"),
    )


def test_redaction_of_card_numbers_by_value(tracer: None) -> None:
    probe = probe_for(charge)
    probe("4111111111111111", 4111111111111111, "paid with 4111-1111-1111-1111 today", order=4111111111111112)
    record = only_record()
    assert record.args == (
        ("number", "<redacted>"),
        ("amount", "<redacted>"),
        ("extra[0]", "'paid with <redacted> today'"),
        ("order", "4111111111111112"),  # not Luhn-valid: an ordinary number
    )
    assert record.ret == "<redacted>"


@pytest.mark.parametrize("text", [
    "paid 4111 1111 1111 1111 12 26 ok",  # a card, then a date: the card alone goes
    "4111-1111-1111-1111-2026",
    "4111111111111111 0000",
    "order 1234 5678 9012 3456",  # not Luhn-valid, whole or cut: left alone
    "ref 41111111 11111111",  # 16 digits in two groups, Luhn-valid
])
def test_a_card_followed_by_more_digit_groups_is_cut_as_coral_redact_cuts_it(tracer: None, text: str) -> None:
    from coral.redact import Rules

    probe_for(charge)(text, 1)
    record = only_record()
    assert record.args[0] == ("number", Rules().text(repr(text)))
    assert ("<redacted>" in record.args[0][1]) == ("1234" not in text)


def test_capture_flags_off_record_timing_only(tracer: None) -> None:
    probe_for(charge, capture_args=False, capture_return=False)("secret-ish", 1)
    record = only_record()
    assert (record.args, record.ret, record.flags) == ((), "", 0)


def test_nothing_is_recorded_while_no_tracer_is_attached() -> None:
    _probe._set_test_mode(semaphore=0, capture=True)
    try:
        take_test_records()
        assert probe_for(charge)(1) == 1
        assert take_test_records() == []
    finally:
        _probe._set_test_mode(semaphore=0, capture=False)


def test_a_disarmed_wrapper_is_a_pass_through(tracer: None) -> None:
    probe = probe_for(charge)
    probe.armed = False
    assert probe(5) == 5
    assert take_test_records() == []


def test_the_record_layout_matches_coral_call_h() -> None:
    assert struct.calcsize(RECORD_FORMAT) == _probe.RECORD_SIZE == 48 + _probe.ARGS_MAX + _probe.RET_MAX + \
        _probe.STACK_MAX
    raw = struct.pack(RECORD_FORMAT, 3, 9, 100, 250, 1, 12, 25, 0, b"card=1\0amt=2", b"ValueError: card declined", b"")
    assert parse_record(raw) == CallRecord(3, 9, 100, 250, 1, (("card", "1"), ("amt", "2")), "ValueError: card declined")


def test_the_default_redaction_patterns_agree_between_c_and_python() -> None:
    assert _probe._redact_patterns() == Rules(DEFAULT_REDACT_PATTERNS).terms


NAMES = ["user_pw", "apiToken", "Authorization", "APIKey", "x-api-key", "privateKey", "mypassword", "tokenExpiry",
         "credentials", "session_id", "author", "oauth_url", "upward", "keyboard", "cardinality", "card", "pw2", "ID",
         "HTTPHeader", "naïve_secret", "", "a" * 300 + "_token"]


def test_the_c_side_matches_dict_keys_with_the_same_rule_as_python(tracer: None) -> None:
    """Parameter names are matched in Python (coral/redact.py); dict keys, at
    call time, in C: both must say the same of every name."""
    probe = probe_for(charge)
    rules = Rules()
    for name in NAMES:
        probe({name: "v"})
        shown = only_record().args[0][1]
        assert ("<redacted>" in shown) == rules.is_secret_name(name), (name, shown)


def test_probe_site_and_semaphore_match_what_pyelftools_reads_from_the_so() -> None:
    site = probe_site()
    assert site.binary_path.endswith(".so") and site.binary_path == os.path.realpath(_probe.__file__ or "")
    elf = ElfFunctions.load(site.binary_path)
    assert elf.symbols[_probe.PROBE_SYMBOL] == (site.address, site.size)
    assert elf.file_offset(site.address) == site.file_offset
    with open(site.binary_path, "rb") as f:
        ef = ELFFile(f)
        dynsym = ef.get_section_by_name(".dynsym")
        assert isinstance(dynsym, SymbolTableSection)
        (sem,) = dynsym.get_symbol_by_name(_probe.SEMAPHORE_SYMBOL) or []
        assert (sem["st_value"], sem["st_size"], sem["st_info"]["type"]) == (site.semaphore_address, 2, "STT_OBJECT")
        section = ef.get_section(sem["st_shndx"])
        assert section.name == ".probes" and section["sh_type"] == "SHT_PROGBITS"
        assert site.semaphore_offset == section["sh_offset"] + sem["st_value"] - section["sh_addr"]
        f.seek(site.file_offset)
        assert f.read(6) == NOP5 + b"\xc3"  # nop5; ret
        f.seek(site.semaphore_offset)
        assert f.read(2) == b"\0\0"


def test_the_semaphore_in_memory_is_the_one_the_kernel_would_raise() -> None:
    """The value at the semaphore's address in this process's mapping of
    the .so is what _probe reads: write through /proc/self/mem, read back."""
    site = probe_site()
    base = min(
        int(line.split("-")[0], 16)
        for line in Path("/proc/self/maps").read_text().splitlines()
        if line.endswith(site.binary_path)
    )
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(base + site.semaphore_address)
        mem.write(struct.pack("<H", 3))
        try:
            assert _probe.semaphore() == 3 and _probe.tracing()
        finally:
            mem.seek(base + site.semaphore_address)
            mem.write(struct.pack("<H", 0))
    assert _probe.semaphore() == 0


class KernelUprobe:
    """A uprobe on the probe site with the semaphore as its reference
    counter, made the way the agent makes one, minus the BPF program: a
    perf event (perf_event_open, uprobe PMU) that only counts hits."""

    SYS_PERF_EVENT_OPEN = 298  # x86_64

    def __init__(self, pid: int) -> None:
        site = probe_site()
        pmu = int(Path("/sys/bus/event_source/devices/uprobe/type").read_text())
        self._path = ctypes.create_string_buffer(site.binary_path.encode())
        attr = bytearray(128)  # struct perf_event_attr, PERF_ATTR_SIZE_VER8
        struct.pack_into("<IIQ", attr, 0, pmu, len(attr), site.semaphore_offset << 32)  # config:32-63 = ref_ctr_offset
        struct.pack_into("<QQ", attr, 56, ctypes.addressof(self._path), site.file_offset)  # uprobe_path, probe_offset
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.syscall(self.SYS_PERF_EVENT_OPEN, (ctypes.c_char * len(attr)).from_buffer(attr), pid, -1, -1, 0)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), f"perf_event_open(uprobe): {os.strerror(ctypes.get_errno())}")

    def hits(self) -> int:
        return int(struct.unpack("<Q", os.read(self.fd, 8))[0])

    def close(self) -> None:
        os.close(self.fd)


def test_the_kernel_raises_the_semaphore_and_sees_every_traced_call(bpf: None) -> None:
    """The real thing, no test mode: while a uprobe with the semaphore as
    its reference counter is attached, the kernel raises the semaphore,
    each call of an armed function hits the probe once, on the nop5
    trampoline; when it goes, the semaphore drops back to 0."""
    probe = probe_for(charge)
    assert _probe.semaphore() == 0
    uprobe = KernelUprobe(os.getpid())
    try:
        assert _probe.semaphore() == 1
        for i in range(100):
            assert probe(i) == i
        assert uprobe.hits() == 100
        assert "[uprobes-trampoline]" in Path("/proc/self/maps").read_text()
    finally:
        uprobe.close()
    assert _probe.semaphore() == 0


def login(user: str, password: str, **options: object) -> None:
    raise PermissionError(f"bad password {password!r} for {user} ({options})")


def test_an_exception_does_not_quote_a_redacted_argument(tracer: None) -> None:
    probe = probe_for(login)
    calls: list[tuple[tuple[object, ...], dict[str, object]]] = [
        (("bob", "hunter2"), {}), ((), {"user": "bob", "password": "hunter2"}), (("bob", "x"), {"api_token": 123456})]
    for args, kwargs in calls:
        with pytest.raises(PermissionError):
            probe(*args, **kwargs)
    first, second, third = take_test_records()
    assert first.args == (("user", "'bob'"), ("password", "<redacted>"))
    assert first.ret == second.ret == "PermissionError: bad password '<redacted>' for bob ({})"
    assert third.ret == "PermissionError: bad password 'x' for bob ({'api_token': <redacted>})"  # shorter than 3: kept


def test_a_long_redacted_argument_is_not_quoted_even_where_the_text_is_cut(tracer: None) -> None:
    probe = probe_for(login)
    secret = "s3cr3t-" * 700  # longer than the record's text
    with pytest.raises(PermissionError):
        probe("bob", secret)
    text = only_record().ret
    assert "s3cr3t" not in text and text.startswith("PermissionError: bad password '<redacted>")


def test_stack_depth_puts_the_python_frames_in_the_record(tracer: None) -> None:
    """--stack: the function's own frame, then its callers', bounded by
    stack_depth; a deeper stack is marked cut, and none without it."""
    probe = probe_for(charge)

    def outer() -> int:
        return int(probe(3))

    assert outer() == 3
    assert take_test_records()[0].stack == ""
    probe.stack_depth = 64
    outer()
    lines = [line.split("\t") for line in take_test_records()[0].stack.splitlines()]
    names = [name for name, _, _ in lines]
    assert names[:3] == ["charge", "test_stack_depth_puts_the_python_frames_in_the_record.<locals>.outer",
                         "test_stack_depth_puts_the_python_frames_in_the_record"], names
    assert all(file == __file__ and int(line) > 0 for _, file, line in lines[:3]), lines
    probe.stack_depth = 2
    outer()
    record = take_test_records()[0]
    assert len(record.stack.splitlines()) == 2 and record.flags & 0x20  # CORAL_CALL_STACK_CUT
