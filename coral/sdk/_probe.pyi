"""Types of the C extension coral.sdk._probe (coral/sdk/_probe.c)."""

from collections.abc import Callable, Sequence
from typing import Any

PROBE_SYMBOL: str
SEMAPHORE_SYMBOL: str
RECORD_SIZE: int
ARGS_MAX: int
RET_MAX: int
STACK_MAX: int
CALL_RAISED: int
CALL_TRUNCATED: int
CALL_FILTERED: int
UNREADABLE: object
CALL_WHERE_ERROR: int
CALL_COUNTED: int

def python_layout() -> dict[str, int] | None: ...

class ProbeWrapper:
    original: Callable[..., Any]
    fn_id: int
    capture_args: bool
    capture_return: bool
    armed: bool
    stack_depth: int  # --stack: Python frames per record; 0: none
    where_entry: Callable[..., Any] | None
    where_return: Callable[[Any, Any, Any, int], int] | None
    __dict__: dict[str, Any]
    def __init__(
        self,
        func: Callable[..., Any],
        fn_id: int,
        names: tuple[str, ...] = ...,
        redact: bytes = ...,
        varargs: str = ...,
        varargs_redact: bool = ...,
        *,
        capture_args: bool = ...,
        capture_return: bool = ...,
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __get__(self, obj: object, owner: type | None = None) -> Any: ...
    def emit(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        start_ns: int,
        end_ns: int,
        result: object,
        exc: BaseException | None,
        verdict: int = ...,
        /,
    ) -> None: ...

def semaphore() -> int: ...
def tracing() -> bool: ...
def safe_repr(obj: object, /) -> str: ...
def attribute_of(obj: object, name: str, /) -> Any: ...
def _set_test_mode(*, semaphore: int = 0, capture: bool = False) -> None: ...
def _take_records() -> list[dict[str, Any]]: ...
def _set_redact_patterns(patterns: Sequence[str], /) -> None: ...
def _redact_patterns() -> tuple[str, ...]: ...
def _set_safe_repr_types(types: tuple[type, ...], /) -> None: ...
