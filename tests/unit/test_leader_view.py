"""LeaseView: a standby's judgement of someone else's lease, on a fake clock."""

from __future__ import annotations

import pytest

from corral.orchestrator.leader import Leadership, Lease, LeaseView
from corral.subjects import Subjects


def lease(holder: str = "a", ttl: float = 3.0, term: str = "t1") -> Lease:
    return Lease(holder=holder, term=term, ttl=ttl, acquired=0.0, renewed=0.0)


def test_nobody_holds_an_absent_lease() -> None:
    view = LeaseView()
    view.observe(0, None, now=100.0)
    assert view.expired(100.0)
    assert view.holder(100.0) is None


def test_a_lease_lapses_one_ttl_after_its_revision_was_first_seen() -> None:
    view = LeaseView()
    view.observe(7, lease(ttl=3.0), now=100.0)
    assert view.holder(102.9) == "a"
    # Seeing the same revision again does not restart the clock: the holder has not renewed.
    view.observe(7, lease(ttl=3.0), now=102.0)
    assert not view.expired(102.99)
    assert view.expired(103.0)
    assert view.holder(103.0) is None


def test_a_renewal_restarts_the_clock() -> None:
    view = LeaseView()
    view.observe(7, lease(), now=100.0)
    view.observe(8, lease(), now=102.5)
    assert not view.expired(105.0)
    assert view.expired(105.5)


def test_the_holders_ttl_counts_not_the_observers() -> None:
    view = LeaseView()
    view.observe(3, lease(ttl=10.0), now=0.0)
    assert not view.expired(9.0)
    view.observe(4, lease(holder="b", ttl=1.0), now=9.0)
    assert view.holder(9.5) == "b"
    assert view.expired(10.0)


def test_a_deleted_key_is_free_at_once() -> None:
    view = LeaseView()
    view.observe(5, lease(), now=0.0)
    view.observe(6, None, now=0.5)
    assert view.expired(0.5)


def test_the_leader_gives_up_before_any_standby_may_take_over() -> None:
    """The leader's validity (from when it sent its write) ends `margin` before the earliest moment
    a standby (which saw the write no earlier than it was sent) may judge the lease lapsed."""
    leadership = Leadership(None, Subjects("t"), "a", ttl=3.0)  # type: ignore[arg-type]
    sent = 100.0
    standby = LeaseView()
    standby.observe(9, lease(ttl=leadership.ttl), now=sent)  # the earliest it can see the write
    leader_valid_until = sent + leadership.ttl - leadership.margin
    assert not standby.expired(leader_valid_until)
    assert not standby.expired(leader_valid_until + leadership.margin - 1e-9)
    # It renews several times within its validity, so one lost renewal costs nothing.
    assert leadership.renew_interval * 2 < leadership.ttl - leadership.margin
    assert leadership.poll_interval < leadership.ttl


def test_bad_lease_timings_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl must be positive"):
        Leadership(None, Subjects("t"), "a", ttl=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"margin must be in \[0, ttl\)"):
        Leadership(None, Subjects("t"), "a", ttl=2.0, margin=2.0)  # type: ignore[arg-type]
