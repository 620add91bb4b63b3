"""`<prefix>.scheduler.recurring.<verb>`: add, list and remove recurring tasks.

    nats req corral.scheduler.recurring.add '{"name": "cleanup", "type": "echo", "every": "5m"}'
    nats req corral.scheduler.recurring.list ''
    nats req corral.scheduler.recurring.remove '{"name": "cleanup"}'

The request Structs carry the constraints (RecurringConfig's), so a bad schedule is a
VALIDATION reply naming the field before a handler runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
import nats.errors
import nats.js.errors

from corral.config import RecurringConfig
from corral.errors import UnavailableError
from corral.runtime import RequestContext, Service
from corral.scheduler.recurring_runner import RecurringRunner, ScheduleView

__all__ = ["RecurringAdd", "RecurringName", "register_recurring_endpoints"]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")]


class RecurringAdd(RecurringConfig, kw_only=True, forbid_unknown_fields=True):
    """`recurring.add`: a schedule and its name (one subject token); replaces one of that name."""

    name: Name


class RecurringName(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`recurring.remove`."""

    name: Name


class AddReply(msgspec.Struct, kw_only=True):
    schedule: ScheduleView
    replaced: bool


class ListReply(msgspec.Struct, kw_only=True):
    schedules: list[ScheduleView]


class RemoveReply(msgspec.Struct, kw_only=True):
    name: str
    removed: bool = True


def register_recurring_endpoints(service: Service, runner: RecurringRunner) -> None:
    async def add(request: RecurringAdd, ctx: RequestContext) -> AddReply:
        fields = {f: getattr(request, f) for f in RecurringConfig.__struct_fields__}
        async with _jetstream():
            view, replaced = await runner.add(request.name, RecurringConfig(**fields))
        return AddReply(schedule=view, replaced=replaced)

    async def list_(_: None, ctx: RequestContext) -> ListReply:
        async with _jetstream():
            return ListReply(schedules=await runner.views())

    async def remove(request: RecurringName, ctx: RequestContext) -> RemoveReply:
        async with _jetstream():
            await runner.remove(request.name)
        return RemoveReply(name=request.name)

    service.endpoint("recurring.add", RecurringAdd)(add)
    service.endpoint("recurring.list")(list_)
    service.endpoint("recurring.remove", RecurringName)(remove)


@contextlib.asynccontextmanager
async def _jetstream() -> AsyncIterator[None]:
    """The KV bucket cannot be reached: UNAVAILABLE (retry), not a module error."""
    try:
        yield
    except (nats.errors.Error, TimeoutError) as exc:
        if isinstance(exc, nats.js.errors.KeyNotFoundError):
            raise
        raise UnavailableError(f"JetStream did not complete the request ({exc!r}); retry") from exc
