"""Chain the example modules: an ALGOL program -> compiler -> interpreter -> physics.

    python examples/demo.py          # with the system up (`corral up`) in another terminal

1. the compiler turns a small ALGOL program (a ball falling for ten Euler steps) into Lisp;
2. the interpreter runs that Lisp with a context (the starting height and the time step);
3. if a `physics` module answers, its `fall` function (WebAssembly) advances the ball one more step.
Without physics the demo says so and stops after step 2 (exit 0). It finds NATS like the CLI:
NATS_URL, else the URL `corral up` wrote to .corral/nats.url, else nats://127.0.0.1:4222;
CORRAL_PREFIX, else "corral".
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from corral.bus import BusSettings
from corral.errors import CorralError, NotFoundError, UnavailableError
from corral.sdk import Client
from corral.subjects import DEFAULT_PREFIX

URL_FILE = Path(".corral/nats.url")
PROGRAM = """\
BEGIN
    COMMENT a ball dropped from height h, ten Euler steps of dt seconds;
    x := h; v := 0;
    FOR i := 1 UNTIL 10 DO
    BEGIN
        v := v - 9.81 * dt;
        x := x + v * dt
    END
END"""
CONTEXT = {"h": 100.0, "dt": 0.1}


def bus_settings() -> BusSettings:
    """NATS_URL, else .corral/nats.url, else the default (the CLI's order)."""
    url = os.environ.get("NATS_URL") or (URL_FILE.read_text().strip() if URL_FILE.exists() else "")
    servers = [part.strip() for part in url.split(",") if part.strip()] or None
    return BusSettings.from_env(servers=servers, connect_attempts=3, name="corral-demo")


def stage(number: int, title: str, body: Any) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    print(f"\n[{number}] {title}\n{text}")


async def demo(client: Client) -> None:
    stage(1, "ALGOL source", PROGRAM)
    compiled = await client.send("compiler", "compile", {"source": PROGRAM, "language": "algol"})
    stage(2, f"compiled to Lisp (assigns {', '.join(compiled['variables'])})", compiled["lisp"])
    result = await client.send("interpreter", "eval", {"code": compiled["lisp"], "context": CONTEXT})
    variables = dict(result)
    stage(3, f"evaluated with context {json.dumps(CONTEXT)}", variables)
    height, velocity = variables["x"], variables["v"]
    try:
        stepped = await client.send(
            "physics", "compute", {"function": "fall", "args": [height, velocity, CONTEXT["dt"]]}
        )
    except (NotFoundError, UnavailableError) as exc:
        print(f"\nphysics is not available ({exc}); stopping after the interpreter.")
        return
    stage(4, f"physics fall(x={height}, v={velocity}, dt={CONTEXT['dt']}) -> [x, v]", stepped)


async def main() -> int:
    prefix = os.environ.get("CORRAL_PREFIX") or DEFAULT_PREFIX
    try:
        async with await Client.connect(bus_settings(), prefix=prefix) as client:
            await demo(client)
    except ConnectionError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except CorralError as exc:
        print(f"demo: {exc.code.value}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
