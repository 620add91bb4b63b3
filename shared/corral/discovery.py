"""Who is running: the NATS Services API (`$SRV.INFO`) filtered to one corral prefix."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from nats.aio.client import Client

from corral.protocol import ModuleStatus
from corral.subjects import SRV_INFO, Subjects

__all__ = ["EndpointInfo", "InstanceInfo", "discover", "module_statuses"]


class EndpointInfo(msgspec.Struct):
    name: str
    subject: str
    queue_group: str = ""
    metadata: dict[str, str] | None = None


class InstanceInfo(msgspec.Struct):
    name: str
    id: str
    version: str
    metadata: dict[str, str] = {}
    endpoints: list[EndpointInfo] = []
    description: str = ""

    @property
    def role(self) -> str:
        return self.metadata.get("corral_role", "")

    @property
    def metrics_url(self) -> str:
        return self.metadata.get("metrics_url", "")


_decoder = msgspec.json.Decoder(InstanceInfo)


class _StatusReply(msgspec.Struct):
    success: bool
    payload: msgspec.Raw = msgspec.Raw(b"null")


_status_decoder = msgspec.json.Decoder(_StatusReply)
_status_payload = msgspec.json.Decoder(ModuleStatus)


async def discover(
    nc: Client, prefix: str, *, wait: float = 0.3, name: str | None = None
) -> list[InstanceInfo]:
    """Every service and module instance of `prefix` that answers `$SRV.INFO` within `wait` seconds."""
    found: list[InstanceInfo] = []
    inbox = nc.new_inbox()

    async def collect(msg: Any) -> None:
        try:
            info = _decoder.decode(msg.data)
        except msgspec.DecodeError:
            return  # not a corral service, or a newer Services API shape we do not read
        if info.metadata.get("corral_prefix") == prefix:
            found.append(info)

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(f"{SRV_INFO}.{name}" if name else SRV_INFO, b"", reply=inbox)
        await nc.flush()
        await asyncio.sleep(wait)
    finally:
        await sub.unsubscribe()
    return sorted(found, key=lambda i: (i.role, i.name, i.id))


def module_types(instances: list[InstanceInfo], prefix: str) -> dict[str, set[str]]:
    """Module name -> the message types its instances answer."""
    marker = f"{prefix}.mod."
    modules: dict[str, set[str]] = {}
    for info in instances:
        if info.role != "module":
            continue
        types = modules.setdefault(info.name, set())
        for endpoint in info.endpoints:
            if endpoint.subject.startswith(marker):
                types.add(endpoint.subject.rsplit(".", 1)[1])
    return modules


async def module_statuses(
    nc: Client, prefix: str, module: str, *, wait: float = 0.3, until_ready: bool = False
) -> list[ModuleStatus]:
    """The `<prefix>.modctl.<module>.status` of every SDK instance of `module` answering within
    `wait` seconds (every instance answers: each has a queue group of its own). With
    `until_ready`, return as soon as one instance says it is ready."""
    found: list[ModuleStatus] = []
    done = asyncio.Event()
    inbox = nc.new_inbox()

    async def collect(msg: Any) -> None:
        try:
            reply = _status_decoder.decode(msg.data)
            if not reply.success:
                return
            status = _status_payload.decode(reply.payload)
        except msgspec.DecodeError:
            return  # not an SDK module's status (another kind of module, or a newer shape)
        found.append(status)
        if until_ready and status.ready:
            done.set()

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(Subjects(prefix).modctl(module, "status"), b"", reply=inbox)
        await nc.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), wait)
    finally:
        await sub.unsubscribe()
    return sorted(found, key=lambda s: s.instance)
