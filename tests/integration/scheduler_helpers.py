"""Shared setup of the scheduler tests: a scheduler and workers in this process, on the session's
nats-server, with short leases and backoffs so retries and redeliveries happen within a test."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats.errors
from nats.aio.client import Client

from corral.scheduling.settings import SchedulerSettings

FAST = SchedulerSettings(
    ack_wait=2.0,
    backoff_initial=0.05,
    backoff_multiplier=2.0,
    backoff_max=0.2,
    backoff_jitter=0.0,
    monitor_interval=0.3,
    idle_poll=0.2,
    aging=60.0,
    running_record_after=0.05,
)


async def call(nc: Client, prefix: str, verb: str, body: Any = None) -> dict[str, Any]:
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    for attempt in range(3):
        try:
            msg = await nc.request(f"{prefix}.scheduler.{verb}", data, timeout=10)
            break
        except nats.errors.NoRespondersError:
            # nats-server 2.15 now and then answers "no responders" to the first request after
            # another connection's SUB + flush (about 1 in 100 under load).
            if attempt == 2:
                raise
            await asyncio.sleep(0.1)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def ok(nc: Client, prefix: str, verb: str, body: Any = None) -> Any:
    reply = await call(nc, prefix, verb, body)
    assert reply["success"] is True, reply
    return reply["payload"]


async def fails(nc: Client, prefix: str, verb: str, body: Any, code: str) -> str:
    reply = await call(nc, prefix, verb, body)
    assert reply["success"] is False, reply
    assert reply["payload"]["code"] == code, reply
    message: str = reply["payload"]["errors"][0]
    return message
