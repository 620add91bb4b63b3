"""`Client`: how a program calls modules through the orchestrator.

    async with Client.connect() as client:
        value = await client.send("interpreter", "eval", {"code": "(+ 1 2)"})

`send` returns the reply's payload or raises the typed error of its code
(NotFoundError, CallTimeoutError, ValidationError, ModuleError, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from functools import cached_property
from types import TracebackType
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from corral.bus import BusSettings, connect, request
from corral.errors import CallTimeoutError, UnavailableError, error_from_payload
from corral.protocol import TIMEOUT_HEADER, TRACEPARENT_HEADER, Priority, parse_priority
from corral.sdk.state import StateClient
from corral.sdk.tasks import Tasks
from corral.subjects import DEFAULT_PREFIX, Subjects, validate_token
from corral.tracing import new_traceparent, outgoing_traceparent

__all__ = ["Client", "MessageEvent", "TypeSubscription", "new_traceparent"]

_encoder = msgspec.json.Encoder()


class _Reply(msgspec.Struct):
    type: str
    success: bool
    payload: Any = None


class MessageEvent(msgspec.Struct):
    """A routed message as a type subscriber sees it."""

    module: str
    type: str
    payload: Any = None
    timestamp: float | None = None


class _RoutedEnvelope(msgspec.Struct):
    type: str
    payload: Any = None
    timestamp: float | None = None


class TypeSubscription:
    def __init__(
        self, client: Client, type_: str, handler: Callable[[MessageEvent], Awaitable[None]], lease: float
    ) -> None:
        self.client = client
        self.type = type_
        self.handler = handler
        self.lease = lease
        self._sub: Subscription | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        nc = self.client.nc
        self._sub = await nc.subscribe(self.client.subjects.message_event(self.type), cb=self._deliver)
        await self._renew()
        self._renewer = asyncio.create_task(self._renew_forever())

    async def _renew(self) -> None:
        body = _encoder.encode({"type": self.type, "ttl": self.lease})
        await self.client.nc.request(
            self.client.subjects.service("orchestrator", "subscribe"), body, timeout=5
        )

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            with contextlib.suppress(Exception):  # the orchestrator may be restarting; try again next time
                await self._renew()

    async def _deliver(self, msg: Msg) -> None:
        routed = msgspec.json.decode(msg.data, type=_RoutedEnvelope)
        module = (msg.headers or {}).get("Module", "")
        await self.handler(MessageEvent(module, routed.type, routed.payload, routed.timestamp))

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None


class Client(Tasks):
    """Calls modules (`send`), subscribes to message types, and submits and follows tasks
    (`submit`, `submit_many`, `cancel`, `task`: see corral.sdk.tasks)."""

    def __init__(
        self, nc: NatsClient, *, prefix: str = DEFAULT_PREFIX, owns_connection: bool = False
    ) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self._owns_connection = owns_connection

    @classmethod
    async def connect(cls, bus: BusSettings | None = None, *, prefix: str = DEFAULT_PREFIX) -> Client:
        nc = await connect(bus or BusSettings.from_env(name="corral-client"))
        return cls(nc, prefix=prefix, owns_connection=True)

    async def send(
        self,
        module: str,
        type_: str,
        payload: Any = None,
        *,
        timeout: float = 10.0,
        priority: int | str = Priority.NORMAL,
        retries: int = 0,
        traceparent: str | None = None,
    ) -> Any:
        """Call `type_` on `module` through the orchestrator; return the reply's payload.

        `retries` asks the orchestrator to retry timeouts and module errors, for message types
        the module declared idempotent.
        """
        validate_token(module, "module name")
        envelope = {
            "type": type_,
            "payload": {} if payload is None else payload,
            "timestamp": time.time(),
            "priority": int(parse_priority(priority)),
            "timeout": timeout,
            "retries": retries,
        }
        # The edge of a request starts its trace; inside a handler, the call continues the
        # trace of the request being served (corral.tracing).
        headers = {TRACEPARENT_HEADER: traceparent or outgoing_traceparent(), TIMEOUT_HEADER: str(timeout)}
        # The orchestrator answers TIMEOUT itself at `timeout`; wait a little longer for that answer.
        try:
            msg = await request(
                self.nc,
                self.subjects.send(module),
                _encoder.encode(envelope),
                timeout=timeout + 1.0,
                headers=headers,
            )
        except nats.errors.NoRespondersError as exc:
            raise UnavailableError(
                f"no orchestrator answers {self.subjects.send(module)}: is the system up (corral up)?"
            ) from exc
        except nats.errors.TimeoutError as exc:
            raise CallTimeoutError(f"no reply from {module}.{type_} within {timeout}s") from exc
        reply = msgspec.json.decode(msg.data, type=_Reply)
        if reply.success:
            return reply.payload
        raise error_from_payload(reply.payload if isinstance(reply.payload, dict) else {})

    async def subscribe(
        self, type_: str, handler: Callable[[MessageEvent], Awaitable[None]], *, lease: float = 30.0
    ) -> TypeSubscription:
        """Receive every message of `type_` routed through the orchestrator, to any module.

        The orchestrator republishes a type only while someone holds a lease on it; the
        subscription renews its lease until `await subscription.stop()`.
        """
        validate_token(type_, "message type")
        subscription = TypeSubscription(self, type_, handler, lease)
        await subscription.start()
        return subscription

    @cached_property
    def state(self) -> StateClient:
        """Shared, versioned state: the `<prefix>.state.*` verbs, the direct KV path (`.direct`)
        and watches (`.subscribe`); see corral.sdk.state."""
        return StateClient(self.nc, prefix=self.subjects.prefix)

    async def close(self) -> None:
        if self._owns_connection and not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
