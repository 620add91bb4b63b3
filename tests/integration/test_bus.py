"""corral.bus against a real nats-server: bounded first connect, durable publish, declarations."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from corral.bus import (
    BusSettings,
    ConsumerSpec,
    KVSpec,
    StreamSpec,
    connect,
    ensure_consumer,
    ensure_kv,
    ensure_stream,
    publish_durable,
    request,
)
from corral.natsd import NatsServer


async def test_first_connect_gives_up_after_its_attempts_and_says_why() -> None:
    settings = BusSettings(servers=["nats://127.0.0.1:1"], connect_attempts=2, reconnect_time_wait=0.1)
    started = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        await connect(settings)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith("could not connect to NATS at nats://127.0.0.1:1 after 2 attempts: ")
    assert "ConnectionRefusedError" in message
    assert message.endswith("Is nats-server running? Set NATS_URL to its address.")


def test_sigterm_stops_a_service_still_waiting_for_nats() -> None:
    env = {**os.environ, "NATS_URL": "nats://127.0.0.1:1", "CORRAL_PREFIX": "nowhere"}
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.state"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    # Its first "not reachable" line: it is past start-up, signal handlers set, waiting for NATS.
    assert "not reachable" in process.stderr.readline().decode()
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


async def test_declarations_are_idempotent_and_update_in_place(nats_url: str, prefix: str) -> None:
    nc = await connect(BusSettings(servers=[nats_url]))
    js = nc.jetstream()
    try:
        spec = StreamSpec(name=f"{prefix}_S", subjects=[f"{prefix}.s.>"], max_msgs=10)
        first = await ensure_stream(js, spec)
        again = await ensure_stream(js, spec)
        assert first.config.max_msgs == again.config.max_msgs == 10
        changed = await ensure_stream(
            js, StreamSpec(name=f"{prefix}_S", subjects=[f"{prefix}.s.>"], max_msgs=20)
        )
        assert changed.config.max_msgs == 20

        kv = await ensure_kv(js, KVSpec(bucket=f"{prefix}_kv", history=2))
        await kv.put("k", b"1")
        kv = await ensure_kv(js, KVSpec(bucket=f"{prefix}_kv", history=5))
        info = await js.stream_info(f"KV_{prefix}_kv")
        assert info.config.max_msgs_per_subject == 5
        assert (await kv.get("k")).value == b"1"  # updating kept the data

        consumer = ConsumerSpec(stream=f"{prefix}_S", durable="workers", filter_subjects=[f"{prefix}.s.a"])
        assert (await ensure_consumer(js, consumer)).config.ack_wait == 30.0
        assert (await ensure_consumer(js, consumer)).config.ack_wait == 30.0
        longer = ConsumerSpec(
            stream=f"{prefix}_S", durable="workers", filter_subjects=[f"{prefix}.s.a"], ack_wait=60
        )
        assert (await ensure_consumer(js, longer)).config.ack_wait == 60.0
        assert len(await js.consumers_info(f"{prefix}_S")) == 1
    finally:
        await nc.close()


async def test_publish_durable_survives_a_server_restart_without_duplicates(nats_server: NatsServer) -> None:
    nc = await connect(BusSettings(servers=[nats_server.url], reconnect_time_wait=0.1))
    js = nc.jetstream()
    try:
        await ensure_stream(js, StreamSpec(name="DUR", subjects=["dur.>"]))
        await publish_durable(js, "dur.a", b"first", msg_id="m-1")
        nats_server.kill()
        # The server is down: publish_durable keeps retrying with the same message id...
        pending = asyncio.create_task(publish_durable(js, "dur.a", b"second", msg_id="m-2", timeout=0.5))
        await asyncio.sleep(1.0)
        assert not pending.done()
        await asyncio.to_thread(nats_server.start)
        ack = await asyncio.wait_for(pending, 30)
        assert ack.seq == 2
        # ...and a retry of an already stored id is dropped by the duplicate window.
        duplicate = await publish_durable(js, "dur.a", b"second", msg_id="m-2")
        assert duplicate.duplicate is True
        assert (await js.stream_info("DUR")).state.messages == 2
    finally:
        await nc.close()


async def test_request_asks_again_when_a_responder_appears_within_the_retry_window(
    nc: Client, prefix: str
) -> None:
    async def answer(msg: Msg) -> None:
        await msg.respond(b"pong")

    async def subscribe_soon() -> None:
        await asyncio.sleep(0.01)  # after the first attempt, before the last
        await nc.subscribe(f"{prefix}.late", cb=answer)

    late = asyncio.create_task(subscribe_soon())
    reply = await request(nc, f"{prefix}.late", b"ping", timeout=2.0)
    await late
    assert reply.data == b"pong"


async def test_request_still_says_no_responders_when_nobody_ever_answers(nc: Client, prefix: str) -> None:
    started = time.monotonic()
    with pytest.raises(nats.errors.NoRespondersError):
        await request(nc, f"{prefix}.nobody", b"ping", timeout=2.0)
    assert time.monotonic() - started < 1.0  # the retries are short; it is not a timeout
