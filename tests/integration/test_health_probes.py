"""Check rounds against real instances: SDK modules answer their `health` verb (every instance,
over one reply subscription), other services answer a Services API ping, and whoever does not
answer fails the round."""

from __future__ import annotations

import dataclasses

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from corral.health.probes import Prober
from corral.health.registry import InstanceView
from corral.runtime import RequestContext, Service, ServiceSettings
from corral.sdk import Module
from corral.subjects import Subjects


def view(service: str, instance: str, *, modctl: bool, service_id: str = "") -> InstanceView:
    return InstanceView(
        service=service, instance=instance, role="module" if modctl else "service", version="1",
        pid=1, host="h", alive=True, ready=True, last_seen_seconds=0.1, cpu_percent=0.0,
        rss_bytes=0, threads=1, open_fds=1, in_flight=0, handled=0, metrics_url="",
        service_id=service_id, modctl=modctl,
    )  # fmt: skip


@dataclasses.dataclass
class Pings:
    subjects: list[str] = dataclasses.field(default_factory=list)

    async def on(self, msg: Msg) -> None:
        self.subjects.append(msg.subject)


ROUNDS = 3


async def test_a_round_checks_modules_by_health_and_services_by_ping(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    module = Module(f"probed_{prefix}")
    state = {"db": True}

    @module.health_check("db")
    async def db() -> bool:
        return state["db"]

    service = Service(f"pinged_{prefix}", settings=settings)

    @service.endpoint("noop")
    async def noop(_: None, ctx: RequestContext) -> None:
        return None

    second = msgspec.structs.replace(settings, instance=f"{settings.instance}-2")
    pings = Pings()
    watch = await nc.subscribe("$SRV.PING.>", cb=pings.on)
    async with (
        module.service(settings) as one,
        module.service(second) as two,
        service,
        Prober(nc, Subjects(prefix)) as prober,
    ):
        await nc.flush()
        m, s = module.name, service.name
        assert one._micro is not None
        assert service._micro is not None
        service_id = service._micro.id
        views = [
            view(m, one.instance, modctl=True, service_id=one._micro.id),
            view(m, two.instance, modctl=True),
            view(m, "ghost", modctl=True),  # heartbeated once, does not answer
            view(s, service.instance, modctl=False, service_id=service_id),
            view(s, "gone", modctl=False, service_id="nosuchid"),
        ]
        for _ in range(ROUNDS):  # the reply subscription serves round after round
            result = await prober.run_round(views, timeout=0.5)
            assert result == {
                (m, one.instance): ([], {"db": {"ok": True, "error": ""}}),
                (m, two.instance): ([], {"db": {"ok": True, "error": ""}}),
                (m, "ghost"): (["health"], {}),
                (s, service.instance): ([], {}),
                (s, "gone"): (["ping"], {}),
            }
        state["db"] = False
        result = await prober.run_round(views, timeout=0.5)
        assert result[(m, one.instance)] == (["check:db"], {"db": {"ok": False, "error": "returned False"}})
        assert result[(m, two.instance)][0] == ["check:db"]
        await nc.flush()
    await watch.unsubscribe()
    # Services were pinged every round; modules never (their health answer proves as much).
    assert sorted(set(pings.subjects)) == sorted({f"$SRV.PING.{s}.{service_id}", f"$SRV.PING.{s}.nosuchid"})
    assert len(pings.subjects) == 2 * (ROUNDS + 1)


async def test_a_round_of_nothing_and_stop_twice(nc: Client, prefix: str) -> None:
    prober = Prober(nc, Subjects(prefix))
    await prober.start()
    assert await prober.run_round([], timeout=0.2) == {}
    await prober.stop()
    await prober.stop()
