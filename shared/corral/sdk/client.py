"""`Client`: how a program calls modules through the orchestrator.

    async with Client.connect() as client:
        value = await client.send("interpreter", "eval", {"code": "(+ 1 2)"})

`send` returns the reply's payload or raises the typed error of its code
(NotFoundError, CallTimeoutError, ValidationError, ModuleError, ...).
"""

from __future__ import annotations

import secrets
import time
from types import TracebackType
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient

from corral.bus import BusSettings, connect
from corral.errors import CallTimeoutError, UnavailableError, error_from_payload
from corral.protocol import TIMEOUT_HEADER, TRACEPARENT_HEADER, Priority, parse_priority
from corral.subjects import DEFAULT_PREFIX, Subjects, validate_token

__all__ = ["Client", "new_traceparent"]

_encoder = msgspec.json.Encoder()


class _Reply(msgspec.Struct):
    type: str
    success: bool
    payload: Any = None


def new_traceparent() -> str:
    """A fresh W3C traceparent: the edge of a request starts its trace."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


class Client:
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
        traceparent: str | None = None,
    ) -> Any:
        """Call `type_` on `module` through the orchestrator; return the reply's payload."""
        validate_token(module, "module name")
        envelope = {
            "type": type_,
            "payload": {} if payload is None else payload,
            "timestamp": time.time(),
            "priority": int(parse_priority(priority)),
            "timeout": timeout,
        }
        headers = {TRACEPARENT_HEADER: traceparent or new_traceparent(), TIMEOUT_HEADER: str(timeout)}
        # The orchestrator answers TIMEOUT itself at `timeout`; wait a little longer for that answer.
        try:
            msg = await self.nc.request(
                self.subjects.send(module), _encoder.encode(envelope), timeout=timeout + 1.0, headers=headers
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

    async def close(self) -> None:
        if self._owns_connection and not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
