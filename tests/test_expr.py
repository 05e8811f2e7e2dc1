"""The expression language of --where, --count-by and --print (pure logic)."""

from __future__ import annotations

import pytest

from coral import expr
from coral.expr import And, Compare, ExprError, Literal, Not, Or, Path, Raised, StartsWith, Truthy


def test_the_old_single_comparison_still_parses() -> None:
    node = expr.parse_condition("amount_cents>1000")
    assert isinstance(node, Compare)
    assert node.left == Path(("amount_cents",), (), 1)
    assert node.op == ">"
    assert node.right == Literal(1000, "int", 14)


def test_and_binds_tighter_than_or_and_parentheses_group() -> None:
    node = expr.parse_condition("a == 1 || b == 2 && c == 3")
    assert isinstance(node, Or)
    assert isinstance(node.operands[1], And)
    grouped = expr.parse_condition("(a == 1 || b == 2) && !(c == 3)")
    assert isinstance(grouped, And)
    assert isinstance(grouped.operands[0], Or)
    assert isinstance(grouped.operands[1], Not)
    assert str(grouped) == "(a == 1 || b == 2) && !(c == 3)"


def test_what_an_engineer_on_call_writes() -> None:
    text = 'order->cents > 1000 && startswith(card, "4111") && duration > 5ms && ret < 0'
    node = expr.parse_condition(text)
    assert isinstance(node, And)
    field, prefix, slow, failed = node.operands
    assert isinstance(field, Compare) and field.left == Path(("order", "cents"), (True,), 1)
    assert prefix == StartsWith(Path(("card",), (), text.index("card") + 1), "4111")
    assert isinstance(slow, Compare) and slow.right == Literal(5_000_000, "duration", text.index("5ms") + 1)
    assert isinstance(failed, Compare) and failed.left == Path(("ret",), (), text.index("ret") + 1)
    assert [str(p) for p in expr.paths_in(node)] == ["order->cents", "card", "duration", "ret"]


@pytest.mark.parametrize("text,ns", [("1ns", 1), ("250us", 250_000), ("250µs", 250_000), ("1.5ms", 1_500_000),
                                     ("2s", 2_000_000_000)])
def test_durations_take_a_unit(text: str, ns: int) -> None:
    node = expr.parse_condition(f"duration >= {text}")
    assert isinstance(node, Compare) and node.right == Literal(ns, "duration", 13)


def test_errors_of_each_language() -> None:
    go = expr.parse_condition("err != nil")
    assert isinstance(go, Compare) and go.right == Literal(None, "nil", 8)
    assert expr.parse_condition("raised") == Raised(None, 1)
    assert expr.parse_condition("raised(ValueError)") == Raised("ValueError", 1)
    assert expr.parse_condition("raised(http.client.HTTPException)") == Raised("http.client.HTTPException", 1)
    assert expr.parse_condition("err") == Truthy(Path(("err",), (), 1))


def test_python_attributes_and_strings() -> None:
    text = "req.amount >= 0x10 && req.currency == 'EUR' && is_retry"
    node = expr.parse_condition(text)
    assert isinstance(node, And)
    amount, currency, retry = node.operands
    assert isinstance(amount, Compare) and amount.right == Literal(16, "int", text.index("0x") + 1)
    assert isinstance(currency, Compare) and currency.right == Literal("EUR", "string", text.index("'EUR") + 1)
    assert retry == Truthy(Path(("is_retry",), (), text.index("is_retry") + 1))


@pytest.mark.parametrize("text,column,words", [
    ("amount > ", 10, "expected a value"),
    ("amount >> 3", 9, "expected a value"),
    ("amount = 3", 8, "write == to compare"),
    ("(a == 1", 8, "')' to close the '(' at column 1"),
    ("a == 1 b == 2", 8, "join tests with && or ||"),
    ("5ms > duration2", 1, "only `duration` compares with one"),
    ("duration > 'x'", 12, "duration compares with a duration"),
    ("name < 'x'", 6, "compares only with == or !="),
    ("1 == 2", 1, "compares two constants"),
    ("startswith(card, 4111)", 18, "must be a quoted string"),
    ("a->", 4, "expected a field name after '->'"),
    ("a.b.c.d == 1", 7, "at most 3 names"),
    ("duration.x > 1", 1, "duration has no fields"),
    ("", 1, "empty condition"),
    ("amount @ 3", 8, "unexpected '@'"),
    ("raised(3)", 8, "exception class name"),
    ("42", 3, "a constant alone is not a test"),
])
def test_a_mistake_is_one_line_that_points_at_its_column(text: str, column: int, words: str) -> None:
    with pytest.raises(ExprError) as caught:
        expr.parse_condition(text)
    assert caught.value.column == column, str(caught.value)
    assert words in caught.value.message
    line = expr.described(text, caught.value)
    assert "\n" not in line and f"column {column}:" in line


def test_bounds_hold_before_any_work() -> None:
    with pytest.raises(ExprError, match="longer than 512"):
        expr.parse_condition("a == 1 && " * 60 + "a == 1")
    with pytest.raises(ExprError, match="more than 16 tests"):
        expr.parse_condition(" || ".join(f"a == {i}" for i in range(17)))
    with pytest.raises(ExprError, match="nested more than 8 deep"):
        expr.parse_condition("!" * 9 + "a")
    with pytest.raises(ExprError, match="nested more than 8 deep"):
        expr.parse_condition("(" * 10 + "a" + ")" * 10)
    with pytest.raises(ExprError, match="at most 64 bytes"):
        expr.parse_condition('s == "' + "x" * 65 + '"')


@pytest.mark.parametrize("garbage", ["\x00", "'unterminated", "a == \"\\", "((((", "&&", "!", "a ||",
                                     "ret->", "\u202e", "a == 99999999999999999999999999"])
def test_garbage_is_an_error_or_a_tree_never_a_crash(garbage: str) -> None:
    try:
        expr.parse_condition(garbage)
    except ExprError as exc:
        assert exc.column >= 1


def test_reading_values_needs_the_capture_right_duration_and_raised_do_not() -> None:
    assert not expr.reads_values(expr.parse_condition("duration > 5ms || raised"))
    assert expr.reads_values(expr.parse_condition("duration > 5ms || ret == 0"))


def test_a_count_by_key_is_one_path() -> None:
    assert expr.parse_value("ret") == Path(("ret",), (), 1)
    assert expr.parse_value(" req.card_type") == Path(("req", "card_type"), (False,), 2)
    with pytest.raises(ExprError, match="column 5"):
        expr.parse_value("ret == 1")
    with pytest.raises(ExprError, match="a key is"):
        expr.parse_value("42")


def test_a_print_template_names_what_it_captures() -> None:
    template = expr.parse_template("charged {amount} -> {ret} in {duration} {{ok}}")
    assert [str(p) for p in template.paths] == ["amount", "ret", "duration"]
    assert template.render(["100", "0", "5ms"]) == "charged 100 -> 0 in 5ms {ok}"
    with pytest.raises(ExprError) as caught:
        expr.parse_template("charged {amount ->}")
    assert caught.value.column == 19
    with pytest.raises(ExprError, match="never closed"):
        expr.parse_template("charged {amount")
