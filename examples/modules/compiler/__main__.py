"""The compiler module: `compile` turns a program of a small ALGOL subset into the interpreter's Lisp.

    corral send compiler compile '{"source": "IF x > 10 THEN y := 5", "language": "algol"}'
    # -> {"lisp": "(if (> x 10) (define y 5))\\n(append ...)", "variables": ["y"]}
    corral send interpreter eval '{"code": "<that lisp>", "context": {"x": 11}}'   # -> [["y", 5]]

The language and what the generated Lisp means are described in algol.py. A syntax error is the
caller's: VALIDATION, with line and column. Run it standalone with `python examples/modules/compiler`.

Live config: `corral config set compiler max_depth=20` limits how deeply programs may nest, at
once, in every running instance.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec
from algol import AlgolSyntaxError, compile_algol
from algol_parser import MAX_NESTING

from corral.sdk import Module, ValidationError

module = Module("compiler", version="1.0.0", description="ALGOL subset to the interpreter's Lisp: compile")

MAX_SOURCE_CHARS = 64 * 1024
LANGUAGES = ("algol",)


class CompileRequest(msgspec.Struct, forbid_unknown_fields=True):
    source: Annotated[str, msgspec.Meta(max_length=MAX_SOURCE_CHARS)]
    language: str = "algol"


class CompilerConfig(msgspec.Struct, forbid_unknown_fields=True):
    # Nesting levels (blocks, statements, parentheses) a program may use. Past 64, a deeply
    # parenthesised expression would exhaust Python's stack in the recursive parser.
    max_depth: Annotated[int, msgspec.Meta(ge=1, le=64)] = MAX_NESTING


@module.on_config
def configure(config: CompilerConfig) -> None:
    """Declares the config type; `compile` reads `module.config` on every call."""


class CompileReply(msgspec.Struct):
    lisp: str
    variables: list[str]  # the assigned names, in order of first assignment


@module.handler("compile")
async def compile_(req: CompileRequest) -> CompileReply:
    """Lisp for `req.source`; an unknown language or a syntax error is VALIDATION."""
    if req.language not in LANGUAGES:
        raise ValidationError(
            f"unsupported language {req.language!r}; supported languages: {', '.join(LANGUAGES)}"
        )
    try:
        # A thread keeps heartbeats and other requests flowing while a large program compiles.
        config: CompilerConfig = module.config
        compiled = await asyncio.to_thread(compile_algol, req.source, max_depth=config.max_depth)
    except AlgolSyntaxError as exc:
        raise ValidationError(str(exc)) from exc
    return CompileReply(compiled.lisp, list(compiled.variables))


if __name__ == "__main__":
    module.run()
