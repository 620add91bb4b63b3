"""A worker process for the chaos tests: `python tests/chaos/worker_process.py NAME [--concurrency N]`.

NATS, prefix and scheduler settings come from the environment (NATS_URL, CORRAL_PREFIX,
CORRAL_SCHEDULER_*). Every task appends one JSON line to the file named by CHAOS_LOG (a single
`write` on an O_APPEND descriptor), so the test sees what ran, where, and on which attempt,
even across a kill -9 of this process or of the nats-server.

Task types:
* `record`  {...}: notes the run and returns the payload;
* `steps`   {"steps": n, "seconds": s}: n steps of s seconds, a checkpoint after each; a
            redelivery resumes from the checkpoint;
* `block`   {"seconds": s}: keeps the worker busy;
* `poison`  {}: always raises.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import msgspec

from corral.sdk.task_context import TaskContext
from corral.sdk.worker import Worker

_fd: int | None = None
_name = ""  # this process's worker name, on every line


def note(event: str, ctx: TaskContext, **fields: Any) -> None:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ["CHAOS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = {"event": event, "task": ctx.task_id, "attempt": ctx.attempt, "worker": _name, **fields}
    line["time"] = time.time()
    os.write(_fd, msgspec.json.encode(line) + b"\n")


def build(name: str, concurrency: int) -> Worker:
    global _name
    _name = name
    worker = Worker(name, concurrency=concurrency)

    @worker.task("record")
    async def record(ctx: TaskContext, payload: Any) -> Any:
        note("record", ctx, payload=payload)
        return payload

    @worker.task("steps")
    async def steps(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
        start = (ctx.resume_state or {}).get("done", 0)
        note("start", ctx, resume_state=ctx.resume_state)
        for step in range(start, payload["steps"]):
            await asyncio.sleep(payload["seconds"])
            await ctx.checkpoint({"done": step + 1})
            note("step", ctx, step=step + 1)
        return {"done": payload["steps"], "resumed_from": start}

    @worker.task("block")
    async def block(ctx: TaskContext, payload: dict[str, Any]) -> None:
        note("block", ctx)
        await asyncio.sleep(payload["seconds"])

    @worker.task("poison")
    async def poison(ctx: TaskContext, payload: Any) -> None:
        note("poison", ctx)
        raise RuntimeError("poison task: fails every time")

    return worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    build(args.name, args.concurrency).run()


if __name__ == "__main__":
    main()
