"""The lifecycle state machine: every edge by table, and the event each transition returns."""

from __future__ import annotations

import pytest

from corral.orchestrator.states import EDGES, IllegalTransition, ModuleState, StateHolder, transition

S = ModuleState
ALLOWED = {(old, new) for old, news in EDGES.items() for new in news}


@pytest.mark.parametrize(("old", "new"), sorted(ALLOWED))
def test_each_edge_moves_the_state_and_describes_the_change(old: ModuleState, new: ModuleState) -> None:
    holder = StateHolder(state=old, attempts=2)
    event = transition("m", holder, new, "because", now=12.5, error="boom", attempts=3)
    assert (holder.state, holder.reason, holder.since, holder.attempts) == (new, "because", 12.5, 3)
    assert (event.module, event.old, event.new, event.reason, event.time) == ("m", old, new, "because", 12.5)
    # The error is kept only on failed.
    assert holder.error == event.error == ("boom" if new is S.FAILED else "")


@pytest.mark.parametrize(("old", "new"), sorted((o, n) for o in S for n in S if (o, n) not in ALLOWED))
def test_every_other_change_is_refused(old: ModuleState, new: ModuleState) -> None:
    holder = StateHolder(state=old)
    with pytest.raises(IllegalTransition, match=f"module m: {old} -> {new} is not a lifecycle edge"):
        transition("m", holder, new, "x", now=1.0)
    assert holder.state is old


def test_a_supervised_life() -> None:
    holder = StateHolder()
    path = [S.STARTING, S.RUNNING, S.STARTING, S.RUNNING, S.DEGRADED, S.FAILED, S.STARTING, S.RUNNING,
            S.STOPPING, S.STOPPED]  # fmt: skip
    events = [transition("m", holder, new, new.value, now=float(i)) for i, new in enumerate(path)]
    assert [(e.old, e.new) for e in events][:3] == [
        (S.REGISTERED, S.STARTING), (S.STARTING, S.RUNNING), (S.RUNNING, S.STARTING),
    ]  # fmt: skip
    assert holder.state is S.STOPPED


def test_attempts_are_kept_unless_given() -> None:
    holder = StateHolder(state=S.RUNNING, attempts=4)
    transition("m", holder, S.STOPPING, "stop", now=1.0)
    assert holder.attempts == 4
