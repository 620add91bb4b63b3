"""The NATS side of a hosted WebAssembly module: one Service per module, named after it.

`nats micro ls` lists `physics`, not the adapter. Endpoints:

* `<prefix>.mod.<module>.compute` (the module's queue group): a ComputeRequest, answered by
  the instance pool;
* `<prefix>.modctl.<module>.reload` (every adapter instance hosting the module answers): re-read
  the module's file and switch to it; calls in flight finish on the old version.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from corral.adapters.wasm.messages import ComputeReply, ComputeRequest, ReloadReply
from corral.adapters.wasm.pool import InstancePool
from corral.adapters.wasm.program import WasmEngine, WasmProgram
from corral.adapters.wasm.sandbox import WasmModuleSpec
from corral.runtime import RequestContext, Service, ServiceSettings
from corral.runtime.endpoints import typed_handler

__all__ = ["ADAPTER_VERSION", "WasmModuleService", "open_pool", "serve_module"]

ADAPTER_VERSION = "0.1.0"


class WasmModuleService(Service):
    """Serves one WebAssembly module's pool; stopping the service stops the pool."""

    role = "module"

    def __init__(self, pool: InstancePool, settings: ServiceSettings | None = None) -> None:
        super().__init__(
            pool.name,
            version=ADAPTER_VERSION,
            settings=settings,
            description=f"WebAssembly module {pool.name} ({pool.program.path.name}), corral wasm adapter",
        )
        self.pool = pool

    async def setup(self) -> None:
        limit = self.settings.max_request_bytes
        self.add_endpoint(
            "compute",
            self.subjects.module(self.name, "compute"),
            typed_handler("compute", ComputeRequest, self._compute, limit),
            response_type="compute",
        )
        self.add_endpoint(
            "reload",
            self.subjects.modctl(self.name, "reload"),
            typed_handler("reload", None, self._reload, limit),
            response_type="reload",
            # A group of its own per instance: a reload reaches every replica, not just one.
            queue_group=self.subjects.queue_group(f"{self.name}-{self.instance}"),
        )
        self.metrics.add_gauge_callback(
            "wasm_instances_busy", "WASM instances running a call", lambda: float(self.pool.busy)
        )
        self.metrics.add_gauge_callback(
            "wasm_calls_waiting", "Calls waiting for an idle WASM instance", lambda: float(self.pool.waiting)
        )
        self.metrics.add_gauge_callback(
            "wasm_module_version",
            "Reloads of the WASM module plus one",
            lambda: float(self.pool.program.version),
        )

    async def teardown(self) -> None:
        await self.pool.stop()

    async def _compute(self, request: ComputeRequest, _ctx: RequestContext) -> ComputeReply:
        return await self.pool.compute(request)

    async def _reload(self, _payload: Any, _ctx: RequestContext) -> ReloadReply:
        program = await self.pool.reload()
        return ReloadReply(
            module=program.name,
            file=str(program.path),
            version=program.version,
            sha256=program.sha256,
            exports=program.describe_exports(),
        )


async def open_pool(spec: WasmModuleSpec) -> InstancePool:
    """Compile `spec`'s file and start its instances (compiling runs off the event loop)."""
    engine = WasmEngine(spec.sandbox)
    try:
        program = await asyncio.to_thread(WasmProgram.load, spec.name, spec.file, engine)
    except BaseException:
        engine.close()
        raise
    pool = InstancePool(program)
    await pool.start()
    return pool


@asynccontextmanager
async def serve_module(
    spec: WasmModuleSpec, settings: ServiceSettings | None = None
) -> AsyncIterator[WasmModuleService]:
    """`async with serve_module(spec, settings) as service:` - the module, served, then stopped."""
    pool = await open_pool(spec)
    try:
        async with WasmModuleService(pool, settings) as service:
            assert isinstance(service, WasmModuleService)
            await service.nc.flush()  # subscriptions reach the server before the caller's first request
            yield service
    finally:
        await pool.stop()
