"""The task queue's settings, read from the environment by the scheduler and by every worker.

corral.toml passes them through `env` tables: `[services.scheduler.env]` for the scheduler and
`[modules.<worker>.env]` for a worker (see README, "Scheduler settings").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Final

import msgspec

from corral.errors import ConfigError

__all__ = ["SchedulerSettings"]

Positive = Annotated[float, msgspec.Meta(gt=0)]


class SchedulerSettings(msgspec.Struct, kw_only=True, frozen=True):
    max_queued: Annotated[int, msgspec.Meta(ge=1)] = 100_000  # tasks in CORRAL_TASKS before OVERLOADED
    dedup_window: Positive = 120.0  # seconds an idempotency key is deduplicated by JetStream itself
    ack_wait: Positive = 30.0  # lease: seconds without an in-progress heartbeat before redelivery
    max_ack_pending: Annotated[int, msgspec.Meta(ge=1)] = 10_000  # per level and route
    default_timeout: Positive = 300.0
    default_max_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 3
    backoff_initial: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    backoff_multiplier: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    backoff_max: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    backoff_jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    result_ttl: Annotated[float, msgspec.Meta(ge=1)] = 24 * 3600.0
    dlq_max_age: Annotated[float, msgspec.Meta(ge=1)] = 30 * 24 * 3600.0
    aging: Positive = 60.0  # seconds of waiting that make a task one level more urgent
    snapshot_every: Annotated[int, msgspec.Meta(ge=1)] = 10  # progress deltas between full snapshots
    idle_poll: Positive = 1.0  # seconds an idle worker waits for a kick before looking anyway
    recheck: Annotated[float, msgspec.Meta(ge=0)] = 0.05  # seconds an empty queue is not asked again
    monitor_interval: Positive = 2.0  # seconds between the scheduler's consumer checks
    running_record_after: Annotated[float, msgspec.Meta(ge=0)] = (
        0.25  # a task running longer gets a record write
    )
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> SchedulerSettings:
        env = os.environ if env is None else env
        raw: dict[str, Any] = {}
        for field in cls.__struct_fields__:
            if value := env.get(ENV_PREFIX + field.upper()):
                raw[field] = value
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid scheduler setting ({ENV_PREFIX}<FIELD>): {exc}") from exc


ENV_PREFIX: Final = "CORRAL_SCHEDULER_"
