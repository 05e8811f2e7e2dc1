"""What the agent decides of --where and --errors-only before anything is
armed or probed (coral/agentd/conditions.py): pure functions of the
request and the function's metadata."""

from __future__ import annotations

import pytest

from coral.agentd.conditions import check_python, effective, language
from coral.agentd.sessions import native_predicate
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


def test_errors_only_on_go_says_what_the_kernel_cannot_do_yet() -> None:
    """Until the native condition evaluates `err != nil`, the refusal names it."""
    go = pb.FunctionMetadata(name="main.charge", kind="go", arguments=[pb.ArgumentMetadata(name="n", type="int")])
    try:
        native_predicate(pb.UprobeConfig(errors_only=True), go)
    except InvalidArgument as exc:
        assert exc.message.startswith("--errors-only on main.charge needs 'err != nil' evaluated in the kernel")


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
