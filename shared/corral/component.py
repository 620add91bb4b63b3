"""The shape of every long-lived corral component: `start()`, an idempotent `stop()`, `async with`."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Component"]


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
