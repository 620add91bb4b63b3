"""Which instances of a module answer readiness, asked fresh over NATS.

An instance is ready when it is registered with the Services API (as a module, or a scheduler
worker: role `worker`) and, if it is an SDK module
(it has a `status` control verb), its status says ready. A module without the verb (the
WebAssembly adapter) serves once registered. `since` (wall clock) skips answers from a process
that started before it, so an instance that re-executes itself (the `reset` verb) is seen
ready only once it is back.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from corral.discovery import discover, module_statuses
from corral.subjects import Subjects

__all__ = ["ready_instances"]


async def ready_instances(
    nc: Client, subjects: Subjects, module: str, *, since: float = 0.0, wait: float = 0.15
) -> dict[str, bool]:
    """Instance id -> ready, for every instance of `module` that answers within `wait` seconds."""
    status_subject = subjects.modctl(module, "status")
    infos, statuses = await asyncio.gather(
        discover(nc, subjects.prefix, wait=wait, name=module),
        module_statuses(nc, subjects.prefix, module, wait=wait),
    )
    by_instance = {s.instance: s for s in statuses}
    found: dict[str, bool] = {}
    for info in infos:
        if info.role == "service":
            continue  # corral's own services; modules and scheduler workers are what we launch
        instance = info.metadata.get("instance", info.id)
        if all(e.subject != status_subject for e in info.endpoints):
            found[instance] = True
            continue
        status = by_instance.get(instance)
        found[instance] = status is not None and status.ready and status.started >= since
    return found
