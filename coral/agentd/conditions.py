"""What the agent decides about a session's `--where` and `--errors-only`
before anything is armed or probed: the condition that will run, and the
refusals it can make without the process (docs/protocol.md, UprobeConfig).

The SDK checks a Python condition again against the real function (its
parameters); the agent refuses here what it can know from the text and its
own redaction rules, so that nothing is armed for a session that cannot run.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from coral import expr
from coral.daemon.errors import InvalidArgument
from coral.proto import coral_pb2 as pb
from coral.redact import Rules

_CPP_SUFFIXES = frozenset({".cc", ".cpp", ".cxx", ".c++", ".C", ".hpp", ".hh", ".hxx"})


def language(meta: pb.FunctionMetadata) -> str:
    """python | go | c | c++ | rust | "" (a native function whose debug
    information names no source file)."""
    if meta.kind in ("python", "go"):
        return meta.kind
    suffix = PurePosixPath(meta.source_file).suffix
    if suffix == ".rs":
        return "rust"
    if suffix in _CPP_SUFFIXES:
        return "c++"
    if suffix == ".c":
        return "c"
    return ""


def unwinding_errors(config: pb.UprobeConfig, meta: pb.FunctionMetadata) -> bool:
    """--errors-only on C++ or Rust: the calls that leave by an exception or a
    panic (kept by the kernel as it finds their frames dead), and in Rust
    those that return Err (where_native.errors_program); not a --where text."""
    return config.errors_only and language(meta) in ("c++", "rust")


def errors_condition(meta: pb.FunctionMetadata) -> str:
    """--errors-only in the function's language's terms, where it is a
    condition on values (Python, Go)."""
    lang = language(meta)
    if lang == "python":
        return "raised"
    if lang == "go":
        return "err != nil"
    if lang == "c":
        raise InvalidArgument(f"--errors-only: C has no error convention, so {meta.name} has no failed calls to "
                              "pick; say what failure means with --where, e.g. --where 'ret < 0'")
    raise InvalidArgument(f"--errors-only: the language of {meta.name} is not known (no source file in its debug "
                          "information); write --where instead")


def effective(config: pb.UprobeConfig, meta: pb.FunctionMetadata) -> str:
    """The one condition a session runs: --where and --errors-only and-ed
    ("" for C++ and Rust --errors-only alone: see unwinding_errors)."""
    if not config.errors_only:
        return config.predicate
    if unwinding_errors(config, meta):
        if config.predicate:
            name = "C++" if language(meta) == "c++" else "Rust"
            raise InvalidArgument(f"--errors-only with --where is not supported for {name}: a call that leaves by an "
                                  "exception or a panic has no return for the condition to test; use one or the other")
        return ""
    errors = errors_condition(meta)
    return f"({config.predicate}) && {errors}" if config.predicate else errors


def _refusal(text: str, message: str, column: int) -> InvalidArgument:
    return InvalidArgument("--where " + expr.described(text, expr.ExprError(message, column, text)))


def check_python(text: str, rules: Rules) -> None:
    """What the agent can refuse of a Python condition before arming: a
    syntax error, `err`, a redacted argument or attribute."""
    try:
        tree = expr.parse_condition(text)
    except expr.ExprError as exc:
        raise InvalidArgument("--where " + expr.described(text, exc)) from None
    for path in expr.paths_in(tree):
        for name in path.names:
            if rules.is_secret_name(name):
                raise _refusal(text, f"{name!r} is redacted; a condition on it would reveal it", path.column)
        if path.root == "err":
            raise _refusal(text, "err is a Go function's error result; for Python write raised or raised(ValueError)",
                           path.column)

