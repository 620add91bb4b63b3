"""corral's exceptions. Each carries the wire error code it maps to."""

from __future__ import annotations

import asyncio

from corral.protocol import ErrorCode, ErrorPayload

__all__ = [
    "CallTimeoutError",
    "CircuitOpenError",
    "ConfigError",
    "ConflictError",
    "CorralError",
    "ModuleError",
    "NotFoundError",
    "OverloadedError",
    "UnavailableError",
    "ValidationError",
    "error_from_payload",
]


class CorralError(Exception):
    """Root of every corral error; `code` is what goes on the wire."""

    code: ErrorCode = ErrorCode.MODULE_ERROR

    def __init__(self, *errors: str) -> None:
        self.errors: list[str] = list(errors) or [self.__class__.__doc__ or self.code.value]
        super().__init__("; ".join(self.errors))


class ValidationError(CorralError):
    """The request was malformed."""

    code = ErrorCode.VALIDATION


class NotFoundError(CorralError):
    """No such module, message type or record."""

    code = ErrorCode.NOT_FOUND


class CallTimeoutError(CorralError, asyncio.TimeoutError):
    """No answer within the deadline."""

    code = ErrorCode.TIMEOUT


class CircuitOpenError(CorralError):
    """The module's circuit breaker is open."""

    code = ErrorCode.CIRCUIT_OPEN


class OverloadedError(CorralError):
    """A bounded queue is full."""

    code = ErrorCode.OVERLOADED


class UnavailableError(CorralError):
    """The target cannot serve right now."""

    code = ErrorCode.UNAVAILABLE


class ModuleError(CorralError):
    """The module's handler failed."""

    code = ErrorCode.MODULE_ERROR


class ConflictError(CorralError):
    """Another writer changed the value first."""

    code = ErrorCode.CONFLICT


class ConfigError(Exception):
    """corral.toml or the environment holds an invalid setting."""


_BY_CODE: dict[ErrorCode, type[CorralError]] = {
    cls.code: cls
    for cls in (
        ValidationError,
        NotFoundError,
        CallTimeoutError,
        CircuitOpenError,
        OverloadedError,
        UnavailableError,
        ModuleError,
        ConflictError,
    )
}


def error_from_payload(payload: ErrorPayload | dict[str, object]) -> CorralError:
    """Turn an error Response payload back into the matching typed exception."""
    if isinstance(payload, ErrorPayload):
        code, errors = payload.code, payload.errors
    else:
        raw_errors = payload.get("errors")
        if isinstance(raw_errors, str):
            errors = [raw_errors]
        elif isinstance(raw_errors, list | tuple):
            errors = [str(e) for e in raw_errors]
        else:
            errors = []
        try:
            code = ErrorCode(str(payload.get("code")))
        except ValueError:
            code = ErrorCode.MODULE_ERROR
    return _BY_CODE.get(code, ModuleError)(*errors)
