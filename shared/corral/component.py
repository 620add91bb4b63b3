"""The shape of every long-lived corral component: `start()`, an idempotent `stop()`, `async with`."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

__all__ = ["Component", "cancel_and_wait"]


class Component:
    """Subclasses implement `start()` and an idempotent `stop()`; `async with` calls them."""

    async def start(self) -> None:
        raise TypeError(f"{type(self).__name__} must define start()")

    async def stop(self) -> None:
        raise TypeError(f"{type(self).__name__} must define stop()")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended; re-raise what it raised other than cancellation.

    It cancels again while the task carries on: on Python 3.11 `asyncio.wait_for` can swallow a
    cancellation that arrives just as its inner wait completes (gh-86296), and a loop built on it
    would then run on while `stop()` waited for it forever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled():
        task.result()
