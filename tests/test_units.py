"""Pure logic beside the real tests: codec, config, durations, summaries,
liveness, peer credentials, value formatting. No sockets, no BPF."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from coral.agentd.values import format_register
from coral.ctl.render import parse_duration, percentile, summarize
from coral.daemon import wire
from coral.daemon.config import ConfigError, parse_config
from coral.daemon.errors import NotFound
from coral.daemon.liveness import Backoff, is_dead
from coral.daemon.server import peer_from_address
from coral.proto import coral_pb2 as pb


def test_request_and_reply_round_trip() -> None:
    frames = wire.encode_request(b"r1", "Ping", pb.PingRequest(), envelope=(b"peer",))
    frame = wire.decode(frames)
    assert (frame.envelope, frame.command, frame.request_id, frame.name) == ((b"peer",), wire.Command.REQUEST, b"r1", "Ping")
    err = wire.decode(wire.encode_error(b"r1", NotFound("no such thing", ["thing"])))
    assert err.name == "NOT_FOUND" and pb.Error.FromString(err.body).suggestions == ["thing"]


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b""],
        [b"", b"CORAL/1"],
        [b"", b"CORAL/1", b"\x01\x01"],
        [b"", b"CORAL/1", b"\x03"],
        [b"", b"CORAL/1", b"\x04", b"extra"],
        [b"", b"CORAL/1", b"\x01", b"x" * 65, b"Ping", b""],
    ],
)
def test_decode_refuses_malformed_frames_with_frame_error_only(frames: list[bytes]) -> None:
    with pytest.raises(wire.FrameError):
        wire.decode(frames)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5m", 300), ("1m30s", 90), ("500ms", 0.5), ("60", 60), ("1h", 3600)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "1m30", "m", "-5s", "1.5.2s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_summary_uses_nearest_rank_percentiles() -> None:
    s = summarize(list(range(1, 101)))
    assert (s.calls, s.avg_ns, s.p50_ns, s.p95_ns, s.p99_ns, s.max_ns) == (100, 50.5, 50, 95, 99, 100)
    assert summarize([]).calls == 0 and percentile([7], 99) == 7


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"agent": {"heartbeat_interval": "x"}}, "c.toml: [agent] heartbeat_interval: expected a number, got 'x'"),
        ({"sessions": {"max_duration": True}}, "c.toml: [sessions] max_duration: expected an integer, got True"),
        ({"sessions": {"ring_buffer_pages": 100}}, "c.toml: [sessions] ring_buffer_pages: must be a power of two, got 100"),
        ({"sessions": {"max_sessions_per_agent": 0}}, "c.toml: [sessions] max_sessions_per_agent: must be greater than 0, got 0"),
        (
            {"agent": {"colour": "blue"}},
            "c.toml: unknown key [agent] colour (known: id, colony_endpoint, heartbeat_interval, "
            "heartbeat_liveness, poll_interval, drain_interval, ingest_cpu_percent, flush_interval, key_file, "
            "colony_public_key_file, retention, purge_interval, "
            "max_registrations_per_uid, metrics_listen)",
        ),
        ({"nope": {}},
         "c.toml: unknown section [nope] (known: paths, limits, sessions, agent, colony, client, sdk, access, mcp, services)"),
    ],
)
def test_config_errors_name_file_key_and_expected_type(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "c.toml")
    assert str(exc.value) == message


def test_shipped_config_is_the_defaults() -> None:
    import tomllib

    from coral.daemon.config import Config
    from tests.harness import REPO

    with open(REPO / "etc" / "coral.toml", "rb") as f:
        loaded = parse_config(tomllib.load(f), "etc/coral.toml")
    defaults = Config()
    sections = ("paths", "limits", "sessions", "agent", "colony", "sdk", "access", "mcp")
    assert [getattr(loaded, s) for s in sections] == [getattr(defaults, s) for s in sections]


def test_liveness_and_backoff() -> None:
    assert not is_dead(last_heard=10.0, now=12.9, interval=1.0, liveness=3)
    assert is_dead(last_heard=10.0, now=13.1, interval=1.0, liveness=3)
    b = Backoff()
    assert [b.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 32, 32]
    b.reset()
    assert b.next_delay() == 1


def test_peer_credentials_from_zeromq_peer_address() -> None:
    peer = peer_from_address("localhost:1000:1001:4242")
    assert (peer.uid, peer.gid, peer.pid, peer.who) == (1000, 1001, 4242, "uid:1000")
    assert peer_from_address("127.0.0.1").uid is None and peer_from_address(None).who == "unknown"


@pytest.mark.parametrize(
    ("value", "ctype", "shown"),
    [
        (0xFFFFFFFF, "int", "-1"),
        (0x1FFFFFFFF, "int", "-1"),
        (2**64 - 1, "long int", "-1"),
        (5, "unsigned int", "5"),
        (0x7FF, "char *", "0x7ff"),
        (0xFFFFFFFF, "uint32_t", "4294967295"),
        (1, "_Bool", "true"),
        (3, "", "0x3"),
    ],
)
def test_register_values_are_shown_as_their_c_type(value: int, ctype: str, shown: str) -> None:
    assert format_register(value, ctype) == shown


def test_every_configuration_key_is_read_and_documented() -> None:
    """etc/coral.toml lists exactly the keys the loader reads, and
    docs/configuration.md documents each of them."""
    import dataclasses
    import tomllib

    from coral.daemon.config import _SECTION_TYPES
    from tests.harness import REPO

    read = {(section, f.name) for section, cls in _SECTION_TYPES.items() for f in dataclasses.fields(cls)}
    with open(REPO / "etc" / "coral.toml", "rb") as f:
        shipped = {(section, key) for section, table in tomllib.load(f).items() for key in table}
    assert shipped == read
    doc = (REPO / "docs" / "configuration.md").read_text()
    undocumented = sorted(f"[{s}] {k}" for s, k in read if f"`{k}`" not in doc or f"[{s}]" not in doc)
    assert undocumented == []


def test_histogram_buckets_mirror_the_kernel_and_percentiles_are_within_a_sixteenth() -> None:
    import random

    from coral.histogram import BUCKETS, bucket_bounds, bucket_of, percentile_ns

    for ns in [0, 1, 7, 8, 9, 15, 16, 1000, 2_000_000, 5_123_456, 10**12, 2**63]:
        low, high = bucket_bounds(bucket_of(ns))
        assert low <= ns < high and bucket_of(ns) < BUCKETS
    rng = random.Random(7)
    values = sorted(rng.randint(1_000, 50_000_000) for _ in range(20_000))
    hist: dict[int, int] = {}
    for v in values:
        hist[bucket_of(v)] = hist.get(bucket_of(v), 0) + 1
    for p in (50, 95, 99):
        exact = values[max(1, -(-p * len(values) // 100)) - 1]
        assert abs(percentile_ns(hist, p, values[-1]) - exact) <= exact / 16


def test_a_breaker_opens_on_silence_doubles_and_closes_on_an_answer() -> None:
    from coral.daemon.liveness import Breaker

    b = Breaker(initial=5, maximum=20)
    assert b.closed(0.0)
    assert b.failed(1.0) == 5 and not b.closed(5.9) and b.closed(6.0)
    assert b.failed(6.0) == 10 and not b.closed(15.9)
    assert b.failed(16.0) == 20 and b.failed(36.0) == 20  # at most the maximum
    b.answered()
    assert b.closed(36.5) and b.failed(37.0) == 5  # an answer starts over


def test_an_address_has_a_file_offset_only_where_the_file_holds_its_bytes() -> None:
    """One rule for the agent, coral-run and the SDK: p_filesz, not p_memsz."""
    from coral.procmaps import file_offset

    segments = [(0x1000, 0x500, 0x1000), (0x3000, 0x100, 0x2000)]  # the second: 0x100 in the file, more in memory (.bss)
    assert file_offset(segments, 0x1010) == 0x1010
    assert file_offset(segments, 0x30ff) == 0x20ff
    assert file_offset(segments, 0x3100) is None  # .bss: zeroes the file does not have
    assert file_offset(segments, 0x1500) is None


def test_proc_maps_lines_with_spaces_in_paths_and_without_paths() -> None:
    from coral.procmaps import Mapping, parse_maps

    lines = ["55d0c-55d0e r-xp 00001000 08:01 1234 /opt/my app/bin (deleted)\n",
             "7ffd0-7ffd1 rw-p 00000000 00:00 0 \n", "garbage\n"]
    assert parse_maps(lines) == [Mapping(0x55d0c, 0x55d0e, 0x1000, 1234, "r-xp", "/opt/my app/bin (deleted)"),
                                 Mapping(0x7ffd0, 0x7ffd1, 0, 0, "rw-p", "")]


def test_a_function_dwarf_says_takes_nothing_has_no_arguments_shown() -> None:
    from coral.agentd import abi

    described = pb.FunctionMetadata(kind="go", source_file="/src/main.go", source_line=12)
    assert abi.argument_layout(described) == []
    unknown = pb.FunctionMetadata(kind="native")  # no DWARF: six registers, as arg0..arg5
    assert [s.name for s in abi.argument_layout(unknown)] == [f"arg{i}" for i in range(6)]


IDLE_RELEASE_SCRIPT = """
import duckdb, json
from coral.agentd.memory import release_idle_pages

def resident():
    kb, current = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if fields[0].count("-") == 1 and not fields[0].endswith(":"):
                current = len(fields) > 5 and "/_duckdb" in fields[5]
            elif fields[0] == "Rss:" and current:
                kb += int(fields[1])
    return kb

db = duckdb.connect()
query = "SELECT count(*), sum(i % 7) FROM range(1000000) t(i)"
first = db.execute(query).fetchall()
used = resident()
dropped = release_idle_pages()
after = resident()
print(json.dumps([used, dropped, after, first == db.execute(query).fetchall()]))
"""


def test_an_idle_agent_gives_back_duckdbs_pages_and_duckdb_still_works() -> None:
    """What the agent does once idle (memory.release_idle_pages), in a
    process of its own: DuckDB's resident code goes, and comes back from
    the file when it runs again."""
    out = subprocess.run([sys.executable, "-c", IDLE_RELEASE_SCRIPT], capture_output=True, text=True, check=True)
    used, dropped, after, same = json.loads(out.stdout)
    assert dropped > 0
    assert after < used / 2, (used, after)
    assert same


def test_only_read_only_file_mappings_without_private_pages_are_given_back() -> None:
    from coral.agentd.memory import clean_file_mappings

    smaps = """\
7f0000000000-7f0000100000 r-xp 00000000 08:01 42 /usr/lib/libLLVM-14.so.1
Size:               1024 kB
Anonymous:             0 kB
7f0000100000-7f0000180000 r--p 00100000 08:01 42 /usr/lib/libLLVM-14.so.1
Size:                512 kB
Anonymous:           300 kB
7f0000180000-7f0000190000 rw-p 00180000 08:01 42 /usr/lib/libLLVM-14.so.1
Anonymous:            64 kB
7f0000190000-7f00001a0000 r--p 00000000 00:00 0
Anonymous:             0 kB
7f00001a0000-7f00001b0000 r--p 00000000 08:01 43 /usr/lib/lib with space.so
Anonymous:             0 kB
"""
    assert clean_file_mappings(smaps.splitlines(keepends=True)) == [
        (0x7F0000000000, 0x7F0000100000, "/usr/lib/libLLVM-14.so.1"),  # code: the file has it all
        (0x7F00001A0000, 0x7F00001B0000, "/usr/lib/lib with space.so"),
    ]  # not RELRO (private copies), not writable, not anonymous
