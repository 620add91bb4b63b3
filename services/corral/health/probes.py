"""Active checks: one round asks every SDK module for its own checks and pings every other service.

* every SDK module: `<prefix>.modctl.<module>.health` once per module, collecting each instance's
  reply (the control verbs reach every instance); an instance that does not answer fails
  `health`, a check that answers `ok: false` fails `check:<name>`. The answer comes over the
  instance's own connection and event loop, so it proves what a ping would: a module is not
  also pinged, which halves what a round costs it.
* every other instance (the services): `$SRV.PING.<service>.<service_id>` (the NATS Services
  API); one that does not answer fails `ping`.

The replies of every round come back on one subscription, made once: a round costs each
instance one request and the health service no subscribe/unsubscribe per module.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from corral.component import Component
from corral.health.registry import InstanceView
from corral.protocol import ModuleHealth, Response
from corral.subjects import SRV_PING, Subjects

__all__ = ["Prober", "RoundResult"]

# (service, instance) -> (what failed, the module's own checks by name)
RoundResult = dict[tuple[str, str], tuple[list[str], dict[str, dict[str, object]]]]

_health_reply = msgspec.json.Decoder(Response)


class _Asked:
    """One module's `health` request: the instances expected to answer, and their answers."""

    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.answers: dict[str, ModuleHealth] = {}
        self.done = asyncio.Event()


class Prober(Component):
    def __init__(self, nc: Client, subjects: Subjects) -> None:
        self.nc, self.subjects = nc, subjects
        self._inbox = nc.new_inbox()
        self._tokens = itertools.count()
        self._asked: dict[str, _Asked] = {}  # reply-subject token -> the request it answers
        self._sub: Subscription | None = None

    async def start(self) -> None:
        if self._sub is None:
            self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):  # the connection may be closing
                await sub.unsubscribe()

    async def run_round(self, views: Iterable[InstanceView], timeout: float) -> RoundResult:
        """Check every instance once."""
        views = list(views)
        by_module: dict[str, list[InstanceView]] = {}
        for view in views:
            if view.modctl:
                by_module.setdefault(view.service, []).append(view)
        pings = [self._ping(v, timeout) for v in views if not v.modctl and v.service_id]
        healths = [self._health(m, instances, timeout) for m, instances in by_module.items()]
        ping_results, health_results = await asyncio.gather(asyncio.gather(*pings), asyncio.gather(*healths))
        result: RoundResult = {(v.service, v.instance): ([], {}) for v in views}
        for key, ok in ping_results:
            if not ok:
                result[key][0].append("ping")
        for replies in health_results:
            for key, (failing, checks) in replies.items():
                result[key][0].extend(failing)
                result[key][1].update(checks)
        return result

    async def _ping(self, view: InstanceView, timeout: float) -> tuple[tuple[str, str], bool]:
        key = (view.service, view.instance)
        try:  # nats-py's request() shares one reply subscription among all requests
            await self.nc.request(f"{SRV_PING}.{view.service}.{view.service_id}", b"", timeout=timeout)
        except Exception:  # timeout, no responders, reconnecting: the ping failed
            return key, False
        return key, True

    async def _health(self, module: str, instances: list[InstanceView], timeout: float) -> RoundResult:
        """Publish one `health` request and gather every instance's reply until all or the timeout."""
        token = str(next(self._tokens))
        asked = self._asked[token] = _Asked({v.instance for v in instances})
        try:
            await self.nc.publish(self.subjects.modctl(module, "health"), b"", reply=f"{self._inbox}.{token}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asked.done.wait(), timeout)
        except Exception:  # reconnecting: every instance fails this round
            pass
        finally:
            del self._asked[token]
        out: RoundResult = {}
        for instance in asked.expected:
            answer = asked.answers.get(instance)
            if answer is None:
                out[(module, instance)] = (["health"], {})
                continue
            checks = {name: {"ok": c.ok, "error": c.error} for name, c in answer.checks.items()}
            out[(module, instance)] = ([f"check:{n}" for n, c in answer.checks.items() if not c.ok], checks)
        return out

    async def _on_reply(self, msg: Msg) -> None:
        asked = self._asked.get(msg.subject.rpartition(".")[2])
        if asked is None:
            return  # a late answer to a round that is over
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            reply = _health_reply.decode(msg.data)
            if reply.success:
                health = msgspec.convert(reply.payload, ModuleHealth)
                asked.answers[health.instance] = health
        if asked.expected <= asked.answers.keys():
            asked.done.set()
