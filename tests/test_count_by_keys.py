"""A --count-by key as data (coral/agentd/countby.py): resolved like a
--where value, refused (naming the column) where it cannot be read or is
redacted; keys shown as a user reads them, redacted as any value is; the
capture right it needs, its audit detail, and the colony's merge of the
agents' rows."""

from __future__ import annotations

import pytest

from coral.agentd import countby
from coral.agentd.countby import CB_CSTR, CB_HELD, CB_INT, CB_PAIR, Key, Row, compile_key, shown
from coral.agentd.where_native import W_ENTRY, W_RETURN
from coral.colonyd.sessions import merge_counts
from coral.daemon.access import check, values_asked
from coral.daemon.errors import InvalidArgument, PermissionDenied
from coral.daemon.server import Peer
from coral.proto import coral_pb2 as pb
from coral.redact import Rules
from tests.test_access import POLICY, identify
from tests.test_where_compile import C_FN, GO_FN

RULES = Rules(("card", "token"))


def refused(text: str, meta: pb.FunctionMetadata = C_FN) -> str:
    with pytest.raises(InvalidArgument) as exc:
        compile_key(text, meta, RULES)
    return exc.value.message


def test_keys_are_read_where_the_abi_puts_them() -> None:
    ref, amount, cents, ret = (compile_key(t, C_FN, RULES) for t in ("ref", "amount", "order->cents", "ret"))
    assert (ref.kind, ref.when, ref.reg, ref.shape) == (CB_CSTR, W_ENTRY, 0, "string")
    assert (amount.kind, amount.reg, amount.width, amount.signed) == (CB_INT, 2, 4, True)
    assert (cents.kind, cents.deref, cents.reg, cents.offset, cents.width) == (CB_INT, True, 1, 0, 8)
    assert (ret.kind, ret.when, ret.err_reg) == (CB_INT, W_RETURN, -1)  # C: no error convention
    note = compile_key("order->note", C_FN, RULES)
    assert (note.kind, note.deref, note.offset) == (CB_CSTR, True, 16)
    go_ref, go_err = compile_key("ref", GO_FN, RULES), compile_key("err", GO_FN, RULES)
    assert (go_ref.kind, go_ref.reg, go_ref.len_reg, go_ref.err_reg) == (CB_PAIR, 0, 1, 1)  # err: the 2nd result register
    assert (go_err.shape, go_err.when) == ("iface", W_RETURN)
    assert CB_HELD not in (ref.kind, go_ref.kind)


def test_refusals_name_the_column() -> None:
    assert refused("nosuch") == ("--count-by 'nosuch', column 1: charge has no argument 'nosuch'; its arguments are: "
                                 "ref, order, amount, card_number")
    assert refused("card_number").startswith("--count-by 'card_number', column 1: card_number is redacted")
    assert refused(" order->card_bin").startswith("--count-by ' order->card_bin', column 2: order->card_bin is redacted")
    assert refused("order->nope").startswith("--count-by 'order->nope', column 1: struct order * has no field 'nope'")
    assert refused("ret ==").startswith("--count-by 'ret ==', column 5:")
    assert refused("duration") == "--count-by 'duration', column 1: duration is what each row measures, not a key"
    assert refused("err").startswith("--count-by 'err', column 1: err is a Go function's error result")


def test_keys_are_shown_as_values_and_redacted_as_values() -> None:
    rules = Rules()
    amount = compile_key("amount", C_FN, RULES)
    assert shown(amount, (1 << 32) - 3, b"", rules) == ("-3", False)  # a 32-bit int, sign and all
    ref = compile_key("ref", C_FN, RULES)
    assert shown(ref, countby.STR_WHOLE, b"visa\0\0", rules) == ("visa", False)
    assert shown(ref, countby.STR_CUT, b"x" * 31, rules) == ("x" * 31, True)
    assert shown(ref, countby.STR_NULL, b"", rules) == ("NULL", False)
    number, _ = shown(ref, countby.STR_WHOLE, b"4111111111111111", rules)
    assert "4111111111111111" not in number  # a card number pattern never becomes a key
    pointer = Key("p", CB_INT, W_ENTRY, shape="pointer", signed=False)
    assert [shown(pointer, v, b"", rules)[0] for v in (0, 0x1000)] == ["NULL", "0x1000"]


def test_count_by_only_counts() -> None:
    countby.check_config(pb.UprobeConfig(count_by="ret", predicate="amount > 1"))
    with pytest.raises(InvalidArgument, match="leave out --capture-args, --sample-rate, --max-calls"):
        countby.check_config(pb.UprobeConfig(count_by="ret", capture_args=True, sample_rate=10, max_events=5))


def test_a_key_needs_the_capture_right_and_is_audited() -> None:
    request = pb.AttachUprobeRequest(service="s", function="f", config=pb.UprobeConfig(count_by="ret"))
    with pytest.raises(PermissionDenied, match="user alice may not capture"):  # keys are values
        check(POLICY, Peer(uid=1001), "AttachUprobe", request, identify)
    check(POLICY, Peer(uid=1003), "AttachUprobe", request, identify)  # carol may capture
    assert values_asked(request) == "count_by 'ret'"
    assert values_asked(pb.AttachUprobeRequest(service="s")) == "" == values_asked(pb.DetachUprobeRequest())


def test_the_colony_adds_up_rows_with_the_same_key() -> None:
    a = pb.DebugSession(counts=[pb.CountRow(key="visa", calls=3, errors=1, sum_duration_ns=30, max_duration_ns=20,
                                            histogram={5: 3}),
                                pb.CountRow(overflow=True, calls=2)])
    b = pb.DebugSession(counts=[pb.CountRow(key="visa", calls=4, sum_duration_ns=8, max_duration_ns=5, histogram={5: 1, 6: 3}),
                                pb.CountRow(key="amex", calls=9), pb.CountRow(overflow=True, calls=1)])
    merged = merge_counts([a, b])
    assert [(r.key, r.overflow, r.calls, r.errors) for r in merged] == [("amex", False, 9, 0), ("visa", False, 7, 1),
                                                                       ("", True, 3, 0)]
    assert (merged[1].sum_duration_ns, merged[1].max_duration_ns, dict(merged[1].histogram)) == (38, 20, {5: 4, 6: 3})


def test_rows_that_read_the_same_are_merged() -> None:
    rows = countby.merged([(("x", False, False, False), Row(1, 0, 5, 5, {1: 1})),
                           (("x", False, False, False), Row(2, 1, 7, 4, {1: 2}))])
    assert rows == {("x", False, False, False): Row(3, 1, 12, 5, {1: 3})}
    back = countby.from_json(countby.to_json(rows))
    assert [(r.key, r.calls, r.errors, r.max_duration_ns, dict(r.histogram)) for r in back] == [("x", 3, 1, 5, {1: 3})]


def test_the_sdk_counts_python_calls_by_key_within_its_bounds() -> None:
    from coral.sdk import countby as sdk_countby
    from coral.sdk import where as sdk_where

    class Req:
        def __init__(self, network: object) -> None:
            self.network = network

    def charge(amount: int, req: Req) -> int:
        return amount

    tally = sdk_countby.Tally(max_keys=2)
    hooks = sdk_countby.compile_counting("req.network", "amount > 0", "charge", charge, RULES.is_secret_name, tally)
    assert hooks.at_entry is not None and hooks.at_return is not None

    def call(amount: int, network: object, exc: BaseException | None = None) -> int:
        assert hooks.at_entry is not None and hooks.at_return is not None
        return hooks.at_return(hooks.at_entry(amount, Req(network)), amount, exc, 1000)

    assert call(0, "visa") == sdk_where.FILTERED  # --where keeps it out of every row
    assert [call(5, n) for n in ("visa", "visa", "amex")] == [sdk_countby.COUNTED] * 3
    call(5, "4111111111111111", ValueError("x"))  # a third key: past the maximum; a card number besides
    call(5, object())  # not a plain builtin: unread, its __str__ never run
    rows = [(r.key, r.overflow, r.unread, r.calls, r.errors) for r in tally.messages(Rules().text)]
    assert rows == [("visa", False, False, 2, 0), ("amex", False, False, 1, 0), ("", True, False, 1, 1),
                    ("", False, True, 1, 0)]
    with pytest.raises(InvalidArgument, match=r"--count-by 'req.token', column 1: 'token' is redacted"):
        sdk_countby.compile_counting("req.token", "", "charge", charge, RULES.is_secret_name, tally)
    with pytest.raises(InvalidArgument, match=r"--count-by 'nope', column 1: charge has no parameter 'nope'"):
        sdk_countby.compile_counting("nope", "", "charge", charge, RULES.is_secret_name, tally)
    tally = sdk_countby.Tally()
    tally.add("4111111111111111", None, 10)
    assert "4111111111111111" not in tally.messages(Rules().text)[0].key  # redacted as it leaves the process
