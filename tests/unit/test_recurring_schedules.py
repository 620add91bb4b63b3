"""Recurring schedules: ticks, catch-up within grace, missed ticks, skips, retries (fake clock)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from corral.config import RecurringConfig
from corral.scheduler.recurring import (
    LoadSample,
    Outcome,
    Schedule,
    Tracker,
    idempotency_key,
    plan,
    skip_reason,
)


def schedule(name: str = "job", **fields: Any) -> Schedule:
    return Schedule(name, msgspec.convert({"type": "echo", **fields}, RecurringConfig))


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --- ticks ---------------------------------------------------------------------------------------


def test_interval_ticks_are_aligned_to_the_epoch_so_replicas_agree() -> None:
    s = schedule(every="10s")
    assert s.next_tick(1003.2) == 1010.0
    assert s.next_tick(1010.0) == 1020.0  # strictly after
    assert s.latest_tick(1019.99) == 1010.0
    assert s.latest_tick(1020.0) == 1020.0
    assert s.ticks_between(1003.0, 1045.0) == 4  # 1010, 1020, 1030, 1040


def test_cron_ticks_in_utc() -> None:
    s = schedule(cron="*/15 * * * *")
    assert s.next_tick(ts("2026-03-01T10:07:30")) == ts("2026-03-01T10:15:00")
    assert s.next_tick(ts("2026-03-01T10:15:00")) == ts("2026-03-01T10:30:00")
    assert s.latest_tick(ts("2026-03-01T10:15:00")) == ts("2026-03-01T10:15:00")
    assert s.latest_tick(ts("2026-03-01T10:14:59.9")) == ts("2026-03-01T10:00:00")
    assert s.ticks_between(ts("2026-03-01T10:00:00"), ts("2026-03-01T11:00:00")) == 4


def test_cron_with_seconds_and_a_time_zone() -> None:
    every_two = schedule(cron="*/2 * * * * *")
    assert every_two.next_tick(ts("2026-03-01T10:00:00.5")) == ts("2026-03-01T10:00:02")
    tokyo = schedule(cron="0 9 * * *", timezone="Asia/Tokyo")  # 09:00 in Tokyo is 00:00 UTC
    assert tokyo.next_tick(ts("2026-03-01T12:00:00")) == ts("2026-03-02T00:00:00")


def test_the_idempotency_key_names_the_schedule_and_the_tick_in_whole_seconds() -> None:
    assert idempotency_key("nightly", 1_700_000_000.0) == "recurring:nightly:1700000000"


# --- what to submit when ---------------------------------------------------------------------------


def test_nothing_is_due_before_the_next_tick() -> None:
    decision = plan(schedule(every=60), cursor=1200.0, now=1259.0)
    assert decision.submit is None
    assert decision.missed == 0
    assert decision.next_tick == 1260.0


def test_a_due_tick_is_submitted_and_the_next_one_announced() -> None:
    decision = plan(schedule(every=60), cursor=1200.0, now=1260.4)
    assert decision == (1260.0, 0, 1260.0, 1320.0)


def test_after_a_stall_only_the_newest_tick_runs_and_the_others_count_as_missed() -> None:
    decision = plan(schedule(every=60), cursor=1200.0, now=1500.5)  # 1260 ... 1500 are due
    assert decision.submit == 1500.0
    assert decision.missed == 4


def test_a_tick_older_than_grace_is_missed_not_submitted() -> None:
    decision = plan(schedule(every=60, grace=5), cursor=1200.0, now=1270.0)
    assert decision.submit is None
    assert decision.missed == 1
    assert decision.cursor == 1260.0


def test_a_fresh_tracker_catches_up_on_a_tick_within_grace_only() -> None:
    s = schedule(every=60, grace=10)
    fresh = Tracker.starting(s, now=1265.0)
    assert fresh.due(1265.0) == (1260.0, 1320.0)  # 5 s old: submitted (a duplicate if it ran)
    late = Tracker.starting(s, now=1275.0)
    assert late.due(1275.0) == (None, 1320.0)  # 15 s old: the scheduler before this one had it
    # Ticks from before the start are nobody's misses.
    assert not fresh.counts
    assert not late.counts


def test_a_fresh_cron_tracker_catches_up_too() -> None:
    s = schedule(cron="*/2 * * * * *", grace=5)
    tracker = Tracker.starting(s, now=ts("2026-03-01T10:00:03.5"))
    assert tracker.due(ts("2026-03-01T10:00:03.5")) == (ts("2026-03-01T10:00:02"), ts("2026-03-01T10:00:04"))
    assert not tracker.counts


def test_a_tracker_walks_tick_by_tick_with_the_clock() -> None:
    tracker = Tracker.starting(schedule(every=10, grace=1), now=1000.5)
    assert tracker.due(1000.5) == (1000.0, 1010.0)
    tracker.record(1000.0, Outcome.SUBMITTED, task_id="t1")
    submitted = []
    look = 1000.5
    while look <= 1050:  # a loop that wakes when the tracker says
        tick, look = tracker.due(look)
        if tick is not None:
            submitted.append(tick)
            tracker.record(tick, Outcome.SUBMITTED)
    assert submitted == [1010.0, 1020.0, 1030.0, 1040.0, 1050.0]
    assert tracker.counts[Outcome.SUBMITTED] == 6
    assert tracker.counts[Outcome.MISSED] == 0


def test_a_failed_submission_is_retried_within_grace_then_counted_missed() -> None:
    tracker = Tracker(schedule(every=60, grace=3), cursor=1200.0)
    tick, _ = tracker.due(1260.0)
    assert tick == 1260.0
    tracker.record(1260.0, Outcome.FAILED, reason="no responders")
    assert tracker.due(1261.0) == (1260.0, 1262.0)  # retried, one second later at the earliest
    tracker.record(1260.0, Outcome.FAILED, reason="no responders")
    assert tracker.due(1264.0) == (None, 1320.0)  # 4 s old: given up
    assert tracker.counts == {Outcome.FAILED: 2, Outcome.MISSED: 1}
    assert tracker.last_outcome is Outcome.MISSED


# --- skipping under load ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("load", "reason"),
    [
        (LoadSample(50.0, 50.0), None),
        (LoadSample(80.0, 50.0), None),  # at the threshold is not over it
        (LoadSample(80.1, 50.0), "cpu 80.1% > max_cpu_percent 80%"),
        (LoadSample(10.0, 95.5), "memory 95.5% > max_memory_percent 90%"),
    ],
)
def test_skip_reason(load: LoadSample, reason: str | None) -> None:
    config = schedule(every=60, max_cpu_percent=80, max_memory_percent=90).config
    assert skip_reason(config, load) == reason


def test_without_thresholds_nothing_is_skipped() -> None:
    assert skip_reason(schedule(every=60).config, LoadSample(100.0, 100.0)) is None


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "set exactly one of every (an interval) and cron (an expression)"),
        (
            {"every": 5, "cron": "* * * * *"},
            "set exactly one of every (an interval) and cron (an expression)",
        ),
        ({"every": "5x"}, "every '5x' is not a duration: use seconds (30) or a string like '30s', "),
        ({"every": 0.5}, "every must be at least 1 second, got 0.5 - at `$.every`"),
        ({"cron": "61 * * * *"}, "cron '61 * * * *' is not a cron expression (Bad minute)"),
        ({"every": 5, "timezone": "Mars/Base"}, "timezone 'Mars/Base' is not an IANA time zone"),
        ({"every": 5, "priority": "urgent"}, "unknown priority 'urgent'"),
        ({"every": 5, "capabilities": ["a.b"]}, "capability 'a.b' contains '.'"),
        ({"every": 5, "max_cpu_percent": 0}, "Expected `float` > 0.0 - at `$.max_cpu_percent`"),
        ({"every": 5, "nope": 1}, "Object contains unknown field `nope`"),
    ],
)
def test_bad_schedules_are_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(msgspec.json.encode({"type": "echo", **fields}), type=RecurringConfig)
    assert message in str(caught.value)


def test_durations_and_priority_names_are_normalised() -> None:
    config = schedule(every="1h30m", priority="high").config
    assert config.interval == 5400.0
    assert config.priority == 1


def test_corral_toml_schedules_load_and_bad_ones_name_their_table(tmp_path: Any) -> None:
    from corral.config import load_config
    from corral.errors import ConfigError

    good = tmp_path / "good.toml"
    good.write_text('[scheduler.recurring.cleanup]\ntype = "echo"\nevery = "5m"\nmax_cpu_percent = 90\n')
    cleanup = load_config(good).scheduler.recurring["cleanup"]
    assert (cleanup.type, cleanup.interval, cleanup.max_cpu_percent) == ("echo", 300.0, 90.0)

    bad = tmp_path / "bad.toml"
    bad.write_text('[scheduler.recurring.cleanup]\ntype = "echo"\ncron = "every day"\n')
    with pytest.raises(ConfigError, match=r"- at `\$\.scheduler\.recurring\.cleanup\.cron`"):
        load_config(bad)

    bad_name = tmp_path / "bad_name.toml"
    bad_name.write_text('[scheduler.recurring."a.b"]\ntype = "echo"\nevery = 60\n')
    with pytest.raises(ConfigError, match=r"recurring task name \[scheduler.recurring.a.b\] 'a.b' contains"):
        load_config(bad_name)
