"""What module authors import."""

from corral.errors import (
    CallTimeoutError,
    CircuitOpenError,
    CorralError,
    ModuleError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
    ValidationError,
)
from corral.runtime import RequestContext
from corral.sdk.client import Client
from corral.sdk.module import Module

__all__ = [
    "CallTimeoutError",
    "CircuitOpenError",
    "Client",
    "CorralError",
    "Module",
    "ModuleError",
    "NotFoundError",
    "OverloadedError",
    "RequestContext",
    "UnavailableError",
    "ValidationError",
]
