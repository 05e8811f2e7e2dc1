"""What the agent decides of --where and --errors-only before anything is
armed or probed (coral/agentd/conditions.py): pure functions of the
request and the function's metadata."""

from __future__ import annotations

import pytest

from coral.agentd.conditions import check_python, effective, language
from coral.agentd.sessions import native_condition
from coral.agentd.where_native import W_RETURN
from coral.daemon.errors import InvalidArgument
from coral.proto import coral_pb2 as pb
from coral.redact import Rules


def meta(kind: str = "native", source: str = "", name: str = "f") -> pb.FunctionMetadata:
    return pb.FunctionMetadata(name=name, kind=kind, source_file=source)


def test_the_language_of_a_function() -> None:
    assert [language(meta("python")), language(meta("go", "main.go")), language(meta(source="/src/pay.c")),
            language(meta(source="pay.cc")), language(meta(source="pay.cpp")), language(meta(source="lib.rs")),
            language(meta())] == ["python", "go", "c", "c++", "c++", "rust", ""]


def test_errors_only_is_the_error_condition_of_the_language_and_ed_with_where() -> None:
    only = pb.UprobeConfig(errors_only=True)
    both = pb.UprobeConfig(errors_only=True, predicate="amount > 5 || duration > 1ms")
    assert effective(only, meta("python")) == "raised"
    assert effective(both, meta("python")) == "(amount > 5 || duration > 1ms) && raised"
    assert effective(both, meta("go")) == "(amount > 5 || duration > 1ms) && err != nil"
    assert effective(pb.UprobeConfig(predicate="x > 1"), meta(source="a.c")) == "x > 1"  # without it: --where as is


@pytest.mark.parametrize(("source", "message"), [
    ("pay.c", "--errors-only: C has no error convention, so validate_card has no failed calls to pick; say what "
              "failure means with --where, e.g. --where 'ret < 0'"),
    ("pay.cpp", "--errors-only is not supported for C++ yet: calls that leave by an exception or a panic are not "
                "reported; write --where on the return value instead, e.g. --where 'ret != 0'"),
    ("pay.rs", "--errors-only is not supported for Rust yet"),
    ("", "--errors-only: the language of validate_card is not known"),
])
def test_errors_only_refused_where_there_is_no_convention(source: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        effective(pb.UprobeConfig(errors_only=True), meta(source=source, name="validate_card"))
    assert info.value.message.startswith(message)


def test_errors_only_on_go_is_err_evaluated_in_the_kernel() -> None:
    one = pb.GoValueMetadata(underlying="int", int_registers=1)
    go = pb.FunctionMetadata(name="main.charge", kind="go", arguments=[pb.ArgumentMetadata(name="n", type="int", go=one)],
                             return_values=[pb.ReturnValueMetadata(type="int", go=one), pb.ReturnValueMetadata(
                                 type="error", go=pb.GoValueMetadata(underlying="error", int_registers=2))])
    program = native_condition(pb.UprobeConfig(errors_only=True), go, Rules(()))
    assert program is not None and [(t.when, t.reg, t.negate) for t in program.terms] == [(W_RETURN, 1, True)]


def test_what_the_agent_refuses_of_a_python_condition() -> None:
    rules = Rules(("card", "password"))
    check_python('amount > 5 && startswith(req.name, "x") || raised(ValueError)', rules)
    for text, message in [
        ("err != nil", "--where 'err != nil', column 1: err is a Go function's error result; for Python write "
                       "raised or raised(ValueError)"),
        ("amount > 1 && req.card_number == 4", "--where 'amount > 1 && req.card_number == 4', column 15: "
                                               "'card_number' is redacted; a condition on it would reveal it"),
        ("amount >", "--where 'amount >', column 9: expected a value"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            check_python(text, rules)
        assert info.value.message.startswith(message), info.value.message
