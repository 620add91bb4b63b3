"""Module lifecycle states and the one function that changes them. Depends on nothing but msgspec.

`transition()` checks the edge, updates the record and returns the event to publish on
`<prefix>.evt.lifecycle.<module>`; the caller publishes it. Every allowed edge is listed in
EDGES with why it happens.
"""

from __future__ import annotations

import enum

import msgspec

__all__ = [
    "ACTIVE_STATES",
    "EDGES",
    "UP_STATES",
    "IllegalTransition",
    "LifecycleAlert",
    "LifecycleEvent",
    "ModuleState",
    "StateHolder",
    "transition",
]


class ModuleState(enum.StrEnum):
    REGISTERED = "registered"  # known, never started (or not started because a dependency failed)
    STARTING = "starting"  # launched (or relaunching after a failure), not all instances ready
    RUNNING = "running"  # every instance answered readiness
    DEGRADED = "degraded"  # serving with features off (the `degrade` verb)
    STOPPING = "stopping"  # asked to drain; killed after stop_timeout
    STOPPED = "stopped"  # no instance runs, on purpose
    FAILED = "failed"  # gave up: waits for an operator (`corral start|restart <module>`)


UP_STATES = frozenset({ModuleState.RUNNING, ModuleState.DEGRADED})  # dependents may serve
ACTIVE_STATES = frozenset({ModuleState.STARTING, ModuleState.RUNNING, ModuleState.DEGRADED})

S = ModuleState
EDGES: dict[ModuleState, frozenset[ModuleState]] = {
    S.REGISTERED: frozenset({
        S.STARTING,  # REGISTERED -> STARTING: start_system or `corral start`
        S.STOPPED,  # REGISTERED -> STOPPED: not started, a dependency did not come up
        S.RUNNING,  # REGISTERED -> RUNNING: an external or adopted module found already serving
    }),
    S.STARTING: frozenset({
        S.RUNNING,  # STARTING -> RUNNING: every instance answered readiness
        S.DEGRADED,  # STARTING -> DEGRADED: relaunched by the degraded strategy
        S.FAILED,  # STARTING -> FAILED: exited, timed out, or recovery gave up
        S.STOPPING,  # STARTING -> STOPPING: stop requested, or startup rolled back
    }),
    S.RUNNING: frozenset({
        S.STARTING,  # RUNNING -> STARTING: an instance failed and is being relaunched
        S.DEGRADED,  # RUNNING -> DEGRADED: the degraded strategy sent `degrade`
        S.STOPPING,  # RUNNING -> STOPPING: stop requested
        S.FAILED,  # RUNNING -> FAILED: failure with strategy manual, or intensity exhausted
    }),
    S.DEGRADED: frozenset({
        S.RUNNING,  # DEGRADED -> RUNNING: restarted clean by an operator
        S.STARTING,  # DEGRADED -> STARTING: an instance failed and is being relaunched
        S.STOPPING,  # DEGRADED -> STOPPING: stop requested
        S.FAILED,  # DEGRADED -> FAILED: failure with strategy manual, or intensity exhausted
    }),
    S.STOPPING: frozenset({
        S.STOPPED,  # STOPPING -> STOPPED: every instance exited (drained or killed)
        S.FAILED,  # STOPPING -> FAILED: an instance could not be stopped
    }),
    S.STOPPED: frozenset({
        S.STARTING,  # STOPPED -> STARTING: started again
        S.RUNNING,  # STOPPED -> RUNNING: an external module came back on its own
    }),
    S.FAILED: frozenset({
        S.STARTING,  # FAILED -> STARTING: an operator starts or restarts it
        S.STOPPING,  # FAILED -> STOPPING: an operator stops what is left of it
        S.STOPPED,  # FAILED -> STOPPED: nothing left running to stop
        S.RUNNING,  # FAILED -> RUNNING: an external module came back on its own
    }),
}  # fmt: skip
del S


class IllegalTransition(Exception):
    """A state change the lifecycle does not allow (a bug in the caller, never user input)."""


class LifecycleEvent(msgspec.Struct, kw_only=True):
    """`<prefix>.evt.lifecycle.<module>`: one state change."""

    module: str
    old: ModuleState
    new: ModuleState
    reason: str
    time: float
    error: str = ""  # set when new is failed
    attempts: int = 0  # recovery attempts in the current window
    pids: list[int] = []  # the module's processes at the time of the change (process and wasm)
    leader: str = ""  # the orchestrator replica that made the change


class LifecycleAlert(msgspec.Struct, kw_only=True):
    """`<prefix>.evt.lifecycle.<module>.alert`: a module that waits for an operator."""

    module: str
    state: ModuleState
    error: str
    attempts: int
    reason: str
    time: float
    action: str  # what the operator can do


class StateHolder(msgspec.Struct, kw_only=True):
    """The part of a module record `transition` changes."""

    state: ModuleState = ModuleState.REGISTERED
    reason: str = ""
    error: str = ""
    attempts: int = 0
    since: float = 0.0


def transition(
    module: str,
    holder: StateHolder,
    new: ModuleState,
    reason: str,
    *,
    now: float,
    error: str = "",
    attempts: int | None = None,
) -> LifecycleEvent:
    """Move `holder` to `new` and return the event describing the change."""
    old = holder.state
    if new not in EDGES[old]:
        raise IllegalTransition(f"module {module}: {old} -> {new} is not a lifecycle edge ({reason})")
    holder.state = new
    holder.reason = reason
    holder.since = now
    holder.error = error if new is ModuleState.FAILED else ""
    if attempts is not None:
        holder.attempts = attempts
    return LifecycleEvent(
        module=module, old=old, new=new, reason=reason, time=now, error=holder.error, attempts=holder.attempts
    )
