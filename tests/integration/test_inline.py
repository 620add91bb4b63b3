"""corral.runtime.inline against a real nats-server: what nats-py's own subscribe and publish
guarantee must hold for inline delivery and publish_nowait too (order, headers, errors,
buffering across a reconnect), on the nats-py this project installs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from corral.natsd import NatsServer
from corral.orchestrator.service import OrchestratorService
from corral.runtime import ServiceSettings, inline


async def _collect(nc: Client, subject: str, count: int) -> tuple[list[Msg], asyncio.Future[None]]:
    """A plain nats-py subscriber that resolves its future after `count` messages."""
    got: list[Msg] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on(msg: Msg) -> None:
        got.append(msg)
        if len(got) == count and not done.done():
            done.set_result(None)

    await nc.subscribe(subject, cb=on)
    await nc.flush()
    return got, done


async def test_this_nats_py_has_what_inline_io_uses(nc: Client, prefix: str) -> None:
    sub = await nc.subscribe(f"{prefix}.x", cb=_ignore)
    assert inline.supported(nc, sub), "nats-py moved its internals: corral.runtime.inline must follow"


async def _ignore(msg: Msg) -> None:
    return None


async def test_every_service_endpoint_and_the_mux_inbox_are_delivered_inline(
    settings: ServiceSettings,
) -> None:
    async with OrchestratorService(settings) as orchestrator:
        micro = orchestrator._micro
        assert micro is not None
        subs = [endpoint._subscription for endpoint in micro._endpoints]
        assert subs
        assert all(sub is not None and inline.is_inline(sub) for sub in subs)
        assert orchestrator.mux._sub is not None
        assert inline.is_inline(orchestrator.mux._sub)
        # and they still answer: one request through the inline dispatcher
        reply = await orchestrator.nc.request(f"{settings.prefix}.orchestrator.status", b"", timeout=5)
        assert msgspec.json.decode(reply.data)["success"] is True


async def test_inline_delivery_hands_over_every_message_in_order_without_its_task(
    nc: Client, nats_url: str, prefix: str
) -> None:
    delivered: list[tuple[str, bytes, str, dict[str, str] | None]] = []
    called_back: list[Msg] = []

    async def callback(msg: Msg) -> None:
        called_back.append(msg)

    sub = await nc.subscribe(f"{prefix}.in.*", cb=callback)
    assert inline.deliver_inline(sub, lambda m: delivered.append((m.subject, m.data, m.reply, m.headers)))
    await nc.flush()
    sender = await nats.connect(nats_url)
    try:
        for i in range(500):
            await sender.publish(
                f"{prefix}.in.{i % 3}", str(i).encode(), reply=f"r.{i}", headers={"N": str(i)}
            )
        await sender.flush()
        for _ in range(100):
            if len(delivered) == 500:
                break
            await asyncio.sleep(0.02)
    finally:
        await sender.close()
    assert [d[1] for d in delivered] == [str(i).encode() for i in range(500)]
    assert delivered[7] == (f"{prefix}.in.1", b"7", "r.7", {"N": "7"})
    assert called_back == []  # the subscription's own callback no longer runs
    assert sub.pending_msgs == 0
    assert sub.pending_bytes == 0


async def test_a_failing_delivery_does_not_stop_the_connection(nc: Client, prefix: str) -> None:
    seen: list[bytes] = []

    def deliver(msg: Msg) -> None:
        seen.append(msg.data)
        if msg.data == b"boom":
            raise ValueError("a bug in one handler")

    sub = await nc.subscribe(f"{prefix}.fail")
    assert inline.deliver_inline(sub, deliver)
    for data in (b"one", b"boom", b"two"):
        await nc.publish(f"{prefix}.fail", data)
    await nc.flush()
    for _ in range(50):
        if len(seen) == 3:
            break
        await asyncio.sleep(0.02)
    assert seen == [b"one", b"boom", b"two"]
    assert nc.is_connected
    await nc.flush(timeout=2)  # and the connection still does round trips


async def test_unsubscribe_and_drain_work_on_an_inline_subscription(nc: Client, prefix: str) -> None:
    seen: list[bytes] = []
    sub = await nc.subscribe(f"{prefix}.u", cb=_ignore)
    assert inline.deliver_inline(sub, lambda m: seen.append(m.data))
    await nc.publish(f"{prefix}.u", b"before")
    await nc.flush()
    await asyncio.sleep(0.05)
    await sub.drain()
    await nc.publish(f"{prefix}.u", b"after")
    await nc.flush()
    await asyncio.sleep(0.05)
    assert seen == [b"before"]


async def test_publish_nowait_sends_what_publish_sends_in_order(nc: Client, prefix: str) -> None:
    got, done = await _collect(nc, f"{prefix}.out", 300)
    for i in range(300):
        headers = {"Seq": str(i), "Content-Type": "application/json"} if i % 2 else None
        inline.publish_nowait(nc, f"{prefix}.out", str(i).encode(), reply=f"back.{i}", headers=headers)
    await asyncio.wait_for(done, 5)
    assert [m.data for m in got] == [str(i).encode() for i in range(300)]
    assert got[3].reply == "back.3"
    assert got[3].headers == {"Seq": "3", "Content-Type": "application/json"}
    assert got[4].headers is None


async def test_publish_nowait_answers_a_request(nc: Client, nats_url: str, prefix: str) -> None:
    sub = await nc.subscribe(f"{prefix}.echo")
    inline.deliver_inline(sub, lambda m: inline.publish_nowait(nc, m.reply, m.data.upper()))
    await nc.flush()
    caller = await nats.connect(nats_url)
    try:
        replies = await asyncio.gather(
            *(caller.request(f"{prefix}.echo", b"hi %d" % i, timeout=5) for i in range(50))
        )
    finally:
        await caller.close()
    assert sorted(r.data for r in replies) == sorted(b"HI %d" % i for i in range(50))


async def test_header_values_cannot_break_the_protocol_line(nc: Client, prefix: str) -> None:
    got, done = await _collect(nc, f"{prefix}.h", 2)
    inline.publish_nowait(
        nc, f"{prefix}.h", b"x", headers={"  Padded ": "  v  ", "Evil": "a\r\nPUB x 1\r\nb"}
    )
    inline.publish_nowait(nc, f"{prefix}.h", b"y", headers={"": "skipped", "K": "v"})
    await asyncio.wait_for(done, 5)
    assert got[0].headers == {"Padded": "v", "Evil": "a  PUB x 1  b"}
    assert got[1].headers == {"K": "v"}
    assert inline.header_block({"A": "1"}) == b"NATS/1.0\r\nA: 1\r\n\r\n"


@pytest.mark.parametrize(
    ("subject", "reply", "headers", "error"),
    [
        ("", "", None, nats.errors.BadSubjectError),
        ("has space", "", None, nats.errors.BadSubjectError),
        ("a.b\r\nPUB", "", None, nats.errors.BadSubjectError),
        ("ok", "bad reply", None, nats.errors.BadSubjectError),
        ("ok", "", {"bad key": "v"}, nats.errors.BadHeaderError),
        ("ok", "", {"k:": "v"}, nats.errors.BadHeaderError),
    ],
)
async def test_bad_subjects_and_header_keys_are_refused_and_nothing_is_sent(
    nc: Client, subject: str, reply: str, headers: dict[str, str] | None, error: type[Exception]
) -> None:
    pending = list(nc._pending)
    with pytest.raises(error):
        inline.publish_nowait(nc, subject, b"x", reply=reply, headers=headers)
    assert nc._pending == pending
    assert nc.is_connected


async def test_over_max_payload_is_refused(nc: Client, prefix: str) -> None:
    with pytest.raises(nats.errors.MaxPayloadError):
        inline.publish_nowait(nc, f"{prefix}.big", b"x" * (nc.max_payload + 1))


async def test_a_closed_connection_refuses(nats_url: str, prefix: str) -> None:
    client = await nats.connect(nats_url)
    await client.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        inline.publish_nowait(client, f"{prefix}.closed", b"x")


async def test_while_reconnecting_publishes_are_buffered_and_sent_after(tmp_path: Path, prefix: str) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    port = server.port
    disconnected = asyncio.Event()
    reconnected = asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    async def on_reconnect() -> None:
        reconnected.set()

    client = await nats.connect(
        server.url,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
    )
    try:
        # The client watches the subject itself (NATS echoes its own messages): a second
        # connection to the restarted server would race the client's reconnect.
        got, done = await _collect(client, f"{prefix}.later", 1)
        server.stop()
        await asyncio.wait_for(disconnected.wait(), 10)
        inline.publish_nowait(client, f"{prefix}.later", b"kept while away")
        assert not client.is_connected
        server = NatsServer(tmp_path / "nats", port=port)
        server.start()
        await asyncio.wait_for(reconnected.wait(), 15)
        # nats-py resends its pending buffer after the SUBs it restores, so the subscription
        # made before the outage gets the message published while disconnected.
        await asyncio.wait_for(done, 5)
        assert [m.data for m in got] == [b"kept while away"]
    finally:
        await client.close()
        server.stop()
