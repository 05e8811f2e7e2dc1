"""Typed errors inside; one stable error code on the wire (docs/protocol.md)."""

from __future__ import annotations


class CoralError(Exception):
    """An error that is answered to the peer with a stable code."""

    code = "INTERNAL"

    def __init__(self, message: str, suggestions: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.suggestions = list(suggestions or [])


class Internal(CoralError):
    """A bug in a handler: the daemon logged its traceback; the peer is told only that."""


class BadRequest(CoralError):
    code = "BAD_REQUEST"


class UnknownMethod(CoralError):
    code = "UNKNOWN_METHOD"


class InvalidArgument(CoralError):
    code = "INVALID_ARGUMENT"


class NotFound(CoralError):
    code = "NOT_FOUND"


class PermissionDenied(CoralError):
    code = "PERMISSION_DENIED"


class LimitExceeded(CoralError):
    code = "LIMIT_EXCEEDED"


class Unavailable(CoralError):
    code = "UNAVAILABLE"


class ProbeFailed(CoralError):
    code = "PROBE_FAILED"


ERROR_CLASSES: dict[str, type[CoralError]] = {
    cls.code: cls
    for cls in (
        CoralError,
        BadRequest,
        UnknownMethod,
        InvalidArgument,
        NotFound,
        PermissionDenied,
        LimitExceeded,
        Unavailable,
        ProbeFailed,
    )
}


def error_from_code(code: str, message: str, suggestions: list[str] | None = None) -> CoralError:
    """Rebuild the typed error a remote peer reported."""
    cls = ERROR_CLASSES.get(code, CoralError)
    err = cls(message, suggestions)
    err.code = code
    return err
