"""How the orchestrator protects callers from a module: timeout, circuit breaker, bulkhead.

Per module in corral.toml (`[modules.<name>] timeout`, `[modules.<name>.breaker]`,
`[modules.<name>.bulkhead]`); modules without an entry get the defaults below.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["BreakerConfig", "BulkheadConfig", "CallPolicy"]

Positive = Annotated[float, msgspec.Meta(gt=0)]
Count = Annotated[int, msgspec.Meta(ge=1)]


class BreakerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    window_size: Count = 20  # outcomes kept for the failure rate (count-based sliding window)
    minimum_calls: Count = 10  # no rate verdict before this many outcomes in the window
    failure_rate_threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    consecutive_failures: Count = 5  # opens at once after this many failures in a row
    slow_call_threshold: Positive | None = None  # seconds; a slower success counts as a failure
    wait_open: Positive = 5.0  # seconds OPEN before the first probe
    wait_multiplier: Annotated[float, msgspec.Meta(ge=1)] = 2.0  # growth on each re-open
    wait_max: Positive = 60.0
    permitted_calls_in_half_open: Count = 1
    success_threshold: Count = 1  # successful probes that close the breaker
    reset_timeout: Positive = 60.0  # failure counts are forgotten after this long without a failure
    max_half_open: Positive = 30.0  # HALF_OPEN without a verdict this long re-opens

    def __post_init__(self) -> None:
        if self.success_threshold > self.permitted_calls_in_half_open:
            raise ValueError(
                f"success_threshold ({self.success_threshold}) cannot exceed permitted_calls_in_half_open "
                f"({self.permitted_calls_in_half_open}): the breaker could never close"
            )
        if self.minimum_calls > self.window_size:
            raise ValueError(
                f"minimum_calls ({self.minimum_calls}) cannot exceed window_size ({self.window_size})"
            )


class BulkheadConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    max_concurrent: Count = 64  # calls in flight to the module
    max_queue: Annotated[int, msgspec.Meta(ge=0)] = 256  # calls waiting for a slot, by priority


class CallPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    timeout: Positive = 30.0  # seconds; a request's own timeout wins when smaller
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    bulkhead: BulkheadConfig = msgspec.field(default_factory=BulkheadConfig)
