"""Settings of the health service, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from corral.errors import ConfigError

__all__ = ["HealthSettings"]

Seconds = Annotated[float, msgspec.Meta(gt=0)]


class HealthSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Environment: `CORRAL_HEALTH_CHECK_INTERVAL`, `CORRAL_HEALTH_CHECK_TIMEOUT`,
    `CORRAL_HEALTH_UNHEALTHY_THRESHOLD`, `CORRAL_HEALTH_VIOLATION_WINDOW`,
    `CORRAL_HEALTH_UNHEALTHY_WINDOW` (seconds, except the threshold)."""

    # Seconds between check rounds (module checks, service pings). A round wakes every instance
    # once, which costs an idle module about what a heartbeat does, so rounds are rarer than
    # heartbeats: a failing check is unhealthy after 3 rounds (30 s), as with a Kubernetes
    # probe's defaults, while a silent process is unhealthy after 3 heartbeats (3 s).
    check_interval: Seconds = 10.0
    check_timeout: Seconds = 1.0  # seconds an instance has to answer a check
    unhealthy_threshold: Annotated[int, msgspec.Meta(ge=1)] = 3  # missed beats / failed rounds
    violation_window: Seconds = 5.0  # over a limit this long: event, throttle, degraded
    unhealthy_window: Seconds = 30.0  # over a limit this long: unhealthy

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HealthSettings:
        env = os.environ if env is None else env
        raw: dict[str, Any] = {}
        for field in cls.__struct_fields__:
            if value := env.get(f"CORRAL_HEALTH_{field.upper()}"):
                raw[field] = value
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid health setting from the environment: {exc}") from exc
