"""Active checks: one round pings every instance and asks SDK modules for their own checks.

* every instance: `$SRV.PING.<service>.<service_id>` (the NATS Services API), with a timeout;
* every SDK module: `<prefix>.modctl.<module>.health` once per module, collecting each instance's
  reply (the control verbs reach every instance); an instance that does not answer fails
  `health`, a check that answers `ok: false` fails `check:<name>`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from corral.health.registry import InstanceView
from corral.protocol import ModuleHealth, Response
from corral.subjects import SRV_PING, Subjects

__all__ = ["RoundResult", "run_round"]

RoundResult = dict[tuple[str, str], tuple[list[str], dict[str, dict[str, object]]]]

_health_reply = msgspec.json.Decoder(Response)


async def run_round(
    nc: Client, subjects: Subjects, views: Iterable[InstanceView], timeout: float
) -> RoundResult:
    """Check every instance once; (service, instance) -> (what failed, the module's own checks)."""
    views = list(views)
    pings = [_ping(nc, v, timeout) for v in views if v.service_id]
    by_module: dict[str, list[InstanceView]] = {}
    for view in views:
        if view.modctl:
            by_module.setdefault(view.service, []).append(view)
    healths = [_health(nc, subjects, m, instances, timeout) for m, instances in by_module.items()]
    ping_results = await asyncio.gather(*pings)
    health_results = await asyncio.gather(*healths)
    result: RoundResult = {(v.service, v.instance): ([], {}) for v in views}
    for key, ok in ping_results:
        if not ok:
            result[key][0].append("ping")
    for replies in health_results:
        for key, (failing, checks) in replies.items():
            result[key][0].extend(failing)
            result[key][1].update(checks)
    return result


async def _ping(nc: Client, view: InstanceView, timeout: float) -> tuple[tuple[str, str], bool]:
    key = (view.service, view.instance)
    try:
        await nc.request(f"{SRV_PING}.{view.service}.{view.service_id}", b"", timeout=timeout)
    except Exception:  # timeout, no responders, reconnecting: the ping failed
        return key, False
    return key, True


async def _health(
    nc: Client, subjects: Subjects, module: str, instances: list[InstanceView], timeout: float
) -> dict[tuple[str, str], tuple[list[str], dict[str, dict[str, object]]]]:
    """Publish one `health` request and gather every instance's reply until all or the timeout."""
    expected = {v.instance for v in instances}
    answers: dict[str, ModuleHealth] = {}
    done = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            reply = _health_reply.decode(msg.data)
            if reply.success:
                health = msgspec.convert(reply.payload, ModuleHealth)
                answers[health.instance] = health
        if expected <= answers.keys():
            done.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(subjects.modctl(module, "health"), b"", reply=inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
    finally:
        await sub.unsubscribe()
    out: dict[tuple[str, str], tuple[list[str], dict[str, dict[str, object]]]] = {}
    for instance in expected:
        answer = answers.get(instance)
        if answer is None:
            out[(module, instance)] = (["health"], {})
            continue
        checks = {name: {"ok": c.ok, "error": c.error} for name, c in answer.checks.items()}
        out[(module, instance)] = ([f"check:{n}" for n, c in answer.checks.items() if not c.ok], checks)
    return out
