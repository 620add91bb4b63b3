"""The state service's own settings, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Final

import msgspec

from corral.errors import ConfigError

__all__ = ["KV_MAX_HISTORY", "StateSettings"]

# JetStream KV keeps at most 64 revisions of a key (nats-py refuses more when it creates a bucket).
KV_MAX_HISTORY: Final = 64


class StateSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Environment: `CORRAL_STATE_MAX_VERSIONS` (revisions kept per key, 1-64),
    `CORRAL_STATE_MAX_VALUE_BYTES` (largest value as JSON), `CORRAL_STATE_REPLICAS` (JetStream
    replicas of the buckets), `CORRAL_STATE_EVENTS` (0 turns off `<prefix>.evt.state.changed`)."""

    max_versions: Annotated[int, msgspec.Meta(ge=1, le=KV_MAX_HISTORY)] = 10
    max_value_bytes: Annotated[int, msgspec.Meta(ge=16, le=8 * 1024 * 1024)] = 512 * 1024
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    events: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> StateSettings:
        env = os.environ if env is None else env
        raw = {field: env[var] for field, var in _ENV.items() if env.get(var)}
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            where = next((var for field, var in _ENV.items() if f"`$.{field}`" in str(exc)), None)
            hint = f" (from {where}={env.get(where)!r})" if where and where in env else ""
            raise ConfigError(f"invalid state setting: {exc}{hint}") from exc


_ENV: Final = {
    "max_versions": "CORRAL_STATE_MAX_VERSIONS",
    "max_value_bytes": "CORRAL_STATE_MAX_VALUE_BYTES",
    "replicas": "CORRAL_STATE_REPLICAS",
    "events": "CORRAL_STATE_EVENTS",
}
