"""corral.scheduling.publisher against a real nats-server: acks, refusals and timeouts (one timer
serves every publish in flight, so each must still fail at its own deadline)."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from corral.bus import StreamSpec, ensure_stream
from corral.scheduling.publisher import Ack, AsyncPublisher, PublishRefused


async def test_publishes_are_acknowledged_refused_or_timed_out_each_at_its_own_deadline(
    nc: Client, prefix: str
) -> None:
    stream = f"{prefix.upper()}_PUB".replace("-", "_")
    await ensure_stream(nc.jetstream(), StreamSpec(name=stream, subjects=[f"{prefix}.pub.>"]))
    silent: list[Msg] = []

    async def swallow(msg: Msg) -> None:  # a responder that never answers: no 503, no ack
        silent.append(msg)

    await nc.subscribe(f"{prefix}.silent", cb=swallow)
    await nc.flush()
    publisher = AsyncPublisher(nc, timeout=2.0)
    loop = asyncio.get_running_loop()
    try:
        acked = [await publisher.publish(f"{prefix}.pub.a", b"x") for _ in range(3)]
        first = await publisher.publish(f"{prefix}.silent", b"1")
        sent_first = loop.time()
        await asyncio.sleep(1.0)
        second = await publisher.publish(f"{prefix}.silent", b"2")
        sent_second = loop.time()
        refused = await publisher.publish(
            f"{prefix}.pub.a", b"y", {"Nats-Expected-Last-Subject-Sequence": "1"}
        )
        nobody = await publisher.publish(f"{prefix}.nobody", b"z")

        assert [a.seq for a in await asyncio.gather(*acked)] == [1, 2, 3]
        assert all(isinstance(a, Ack) and a.stream == stream for a in await asyncio.gather(*acked))
        with pytest.raises(PublishRefused) as wrong_seq:
            await refused
        assert wrong_seq.value.err_code == 10071
        with pytest.raises(PublishRefused):
            await nobody
        assert not first.done()
        assert not second.done()
        with pytest.raises(TimeoutError):
            await first
        assert loop.time() - sent_first >= 1.9
        assert not second.done()
        with pytest.raises(TimeoutError):
            await second
        assert 1.9 <= loop.time() - sent_second < 5.0
        assert len(silent) == 2
        # Nothing is left waiting, and the publisher still works after a timeout.
        assert not publisher._pending
        assert (await (await publisher.publish(f"{prefix}.pub.b", b"w"))).seq == 4
    finally:
        await publisher.stop()
