"""The [access] policy: unit-tested as a pure decision, and for real with a
non-root user talking to a live colony."""

from __future__ import annotations

import json
import pwd
import subprocess
from pathlib import Path

import pytest

from coral.daemon.access import check
from coral.daemon.config import AccessConfig
from coral.daemon.errors import PermissionDenied
from coral.daemon.server import Peer
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, running, start_attach, tool

PEOPLE = {1001: ("alice", {"coral", "alice"}), 1002: ("bob", {"bob"}), 1003: ("carol", {"sre", "coral"})}
POLICY = AccessConfig(list=("@coral", "bob"), attach=("@coral",), capture=("carol",))


def identify(uid: int) -> tuple[str, set[str]]:
    return PEOPLE[uid]


def attach(capture: bool) -> pb.AttachUprobeRequest:
    return pb.AttachUprobeRequest(service="s", function="f", config=pb.UprobeConfig(capture_args=capture))


def test_rights_by_user_and_group() -> None:
    check(POLICY, Peer(uid=1002), "ListServices", pb.ListServicesRequest(), identify)  # bob, by name
    check(POLICY, Peer(uid=1001), "AttachUprobe", attach(False), identify)  # alice, by @coral
    check(POLICY, Peer(uid=1003), "AttachUprobe", attach(True), identify)  # carol may capture
    check(POLICY, Peer(uid=0), "AttachUprobe", attach(True), identify)  # root may always
    check(POLICY, Peer(uid=1002), "Ping", pb.PingRequest(), identify)  # no right needed
    with pytest.raises(PermissionDenied, match=r"user bob may not attach \(needs \[access\] attach, which admits @coral\)"):
        check(POLICY, Peer(uid=1002), "AttachUprobe", attach(False), identify)
    with pytest.raises(PermissionDenied, match="user alice may not capture"):
        check(POLICY, Peer(uid=1001), "AttachUprobe", attach(True), identify)
    where = pb.AttachUprobeRequest(service="s", function="f", config=pb.UprobeConfig(predicate="amount>1000"))
    with pytest.raises(PermissionDenied, match="user alice may not capture"):  # a filter on values reveals them
        check(POLICY, Peer(uid=1001), "AttachUprobe", where, identify)
    # A condition on only the duration and the exception reveals no value, native or Python; nor --errors-only.
    timing = pb.UprobeConfig(predicate="duration > 5ms || raised(ValueError)", errors_only=True)
    check(POLICY, Peer(uid=1001), "AttachUprobe", pb.AttachUprobeRequest(service="s", function="f", config=timing),
          identify)
    for text in ("ret < 0 && duration > 5ms", "duration > 5ms && req.amount > 3", "not a condition"):
        values = pb.AttachUprobeRequest(service="s", function="f", config=pb.UprobeConfig(predicate=text))
        with pytest.raises(PermissionDenied, match="user alice may not capture"):
            check(POLICY, Peer(uid=1001), "AttachUprobe", values, identify)
    with pytest.raises(PermissionDenied, match="identity is unknown"):
        check(POLICY, Peer(), "ListServices", pb.ListServicesRequest(), identify)


def test_a_denied_user_is_refused_and_audited(coral_env: CoralEnv, bpf: None, payments_binary: Path,
                                               member: pwd.struct_passwd, colony_user: pwd.struct_passwd,
                                               tmp_path: Path) -> None:
    user = member.pw_name
    coral_env.open_to_members(f'[access]\nlist = ["{user}"]\nattach = ["{user}"]\ncapture = ["root"]\n')
    with running(coral_env, payments_binary, colony_user):  # the colony confined as its unit
        def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([tool("coralctl"), *args], env=coral_env.env, capture_output=True, text=True,
                                  timeout=60, user=member.pw_uid, group=member.pw_gid, extra_groups=["coral"])

        from tests.test_native_e2e import wait_for_service

        wait_for_service(coral_env, "payments")
        listed = as_operator("--output", "json", "services")
        assert listed.returncode == 0 and json.loads(listed.stdout)["service"] == "payments", listed.stderr
        timing = as_operator("debug", "attach", "payments", "--function", "validate_card", "--duration", "1s", "--no-save")
        assert timing.returncode == 0, timing.stderr
        capture = as_operator("debug", "attach", "payments", "--function", "validate_card", "--capture-args")
        assert capture.returncode == 1
        assert capture.stderr.strip() == (f"coralctl: user {user} may not capture "
                                          "(needs [access] capture, which admits root)")
        log = subprocess.run([tool("coralctl"), "--output", "json", "audit"], env=coral_env.env, capture_output=True, text=True)
        audit = [json.loads(line) for line in log.stdout.splitlines()]
        denied = [e for e in audit if e["outcome"] == "PERMISSION_DENIED"]
        assert denied and denied[-1]["who"] == f"uid:{member.pw_uid}" and denied[-1]["function"] == "validate_card"


def test_a_member_with_only_list_sees_timings_not_values(coral_env: CoralEnv, bpf: None, payments_binary: Path,
                                                         member: pwd.struct_passwd,
                                                         colony_user: pwd.struct_passwd) -> None:
    """Root captures arguments and returns; a member who may list (not
    capture) reads the same session, through the colony and through the
    agent's local socket: every call is there, every value withheld."""
    coral_env.open_to_members('[access]\nlist = ["@coral"]\nattach = ["@coral"]\ncapture = []\n')
    with running(coral_env, payments_binary, colony_user) as service:  # the colony confined as its unit
        from tests.test_native_e2e import wait_for_service

        wait_for_service(coral_env, "payments")
        attach, session = start_attach(coral_env, "payments", "validate_card", "--duration", "2s", "--no-save",
                                       "--capture-args", "--capture-return")
        assert service.call(5).startswith("done 5 ")
        attach.wait(30)

        def events(*args: str, user: pwd.struct_passwd | None = None) -> list[dict[str, object]]:
            argv = [tool("coralctl"), *args, "--output", "json", "debug", "events", session["session_id"]]
            creds = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": ["coral"]} if user else {}
            out = subprocess.run(argv, env=coral_env.env, capture_output=True, text=True, timeout=60, **creds)  # type: ignore[call-overload]
            assert out.returncode == 0, out.stderr
            return [e for e in map(json.loads, out.stdout.splitlines()) if e["kind"] == "call"]

        def values(evs: list[dict[str, object]]) -> set[str]:
            found = {str(a["value"]) for e in evs for a in e.get("args", [])}  # type: ignore[attr-defined]
            return found | {str(e["return_value"]["value"]) for e in evs if e.get("return_value")}  # type: ignore[index]

        seen_by_root = events()
        assert len(seen_by_root) == 5 and values(seen_by_root) - {"", "<withheld>"}
        for where in ((), ("--local",)):
            seen = events(*where, user=member)
            assert [e["duration_ns"] for e in seen] == [e["duration_ns"] for e in seen_by_root], where
            assert values(seen) <= {"", "<withheld>"} and "<withheld>" in values(seen), (where, values(seen))
