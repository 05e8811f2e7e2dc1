"""The small language of `--where`, `--count-by` and `--print`.

One parser, used three times: by coralctl (to point at a typing mistake
before anything is sent), by the agent (which resolves the names against
the function and, for native code, turns the condition into data the one
loaded BPF program evaluates), and by the SDK (which evaluates it for a
Python function). The text travels; each side parses it again and trusts
nothing it did not parse itself.

    condition := or
    or        := and ('||' and)*
    and       := not ('&&' not)*
    not       := '!' not | '(' condition ')' | test
    test      := value [OP value]          OP: == != < <= > >=
               | 'startswith' '(' value ',' STRING ')'
               | 'raised' ['(' NAME ')']
    value     := path | INTEGER | STRING | DURATION | 'nil' | 'true' | 'false'
    path      := NAME (('.' | '->') NAME)*

A path starts with an argument's name, `ret` (the return value), `err`
(a Go function's error result) or `duration`. A bare path is true when it
is non-zero (`is_retry`, `err`). Durations are written with a unit: `5ms`,
`250us`, `2s`, `100ns`. Everything is bounded (text, terms, nesting,
string constants) so that a condition can be evaluated in bounded time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_TEXT = 512  # characters of one expression
MAX_TERMS = 16  # tests (comparisons, startswith, raised, bare values) in one condition
MAX_DEPTH = 8  # nested parentheses and `!`
MAX_STRING = 64  # bytes of one string constant
MAX_PATH = 3  # names in one path: `order->card->bin`

COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")
KEYWORDS = ("nil", "true", "false", "startswith", "raised")
UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


class ExprError(ValueError):
    """A mistake in an expression, with the column (1-based) it starts at."""

    def __init__(self, message: str, column: int, text: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.text = text

    def __str__(self) -> str:
        return f"column {self.column}: {self.message}"


# --- the tree ------------------------------------------------------------


@dataclass(frozen=True)
class Path:
    """An argument, `ret`, `err` or `duration`, then fields or attributes."""

    names: tuple[str, ...]
    arrows: tuple[bool, ...]  # arrows[i]: names[i + 1] was reached with `->` (else `.`)
    column: int

    @property
    def root(self) -> str:
        return self.names[0]

    def __str__(self) -> str:
        out = self.names[0]
        for arrow, name in zip(self.arrows, self.names[1:], strict=True):
            out += ("->" if arrow else ".") + name
        return out


@dataclass(frozen=True)
class Literal:
    value: int | str | None  # None: nil
    kind: str  # int | string | duration | nil | bool
    column: int

    def __str__(self) -> str:
        if self.kind == "string":
            return '"' + str(self.value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        if self.kind == "nil":
            return "nil"
        if self.kind == "bool":
            return "true" if self.value else "false"
        if self.kind == "duration":
            return f"{self.value}ns"
        return str(self.value)


Value = Path | Literal


@dataclass(frozen=True)
class Compare:
    left: Value
    op: str
    right: Value

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"


@dataclass(frozen=True)
class Truthy:
    """A bare path: true when the value is non-zero (or not nil, or not empty)."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class StartsWith:
    path: Path
    prefix: str

    def __str__(self) -> str:
        return f"startswith({self.path}, {Literal(self.prefix, 'string', 0)})"


@dataclass(frozen=True)
class Raised:
    """The call raised (Python); `exception` narrows it to that class or a subclass."""

    exception: str | None
    column: int

    def __str__(self) -> str:
        return f"raised({self.exception})" if self.exception else "raised"


@dataclass(frozen=True)
class Not:
    operand: Node

    def __str__(self) -> str:
        return f"!({self.operand})"


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]

    def __str__(self) -> str:
        return " && ".join(_grouped(o) for o in self.operands)


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]

    def __str__(self) -> str:
        return " || ".join(_grouped(o) for o in self.operands)


Node = Compare | Truthy | StartsWith | Raised | Not | And | Or


def _grouped(node: Node) -> str:
    return f"({node})" if isinstance(node, (And, Or)) else str(node)


# --- tokens --------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<duration>\d+(?:\.\d+)?(?:ns|us|µs|ms|s)\b)
  | (?P<int>-?(?:0[xX][0-9a-fA-F_]+|\d[\d_]*))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op>==|!=|<=|>=|&&|\|\||->|[<>!(),.])
""", re.VERBOSE)


@dataclass(frozen=True)
class Token:
    kind: str  # duration | int | name | string | op | end
    text: str
    column: int


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_TEXT:
        raise ExprError(f"longer than {MAX_TEXT} characters", MAX_TEXT + 1, text)
    tokens: list[Token] = []
    at = 0
    while at < len(text):
        m = _TOKEN.match(text, at)
        if m is None:
            ch = text[at]
            hint = " (write == to compare)" if ch == "=" else ""
            raise ExprError(f"unexpected {ch!r}{hint}", at + 1, text)
        kind = m.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, m.group(), at + 1))
        at = m.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


def _string_value(token: Token, text: str) -> str:
    body = token.text[1:-1]
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append({"n": "\n", "t": "\t", "0": "\0"}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    value = "".join(out)
    if len(value.encode()) > MAX_STRING:
        raise ExprError(f"a string constant holds at most {MAX_STRING} bytes", token.column, text)
    return value


def _duration_ns(token: Token) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s)", token.text)
    if m is None:  # the tokenizer matched the same pattern
        raise ExprError(f"not a duration: {token.text}", token.column)
    return round(float(m.group(1)) * UNITS[m.group(2)])


# --- the parser ----------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.at = 0
        self.terms = 0

    def peek(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def error(self, message: str, token: Token | None = None) -> ExprError:
        return ExprError(message, (token or self.peek()).column, self.text)

    def expect(self, text: str, what: str) -> Token:
        token = self.peek()
        if token.kind != "op" or token.text != text:
            raise self.error(f"expected {what}, found {_shown(token)}")
        return self.take()

    def end(self) -> None:
        token = self.peek()
        if token.kind != "end":
            hint = " (join tests with && or ||)" if token.kind in ("name", "int", "string", "duration") else ""
            raise self.error(f"unexpected {_shown(token)}{hint}")

    # condition := or
    def condition(self, depth: int = 0) -> Node:
        if depth > MAX_DEPTH:
            raise self.error(f"nested more than {MAX_DEPTH} deep")
        operands = [self.conjunction(depth)]
        while self.peek().text == "||" and self.peek().kind == "op":
            self.take()
            operands.append(self.conjunction(depth))
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def conjunction(self, depth: int) -> Node:
        operands = [self.negation(depth)]
        while self.peek().text == "&&" and self.peek().kind == "op":
            self.take()
            operands.append(self.negation(depth))
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def negation(self, depth: int) -> Node:
        token = self.peek()
        if token.kind == "op" and token.text == "!":
            self.take()
            if depth + 1 > MAX_DEPTH:
                raise self.error(f"nested more than {MAX_DEPTH} deep", token)
            return Not(self.negation(depth + 1))
        if token.kind == "op" and token.text == "(":
            self.take()
            inner = self.condition(depth + 1)
            self.expect(")", "')' to close the '(' at column " + str(token.column))
            return inner
        return self.test()

    def test(self) -> Node:
        token = self.peek()
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise self.error(f"more than {MAX_TERMS} tests in one expression")
        if token.kind == "name" and token.text == "startswith":
            self.take()
            self.expect("(", "'(' after startswith")
            path = self.path()
            self.expect(",", "',' between startswith's value and its prefix")
            prefix = self.peek()
            if prefix.kind != "string":
                raise self.error(f"startswith's prefix must be a quoted string, found {_shown(prefix)}")
            self.take()
            self.expect(")", "')' to close startswith(")
            return StartsWith(path, _string_value(prefix, self.text))
        if token.kind == "name" and token.text == "raised":
            self.take()
            if self.peek().kind == "op" and self.peek().text == "(":
                self.take()
                name = self.peek()
                if name.kind != "name":
                    raise self.error(f"raised( takes an exception class name, found {_shown(name)}")
                self.take()
                dotted = name.text
                while self.peek().kind == "op" and self.peek().text == ".":
                    self.take()
                    part = self.peek()
                    if part.kind != "name":
                        raise self.error(f"expected a name after '.', found {_shown(part)}")
                    dotted += "." + self.take().text
                self.expect(")", "')' to close raised(")
                return Raised(dotted, token.column)
            return Raised(None, token.column)
        left = self.value()
        op = self.peek()
        if op.kind == "op" and op.text in COMPARISONS:
            self.take()
            right = self.value()
            return _checked(Compare(left, op.text, right), op, self.text)
        if isinstance(left, Literal):
            raise self.error(f"a constant alone is not a test; compare it: NAME {op.text or '=='} {left}"
                             if op.kind == "end" else f"expected a comparison after {left}, found {_shown(op)}", op)
        return Truthy(left)

    def value(self) -> Value:
        token = self.peek()
        if token.kind == "int":
            self.take()
            return Literal(int(token.text.replace("_", ""), 0), "int", token.column)
        if token.kind == "duration":
            self.take()
            return Literal(_duration_ns(token), "duration", token.column)
        if token.kind == "string":
            self.take()
            return Literal(_string_value(token, self.text), "string", token.column)
        if token.kind == "name" and token.text == "nil":
            self.take()
            return Literal(None, "nil", token.column)
        if token.kind == "name" and token.text in ("true", "false"):
            self.take()
            return Literal(1 if token.text == "true" else 0, "bool", token.column)
        if token.kind == "name" and token.text not in KEYWORDS:
            return self.path()
        raise self.error(f"expected a value (an argument's name, ret, duration or a constant), found {_shown(token)}")

    def path(self) -> Path:
        first = self.peek()
        if first.kind != "name" or first.text in KEYWORDS:
            raise self.error(f"expected a name, found {_shown(first)}")
        self.take()
        names, arrows = [first.text], []
        while self.peek().kind == "op" and self.peek().text in (".", "->"):
            step = self.take()
            name = self.peek()
            if name.kind != "name":
                raise self.error(f"expected a field name after {step.text!r}, found {_shown(name)}")
            self.take()
            names.append(name.text)
            arrows.append(step.text == "->")
            if len(names) > MAX_PATH:
                raise self.error(f"a path has at most {MAX_PATH} names", name)
        if first.text == "duration" and len(names) > 1:
            raise self.error("duration has no fields", first)
        return Path(tuple(names), tuple(arrows), first.column)


def _shown(token: Token) -> str:
    return "the end" if token.kind == "end" else repr(token.text)


def _checked(node: Compare, op: Token, text: str) -> Compare:
    """The comparisons that cannot mean anything, refused where they are written."""
    left, right = node.left, node.right
    if isinstance(left, Literal) and isinstance(right, Literal):
        raise ExprError("compares two constants; one side must be a name", left.column, text)
    path, other = (left, right) if isinstance(left, Path) else (right, left)
    if isinstance(path, Path) and isinstance(other, Literal):
        if other.kind == "duration" and path.root != "duration":
            raise ExprError(f"{other.value}ns is a duration; only `duration` compares with one", other.column, text)
        if path.root == "duration" and len(path.names) == 1 and other.kind not in ("duration", "int"):
            raise ExprError("duration compares with a duration such as 5ms", other.column, text)
        if other.kind in ("string", "nil", "bool") and node.op not in ("==", "!="):
            raise ExprError(f"{other} compares only with == or !=", op.column, text)
    return node


# --- entry points --------------------------------------------------------


def parse_condition(text: str) -> Node:
    """A `--where` condition; raises ExprError pointing at the column."""
    if not text.strip():
        raise ExprError("empty condition", 1, text)
    parser = _Parser(text)
    node = parser.condition()
    parser.end()
    return node


def parse_value(text: str) -> Path:
    """A `--count-by` key: one path (an argument, a field, `ret`, `err`)."""
    if not text.strip():
        raise ExprError("empty key", 1, text)
    parser = _Parser(text)
    token = parser.peek()
    if token.kind != "name" or token.text in KEYWORDS:
        raise parser.error(f"a key is an argument's name, a field or ret; found {_shown(token)}")
    path = parser.path()
    parser.end()
    return path


@dataclass(frozen=True)
class Template:
    """A `--print` line: text with `{path}` holes."""

    parts: tuple[str, ...]  # len(paths) + 1 pieces of text around the holes
    paths: tuple[Path, ...]

    def render(self, values: list[str]) -> str:
        out = self.parts[0]
        for value, text in zip(values, self.parts[1:], strict=True):
            out += value + text
        return out


def parse_template(text: str) -> Template:
    """`'charged {amount} -> {ret} in {duration}'`; `{{` and `}}` are braces."""
    if len(text) > MAX_TEXT:
        raise ExprError(f"longer than {MAX_TEXT} characters", MAX_TEXT + 1, text)
    parts: list[str] = []
    paths: list[Path] = []
    piece, i = "", 0
    while i < len(text):
        ch = text[i]
        if ch in "{}" and text[i + 1:i + 2] == ch:
            piece += ch
            i += 2
            continue
        if ch == "}":
            raise ExprError("'}' without '{' (write }} for a brace)", i + 1, text)
        if ch == "{":
            close = text.find("}", i)
            if close < 0:
                raise ExprError("'{' is never closed", i + 1, text)
            inner = text[i + 1:close]
            try:
                path = parse_value(inner)
            except ExprError as exc:
                raise ExprError(exc.message, i + 1 + exc.column, text) from None
            paths.append(Path(path.names, path.arrows, i + 1 + path.column))
            parts.append(piece)
            piece, i = "", close + 1
            if len(paths) > MAX_TERMS:
                raise ExprError(f"more than {MAX_TERMS} values in one template", i, text)
            continue
        piece += ch
        i += 1
    parts.append(piece)
    return Template(tuple(parts), tuple(paths))


def paths_in(node: Node) -> list[Path]:
    """Every path a condition reads, in the order written."""
    if isinstance(node, Compare):
        return [v for v in (node.left, node.right) if isinstance(v, Path)]
    if isinstance(node, (Truthy, StartsWith)):
        return [node.path]
    if isinstance(node, Not):
        return paths_in(node.operand)
    if isinstance(node, (And, Or)):
        return [p for o in node.operands for p in paths_in(o)]
    return []


def reads_values(node: Node) -> bool:
    """Whether a condition reveals values (arguments, fields, results): all but
    `duration` and `raised` do, and need the `capture` right."""
    return any(p.root != "duration" for p in paths_in(node))


def described(text: str, exc: ExprError) -> str:
    """The one line a user sees: the text, the column, and what is wrong."""
    return f"{text!r}, column {exc.column}: {exc.message}"
