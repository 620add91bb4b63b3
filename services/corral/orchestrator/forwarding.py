"""Verbs only the leader serves (start, stop, restart, register, ...), reachable through any replica.

Every replica answers `<prefix>.orchestrator.<verb>` in the service's queue group. A replica
that does not lead forwards the request, unchanged, to `<prefix>.orchestrator.leader.<verb>`,
which only the leader subscribes to, and passes the reply back. While nobody leads (an election
takes up to a lease ttl) it retries for `wait` seconds, then answers UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from corral.protocol import ErrorCode, codec_for
from corral.runtime import Reply, error_reply
from corral.runtime.endpoints import ERROR_CODE_HEADER, RawHandler
from corral.subjects import Subjects

__all__ = ["LeaderRouter"]

log = logging.getLogger("corral.orchestrator")


class LeaderRouter:
    def __init__(self, nc: Client, subjects: Subjects, is_leader: Callable[[], bool], *, wait: float) -> None:
        self.nc = nc
        self.subjects = subjects
        self.is_leader = is_leader
        self.wait = wait
        self.handlers: dict[str, tuple[RawHandler, float]] = {}
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def leader_subject(self, verb: str) -> str:
        return self.subjects.service("orchestrator", f"leader.{verb}")

    def wrap(self, verb: str, handler: RawHandler, *, timeout: float) -> RawHandler:
        """The public handler of `verb`: serve here when leading, else forward to the leader."""
        self.handlers[verb] = (handler, timeout)

        async def handle(msg: Msg) -> Reply:
            if self.is_leader():
                return await handler(msg)
            return await self.forward(verb, msg, timeout)

        return handle

    async def forward(self, verb: str, msg: Msg, timeout: float) -> Reply:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.wait
        while True:
            try:
                reply = await self.nc.request(
                    self.leader_subject(verb), msg.data, timeout=timeout, headers=msg.headers
                )
            except nats.errors.NoRespondersError:
                if self.is_leader():
                    return await self.handlers[verb][0](msg)
                if loop.time() >= give_up:
                    return error_reply(
                        codec_for(msg.headers), verb, ErrorCode.UNAVAILABLE,
                        f"no orchestrator replica leads right now (waited {self.wait:g}s for an "
                        "election); retry",
                    )  # fmt: skip
                await asyncio.sleep(0.1)
                continue
            except nats.errors.TimeoutError:
                return error_reply(
                    codec_for(msg.headers), verb, ErrorCode.TIMEOUT,
                    f"the leader did not answer {verb} within {timeout:g}s",
                )  # fmt: skip
            headers = dict(reply.headers) if reply.headers else None
            code = (headers or {}).get(ERROR_CODE_HEADER)
            return Reply(reply.data, headers, code is None, code or "ok")

    async def lead(self) -> None:
        """Subscribe to the leader subjects (this replica now leads)."""
        if self._subs:
            return
        for verb, (handler, _) in self.handlers.items():
            self._subs.append(await self.nc.subscribe(self.leader_subject(verb), cb=self._serve(handler)))
        await self.nc.flush()

    async def follow(self) -> None:
        """Unsubscribe (this replica no longer leads); requests in flight finish."""
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _serve(self, handler: RawHandler) -> Callable[[Msg], Awaitable[None]]:
        # A task per request: nats-py runs one subscription's callbacks one after another, and
        # a start_system may take a while.
        async def respond(msg: Msg) -> None:
            reply = await handler(msg)
            if msg.reply:
                with contextlib.suppress(Exception):
                    await self.nc.publish(msg.reply, reply.data, headers=reply.headers)

        async def callback(msg: Msg) -> None:
            task = asyncio.create_task(respond(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return callback
