"""How JetStream failures reach callers of the state service and of the SDK's direct path.

A JetStream that does not answer (server down or restarting, JetStream disabled, the bucket
not created yet) becomes UNAVAILABLE with a sentence saying what to check, instead of a
MODULE_ERROR quoting a nats-py class name.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import nats.errors
import nats.js.errors

from corral.errors import UnavailableError
from corral.state.consumer import ConsumerLost

__all__ = ["JETSTREAM_DOWN", "jetstream_errors"]

R = TypeVar("R")

JETSTREAM_DOWN: Final = (
    TimeoutError,  # nats.errors.TimeoutError included
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionClosedError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    ConsumerLost,  # a read of many keys lost its consumer midway (server restart)
)


def jetstream_errors(func: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Decorate an async function so that JETSTREAM_DOWN errors raise UnavailableError."""

    @functools.wraps(func)
    async def wrapped(*args: Any, **kwargs: Any) -> R:
        try:
            return await func(*args, **kwargs)
        except JETSTREAM_DOWN as exc:
            raise UnavailableError(
                f"JetStream did not complete the request ({exc!r}); retry, and check that nats-server "
                "runs with JetStream and that the state service has started once (it creates the bucket)"
            ) from exc

    return wrapped
