"""The runtime every corral service and module runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from corral.runtime.endpoints import Endpoint, Reply, RequestContext, error_reply
from corral.runtime.gc_tuning import tune_gc
from corral.runtime.logs import configure_logging
from corral.runtime.service import Service
from corral.runtime.settings import ServiceSettings

T = TypeVar("T")

__all__ = [
    "Endpoint",
    "Reply",
    "RequestContext",
    "Service",
    "ServiceSettings",
    "error_reply",
    "run_forever",
    "run_main",
]


def run_main(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a process's async main on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def run_forever(service: Service) -> None:
    """The `__main__` of a service: JSON logs, then serve until SIGTERM."""
    configure_logging(service.name, service.instance, service.settings.log_level)
    tune_gc()
    run_main(service.run)
