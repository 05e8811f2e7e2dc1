"""What the agent decides of --where and --errors-only before anything is
armed or probed (coral/agentd/conditions.py): pure functions of the
request and the function's metadata."""

from __future__ import annotations

import pytest

from coral.agentd.conditions import check_python, effective, language
from coral.agentd.sessions import native_condition
from coral.agentd.where_native import NO_RETURN, W_RETURN, WHERE_PUSH_RET, errors_program
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


def _rust_result(name: str, size: int, err_default: bool = False) -> pb.FunctionMetadata:
    """A Rust function returning Result<i64, i64> (tag at 0, payload at 8), or a niche layout whose Err is the
    dataful variant (Ok: the value 0 of an 8-byte niche, Err: every other)."""
    if err_default:
        variants = pb.EnumMetadata(size=8, discriminant=pb.FieldMetadata(offset=0, size=8), variants=[
            pb.VariantMetadata(name="Ok", discriminant=0),
            pb.VariantMetadata(name="Err", is_default=True, payload=[pb.FieldMetadata(name="0", type="&str", offset=0,
                                                                                     size=8)])])
    else:
        payload = [pb.FieldMetadata(name="0", type="i64", offset=8, size=8)]
        variants = pb.EnumMetadata(size=size, discriminant=pb.FieldMetadata(offset=0, size=8), variants=[
            pb.VariantMetadata(name="Ok", discriminant=0, payload=payload),
            pb.VariantMetadata(name="Err", discriminant=1, payload=payload)])
    ret = pb.ReturnValueMetadata(type="core::result::Result<i64, i64>")
    if size <= 16:
        ret.variants.CopyFrom(variants)
    return pb.FunctionMetadata(name=name, kind="native", source_file="src/lib.rs", return_values=[ret])


def test_errors_only_on_cpp_and_rust_keeps_the_unwound_calls_and_tests_a_result_for_err() -> None:
    """C++: no return is an error (the calls that throw are kept as they are
    found unwound); Rust: a Result's Err at the return, by its discriminant."""
    only = pb.UprobeConfig(errors_only=True)
    cpp = meta(source="pay.cpp", name="charge")
    assert effective(only, cpp) == ""
    assert native_condition(only, cpp, Rules(())) == NO_RETURN and NO_RETURN.table() == 0  # every return filtered
    program, what = errors_program(_rust_result("charge", 16))
    assert what == "calls that panic or return Err"
    assert [(t.when, t.reg, t.width, t.value, t.negate) for t in program.terms] == [(W_RETURN, 0, 8, 1, False)]
    assert program.result == WHERE_PUSH_RET and program.holds([], 1) and not program.holds([], 0)
    niche, _ = errors_program(_rust_result("charge", 8, err_default=True))
    assert [(t.value, t.negate) for t in niche.terms] == [(0, True)]  # Err: every value but Ok's
    rust_int = pb.FunctionMetadata(name="total", kind="native", source_file="src/lib.rs",
                                   return_values=[pb.ReturnValueMetadata(type="i64")])
    assert errors_program(rust_int) == (NO_RETURN, "calls that panic (total returns no Result)")


@pytest.mark.parametrize(("config", "function", "message"), [
    (pb.UprobeConfig(errors_only=True, predicate="x > 1"), meta(source="pay.cpp"),
     "--errors-only with --where is not supported for C++: a call that leaves by an exception or a panic has no "
     "return for the condition to test; use one or the other"),
    (pb.UprobeConfig(errors_only=True), _rust_result("load", 40),
     "--errors-only: load returns core::result::Result<i64, i64> in memory, not in registers (more than 16 bytes, or "
     "variants with more than one value), so the probe cannot test it for Err; attach without --errors-only"),
])
def test_errors_only_on_cpp_and_rust_refuses_what_it_cannot_test(config: pb.UprobeConfig, function: pb.FunctionMetadata,
                                                                  message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        native_condition(config, function, Rules(()))
    assert info.value.message == message


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
