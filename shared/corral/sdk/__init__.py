"""What module authors import."""

from corral.errors import (
    CallTimeoutError,
    CircuitOpenError,
    ConflictError,
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
from corral.sdk.service import ModuleService
from corral.sdk.state import StateClient, StateManager, Watch
from corral.sdk.task_context import TaskContext
from corral.sdk.tasks import (
    TaskCancelledError,
    TaskDeadLetteredError,
    TaskError,
    TaskFailedError,
    TaskHandle,
    TaskUpdate,
)
from corral.sdk.worker import Worker

__all__ = [
    "CallTimeoutError",
    "CircuitOpenError",
    "Client",
    "ConflictError",
    "CorralError",
    "Module",
    "ModuleError",
    "ModuleService",
    "NotFoundError",
    "OverloadedError",
    "RequestContext",
    "StateClient",
    "StateManager",
    "TaskCancelledError",
    "TaskContext",
    "TaskDeadLetteredError",
    "TaskError",
    "TaskFailedError",
    "TaskHandle",
    "TaskUpdate",
    "UnavailableError",
    "ValidationError",
    "Watch",
    "Worker",
]
