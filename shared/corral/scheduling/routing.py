"""Routes: which queue subject a task waits on, and which of them a worker pulls from.

A task needs a worker that handles its `type` and offers every capability it lists. Its route
is one subject token naming exactly that: the type, then its sorted capabilities, joined with
`+` (a character no type or capability may contain, so two different needs never share a
route). A worker pulls from the route of each type it handles combined with every subset of
its capabilities, so a task lands on one route and any worker able to run it pulls it.

Each (priority, route) pair has one durable pull consumer shared by every worker that serves
it: a work-queue stream allows only one consumer per subject, and sharing it is what makes
the least busy worker take the next task.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations
from typing import Final

from corral.protocol import Priority

__all__ = ["LEVELS", "MAX_WORKER_CAPABILITIES", "consumer_name", "route", "worker_routes"]

LEVELS: Final = tuple(int(p) for p in Priority)
# 2^n routes per task type: more capabilities per worker than this is a design smell.
MAX_WORKER_CAPABILITIES: Final = 6


def route(type_: str, capabilities: Iterable[str] = ()) -> str:
    extra = sorted(set(capabilities) - {type_})
    return "+".join([type_, *extra])


def worker_routes(types: Iterable[str], capabilities: Iterable[str]) -> list[str]:
    caps = sorted(set(capabilities))
    if len(caps) > MAX_WORKER_CAPABILITIES:
        raise ValueError(
            f"a worker offers at most {MAX_WORKER_CAPABILITIES} capabilities besides its task types, "
            f"got {len(caps)}: {', '.join(caps)}"
        )
    routes: list[str] = []
    for type_ in sorted(set(types)):
        for size in range(len(caps) + 1):
            for subset in combinations(caps, size):
                name = route(type_, subset)
                if name not in routes:
                    routes.append(name)
    return routes


def consumer_name(priority: int, route_: str) -> str:
    """The durable consumer of one level and route (`p2_echo`, `p0_render+gpu`)."""
    return f"p{priority}_{route_}"
