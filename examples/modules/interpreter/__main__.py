"""The interpreter module: `eval` runs a program of the small Lisp in lisp.py.

    corral send interpreter eval '{"code": "(+ 1 2 3)"}'                  # -> 6
    corral send interpreter eval '{"code": "(* x 2)", "context": {"x": 21}}'   # -> 42

Run it standalone with `python examples/modules/interpreter` (NATS_URL, CORRAL_PREFIX apply).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
from lisp import LispError, evaluate

from corral.sdk import Module, ValidationError

module = Module("interpreter", version="1.0.0", description="a small Lisp: eval")

MAX_CODE_CHARS = 64 * 1024


class EvalRequest(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(max_length=MAX_CODE_CHARS)]
    context: dict[str, Any] = {}
    max_steps: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 100_000


@module.handler("eval")
async def eval_(req: EvalRequest) -> Any:
    """The value of the program's last form; a Lisp error is the caller's, so it is VALIDATION."""
    try:
        # A thread keeps heartbeats and other requests flowing while a long program runs.
        return await asyncio.to_thread(evaluate, req.code, req.context, max_steps=req.max_steps)
    except LispError as exc:
        raise ValidationError(f"lisp: {exc}") from exc


if __name__ == "__main__":
    module.run()
