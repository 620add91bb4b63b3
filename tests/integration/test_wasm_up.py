"""`corral up` with a `kind = "wasm"` module: started by the wasm adapter, reached through the orchestrator.

Skipped until corral.config knows `kind = "wasm"` (the patch that comes with the adapter).
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from corral.config import ModuleConfig
from corral.discovery import discover
from tests.conftest import CorralUp

KINDS = typing.get_args(next(f.type for f in msgspec.structs.fields(ModuleConfig) if f.name == "kind"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif("wasm" not in KINDS, reason='corral.config does not know kind = "wasm" yet'),
]

SYSTEM = """
[modules.physics]
kind = "wasm"
file = "examples/wasm/physics.wat"

[modules.physics.sandbox]
timeout_ms = 200
pool_size = 1
"""


async def test_corral_up_starts_a_wasm_module(tmp_path: Path, nats_url: str, prefix: str, nc: Client) -> None:
    system = CorralUp(tmp_path, nats_url, prefix, config_text=SYSTEM)
    system.start()
    try:
        assert "up module physics" in system.output()
        (info,) = await discover(nc, prefix, name="physics")
        assert info.role == "module"
        body = {"type": "compute", "payload": {"function": "step", "args": [2.0, 0.5]}}
        msg = await nc.request(f"{prefix}.send.physics", json.dumps(body).encode(), timeout=10)
        reply = json.loads(msg.data)
        assert (reply["success"], reply["payload"]) == (True, {"returns": [1.0]})
    finally:
        assert system.terminate() == 0


def test_a_bad_sandbox_fails_startup_and_names_the_field(tmp_path: Path, nats_url: str, prefix: str) -> None:
    bad = SYSTEM.replace("pool_size = 1", "pool_size = 0")
    system = CorralUp(tmp_path, nats_url, prefix, config_text=bad)
    with pytest.raises(AssertionError, match="exited with 1"):
        system.start(timeout=60)
    output = " ".join(system.output().split())  # the console wraps long lines
    assert "module physics exited with code 2 during startup" in output
    assert "[modules.physics.sandbox]: Expected `int` >= 1 - at `$.pool_size`" in output
