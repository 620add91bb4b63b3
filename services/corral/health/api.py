"""The health service's HTTP API, next to /metrics on its port.

* `GET /api/status`: the system picture (the payload of `<prefix>.health.status`), as JSON;
* `GET /api/breakers`: every module's circuit breaker as the orchestrators last shared it
  (KV `corral_breakers`: state, since, next probe, reason), as a JSON list;
* `GET /api/events`: Server-Sent Events, one `data: {"subject", "data"}` line per event
  published on `<prefix>.evt.>` from the moment of connecting;
* `GET /`: the live dashboard (static HTML and an EventSource; no build step).
"""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

if TYPE_CHECKING:
    from corral.health.service import HealthService

__all__ = ["HealthApi"]

QUEUE_SIZE = 1000  # events buffered per SSE client; a slower client misses the oldest
KEEPALIVE = 15.0  # seconds between SSE comments that keep proxies from closing the stream


class HealthApi:
    def __init__(self, service: HealthService) -> None:
        self.service = service
        self._clients: set[asyncio.Queue[tuple[str, bytes] | None]] = set()
        self._subscription: Subscription | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._dashboard)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/breakers", self._breakers)
        app.router.add_get("/api/events", self._events)

    async def start(self) -> None:
        self._subscription = await self.service.nc.subscribe(
            self.service.subjects.events_all, cb=self._on_event
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
        for queue in self._clients:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)  # ends the stream, so the HTTP server can stop at once

    async def _on_event(self, msg: Msg) -> None:
        for queue in self._clients:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait((msg.subject, msg.data))

    async def _dashboard(self, _: web.Request) -> web.Response:
        html = resources.files("corral.health").joinpath("static/index.html").read_text()
        return web.Response(text=html, content_type="text/html")

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response(await self.service.picture())

    async def _breakers(self, _: web.Request) -> web.Response:
        return web.json_response(await self.service.breakers())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(QUEUE_SIZE)
        self._clients.add(queue)
        try:
            await response.write(b": connected\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if item is None:
                    break
                await response.write(b"data: " + _sse_data(*item) + b"\n\n")
        except ConnectionResetError:
            pass
        finally:
            self._clients.discard(queue)
        return response


def _sse_data(subject: str, data: bytes) -> bytes:
    try:
        body: object = msgspec.json.decode(data)
    except msgspec.DecodeError:
        body = data.decode(errors="replace")
    return msgspec.json.encode({"subject": subject, "data": body})  # one line: no raw newlines
