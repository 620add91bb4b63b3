"""The demo worker: task types to try the scheduler with at once (`make run` starts it).

    corral submit echo '{"hello": "world"}' --wait          # -> {"hello": "world"}
    corral submit sleep '{"seconds": 3}' --wait             # progress every 10%
    corral submit fail '{}'                                 # retries, then `corral dlq list`
    corral submit flaky '{"fail_times": 2}' --wait          # fails twice, then succeeds
    corral submit cpu '{"seconds": 2}' --wait               # burns a core, off the event loop

Run it standalone with `python examples/workers/demo`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import msgspec

from corral.sdk import TaskContext, Worker

worker = Worker("demo", concurrency=8)

Seconds = Annotated[float, msgspec.Meta(ge=0, le=3600)]


class Sleep(msgspec.Struct, forbid_unknown_fields=True):
    seconds: Seconds = 1.0


class Flaky(msgspec.Struct, forbid_unknown_fields=True):
    fail_times: Annotated[int, msgspec.Meta(ge=0, le=100)] = 1


class Cpu(msgspec.Struct, forbid_unknown_fields=True):
    seconds: Seconds = 1.0


@worker.task("echo")
async def echo(ctx: TaskContext, payload: Any) -> Any:
    """Returns its payload."""
    return payload


@worker.task("sleep")
async def sleep(ctx: TaskContext, payload: Sleep) -> dict[str, float]:
    """Sleeps, reporting progress every 10% and checkpointing, so a redelivery resumes."""
    step = payload.seconds / 10
    start = int(ctx.resume_state or 0)
    for tenth in range(start, 10):
        if ctx.cancelled:
            break
        await asyncio.sleep(step)
        await ctx.progress((tenth + 1) * 10, {"slept": round(step * (tenth + 1), 3)})
        await ctx.checkpoint(tenth + 1)
    return {"slept": payload.seconds, "resumed_at": start * step}


@worker.task("fail")
async def fail(ctx: TaskContext, payload: Any) -> None:
    """Always raises: watch the retries, then find it with `corral dlq list`."""
    raise RuntimeError(f"the fail task fails, as asked (attempt {ctx.attempt})")


@worker.task("flaky")
async def flaky(ctx: TaskContext, payload: Flaky) -> dict[str, int]:
    """Fails its first `fail_times` attempts, then succeeds."""
    if ctx.attempt <= payload.fail_times:
        raise RuntimeError(f"flaky failure {ctx.attempt} of {payload.fail_times}")
    return {"attempts": ctx.attempt}


def _burn(seconds: float, ctx: TaskContext) -> int:
    deadline = time.monotonic() + seconds
    loops = 0
    while time.monotonic() < deadline and not ctx.cancelled:
        for _ in range(10_000):
            loops += 1
    return loops


@worker.task("cpu")
async def cpu(ctx: TaskContext, payload: Cpu) -> dict[str, Any]:
    """Burns a core for `seconds` in a thread (the event loop keeps the lease), stopping early
    when cancelled or out of time."""
    loops = await asyncio.to_thread(_burn, payload.seconds, ctx)
    return {"seconds": payload.seconds, "loops": loops, "stopped_early": ctx.cancelled}


if __name__ == "__main__":
    worker.run()
