"""A native --where condition as data (coral/agentd/where_native.py): names
resolved against the function's metadata, refusals that name the column,
and the table the kernel works out, checked here against Python's own
three-valued logic."""

from __future__ import annotations

import itertools

import pytest

from coral.agentd import where_native as c
from coral.daemon.errors import InvalidArgument
from coral.proto import coral_pb2 as pb
from coral.redact import Rules

RULES = Rules(("card", "token"))

C_FN = pb.FunctionMetadata(name="charge", kind="c", source_file="charge.c", arguments=[
    pb.ArgumentMetadata(name="ref", type="const char *"),
    pb.ArgumentMetadata(name="order", type="struct order *", fields=[
        pb.FieldMetadata(name="cents", type="long", offset=0, size=8),
        pb.FieldMetadata(name="items", type="unsigned char", offset=8, size=1),
        pb.FieldMetadata(name="note", type="char *", offset=16, size=8),
        pb.FieldMetadata(name="card_bin", type="int", offset=24, size=4)]),
    pb.ArgumentMetadata(name="amount", type="int"),
    pb.ArgumentMetadata(name="card_number", type="long"),
], return_values=[pb.ReturnValueMetadata(type="int")])

GO_FN = pb.FunctionMetadata(name="main.charge", kind="go", source_file="charge.go", arguments=[
    pb.ArgumentMetadata(name="ref", type="string", go=pb.GoValueMetadata(underlying="string", int_registers=2)),
    pb.ArgumentMetadata(name="n", type="int", go=pb.GoValueMetadata(underlying="int", int_registers=1)),
], return_values=[pb.ReturnValueMetadata(type="int", go=pb.GoValueMetadata(underlying="int", int_registers=1)),
                  pb.ReturnValueMetadata(type="error", go=pb.GoValueMetadata(underlying="error", int_registers=2))])


def compiled(text: str, meta: pb.FunctionMetadata = C_FN) -> c.Program:
    program = c.compile_condition(text, meta, RULES)
    assert program is not None
    return program


def refused(text: str, meta: pb.FunctionMetadata = C_FN) -> str:
    with pytest.raises(InvalidArgument) as exc:
        c.compile_condition(text, meta, RULES)
    return exc.value.message


def test_values_are_found_where_the_abi_puts_them() -> None:
    p = compiled('ref == "ab" && order->items > 3 && amount < -2 && startswith(order->note, "x") && ret != 0')
    ref, items, amount, note, ret = p.terms
    assert (ref.kind, ref.reg, ref.op, ref.text, ref.when) == (c.WK_CSTR, 0, c.W_SEQ, b"ab", c.W_ENTRY)
    assert (items.deref, items.reg, items.offset, items.width, items.signed) == (True, 1, 8, 1, False)
    assert (amount.reg, amount.width, amount.signed, amount.op, amount.negate, amount.value) == (2, 4, True, c.W_LT,
                                                                                                 False, -2)
    assert (note.kind, note.deref, note.offset, note.op) == (c.WK_CSTR, True, 16, c.W_PREFIX)
    assert (ret.when, ret.op, ret.negate) == (c.W_RETURN, c.W_EQ, True)
    assert p.entry_mask == 0b01111 and p.return_terms == (4,)
    go = compiled('ref == "x" && n >= 3 || err != nil', GO_FN)
    assert (go.terms[0].kind, go.terms[0].reg, go.terms[0].len_reg) == (c.WK_PAIR, 0, 1)
    assert (go.terms[1].reg, go.terms[1].width, go.terms[1].op, go.terms[1].negate) == (2, 8, c.W_LT, True)
    assert (go.terms[2].when, go.terms[2].reg, go.terms[2].op, go.terms[2].negate) == (c.W_RETURN, 1, c.W_EQ, True)


@pytest.mark.parametrize(("text", "message"), [
    ("amount > 1 && x > 1", "--where 'amount > 1 && x > 1', column 15: charge has no argument 'x'; its arguments "
                            "are: ref, order, amount, card_number"),
    ("order->cent > 1", "--where 'order->cent > 1', column 1: struct order * has no field 'cent'; its fields are: "
                        "cents, items, note, card_bin"),
    ("ref > 1", "--where 'ref > 1', column 7: ref is a string (const char *): compare it with == or != to a quoted "
                "string, or use startswith(ref, \"...\")"),
    ('amount == "x"', "--where 'amount == \"x\"', column 11: amount is an integer (int), not a string: compare it "
                      "with a number"),
    ("err != nil", "--where 'err != nil', column 1: err is a Go function's error result; charge is not Go: test its "
                   "return value, e.g. ret < 0"),
    ("raised", "--where 'raised', column 1: raised is for Python functions; charge is C, whose exceptions and panics "
               "are not values a probe can test (calls they end are counted as unwound): test its result instead "
               "(ret < 0; err != nil in Go)"),
    ("card_number > 1", "--where 'card_number > 1', column 1: card_number is redacted (its name is a secret's): a "
                        "condition on it would reveal it"),
    ("order->card_bin == 4", "--where 'order->card_bin == 4', column 1: order->card_bin is redacted (its name is a "
                             "secret's): a condition on it would reveal it"),
    ("amount > 3000000000", "--where 'amount > 3000000000', column 10: 3000000000 is out of range of amount (int: "
                            "32-bit signed)"),
    ("amount > ref", "--where 'amount > ref', column 10: compares amount with ref; a native condition compares a "
                     "value with a constant"),
])
def test_refusals_name_the_column(text: str, message: str) -> None:
    assert refused(text) == message


def test_at_most_four_tests_read_at_the_return() -> None:
    compiled("ret == 1 || ret == 2 || duration > 1ms || ret == 4")
    assert "at most 4 tests of ret, err and duration" in refused("ret == 1 || ret == 2 || ret == 3 || ret == 4 || "
                                                                  "ret == 5")


def _kleene(node: object, answers: dict[int, bool | None], terms: list[object]) -> bool | None:
    """Three-valued logic on the parse tree, term by term as the compiler numbered them."""
    from coral import expr
    if isinstance(node, expr.Not):
        v = _kleene(node.operand, answers, terms)
        return None if v is None else not v
    if isinstance(node, (expr.And, expr.Or)):
        vs = [_kleene(o, answers, terms) for o in node.operands]
        decided = (False in vs) if isinstance(node, expr.And) else (True in vs)
        if decided:
            return not isinstance(node, expr.And)
        return None if None in vs else isinstance(node, expr.And)
    terms.append(node)
    return answers[len(terms) - 1]


@pytest.mark.parametrize("text", [
    "amount > 1", "!(amount > 1)", "amount > 1 && ret < 0", "amount > 1 || ret < 0 || duration > 5ms",
    '!(startswith(ref, "a") && (order->cents > 5 || duration > 1ms)) || !(ret == 3)',
    "!!amount && (order == nil || order->cents > 5)",
])
def test_the_table_is_the_conditions_three_valued_answer(text: str) -> None:
    """For every answer of every term (true, false, unread: entry terms),
    the table the kernel computes holds what the condition says."""
    from coral import expr
    p = compiled(text)
    node = expr.parse_condition(text)
    n = len(p.terms)
    for values in itertools.product((True, False, None), repeat=n):
        answers = dict(enumerate(values))
        if any(v is None for i, v in answers.items() if p.terms[i].when != c.W_ENTRY):
            continue  # return values are registers: always read
        returns = sum(1 << j for j, i in enumerate(p.return_terms) if answers[i])
        expected = _kleene(node, answers, [])
        entry = [answers[i] if p.terms[i].when == c.W_ENTRY else False for i in range(n)]
        assert p.holds(entry, returns) == expected, (text, values)
