"""Which task messages JetStream deduplicates: those with an idempotency key (and DLQ retries,
covered in test_scheduler.py), not fresh ids, which no path publishes twice."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient

from corral.protocol import TRACEPARENT_HEADER
from corral.runtime import ServiceSettings
from corral.scheduler.service import SchedulerService
from corral.sdk import Client
from tests.integration.scheduler_helpers import FAST

NOBODY = "dedup-nobody"  # a capability no worker offers: the tasks stay in the queue


@pytest.fixture
async def client(nc: NatsClient, prefix: str, settings: ServiceSettings) -> AsyncIterator[Client]:
    async with SchedulerService(settings, FAST):
        yield Client(nc, prefix=prefix)


async def test_only_keyed_tasks_carry_a_message_id_and_keyed_ones_still_run_once(
    client: Client, nc: NatsClient
) -> None:
    js = nc.jetstream()
    stream = client.subjects.tasks_stream
    fresh = await client.submit("echo", {"n": 1}, capabilities=[NOBODY])
    keyed = await client.submit("echo", {"n": 2}, capabilities=[NOBODY], idempotency_key="dedup-1")
    [batch_fresh, batch_keyed] = await client.submit_many(
        [
            {"type": "echo", "payload": {"n": 3}, "capabilities": [NOBODY]},
            {"type": "echo", "payload": {"n": 4}, "capabilities": [NOBODY], "idempotency_key": "dedup-2"},
        ]
    )
    headers = {}
    for handle in (fresh, keyed, batch_fresh, batch_keyed):
        record = await handle.record()
        assert record.seq > 0
        headers[handle.id] = (await js.get_msg(stream, record.seq)).headers or {}
    for handle in (fresh, batch_fresh):
        assert "Nats-Msg-Id" not in headers[handle.id]
        assert headers[handle.id][TRACEPARENT_HEADER]  # the trace still travels with the task
    for handle in (keyed, batch_keyed):
        assert headers[handle.id]["Nats-Msg-Id"] == handle.id
    # A keyed task submitted again is still the first one, queued once.
    again = await client.submit("echo", {"n": 5}, capabilities=[NOBODY], idempotency_key="dedup-1")
    assert again.id == keyed.id
    assert again.duplicate
    assert (await js.stream_info(stream)).state.messages == 4
