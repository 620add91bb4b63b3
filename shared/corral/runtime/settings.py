"""Settings every corral process shares, read from the environment."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from corral.bus import BusSettings
from corral.errors import ConfigError
from corral.subjects import DEFAULT_PREFIX

__all__ = ["ServiceSettings"]


def _new_instance_id() -> str:
    # Short, subject-safe and unique enough to tell replicas apart in logs and heartbeats.
    return f"{socket.gethostname().split('.')[0][:24]}-{uuid.uuid4().hex[:8]}".replace(".", "-")


class ServiceSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Runtime settings of one service or module instance.

    Environment: `CORRAL_PREFIX`, `CORRAL_INSTANCE`, `CORRAL_METRICS_HOST`, `CORRAL_METRICS_PORT`
    (0 picks a free port; -1 turns the HTTP endpoint off), `CORRAL_HEARTBEAT_INTERVAL` (seconds),
    `CORRAL_DRAIN_TIMEOUT` (seconds), `CORRAL_MAX_REQUEST_BYTES`, `CORRAL_LOG_LEVEL`,
    `CORRAL_STALL_WARNING` (seconds a heartbeat may be late, the event loop blocked, before the
    instance logs where; 0 turns it off), plus the `NATS_*` variables of BusSettings.
    """

    prefix: str = DEFAULT_PREFIX
    instance: str = msgspec.field(default_factory=_new_instance_id)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    heartbeat_interval: float = 1.0
    drain_timeout: float = 10.0
    max_request_bytes: int = 1024 * 1024
    log_level: str = "INFO"
    stall_warning: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    bus: BusSettings = msgspec.field(default_factory=BusSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServiceSettings:
        env = os.environ if env is None else env
        raw: dict[str, Any] = {}
        for field, var in (
            ("prefix", "CORRAL_PREFIX"),
            ("instance", "CORRAL_INSTANCE"),
            ("metrics_host", "CORRAL_METRICS_HOST"),
            ("metrics_port", "CORRAL_METRICS_PORT"),
            ("heartbeat_interval", "CORRAL_HEARTBEAT_INTERVAL"),
            ("drain_timeout", "CORRAL_DRAIN_TIMEOUT"),
            ("max_request_bytes", "CORRAL_MAX_REQUEST_BYTES"),
            ("log_level", "CORRAL_LOG_LEVEL"),
            ("stall_warning", "CORRAL_STALL_WARNING"),
        ):
            if value := env.get(var):
                raw[field] = value
        raw.update({k: v for k, v in overrides.items() if v is not None})
        raw.setdefault("bus", BusSettings.from_env(env))
        try:
            # strict=False: environment values are strings; msgspec converts "9100" -> 9100.
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid service setting from the environment: {exc}") from exc
