"""Notification grouping: when a run's transitions go out, and that each goes out once."""

from __future__ import annotations

import pytest

from sinks.notify_groups import NotificationGroups


def test_first_transition_of_a_quiet_run_waits_group_wait_for_company() -> None:
    groups: NotificationGroups[str] = NotificationGroups(group_wait_s=0.5, group_interval_s=5)
    assert groups.add("a", "x1", now=10.0) == 10.5
    assert groups.add("a", "x2", now=10.3) == 10.5  # joins the pending notification
    assert groups.pop_due(10.4) == []
    assert groups.pop_due(10.5) == [("a", ["x1", "x2"])]
    assert groups.pending() == 0 and groups.next_due() is None


@pytest.mark.parametrize(
    ("added_at", "due"),
    [
        (11.0, 15.0),  # 1 s after a send: held until the interval has passed
        (14.9, 15.0),
        (15.0, 15.5),  # a full interval later the run is quiet again: group_wait only
        (30.0, 30.5),
    ],
)
def test_later_transitions_go_out_at_most_every_group_interval(added_at: float, due: float) -> None:
    groups: NotificationGroups[str] = NotificationGroups(group_wait_s=0.5, group_interval_s=5)
    groups.add("a", "first", now=9.5)
    assert groups.pop_due(10.0) == [("a", ["first"])]
    assert groups.add("a", "later", now=added_at) == due
    assert groups.pop_due(due - 0.01) == []
    assert groups.pop_due(due) == [("a", ["later"])]


def test_runs_are_grouped_separately_and_released_oldest_due_first() -> None:
    groups: NotificationGroups[int] = NotificationGroups(group_wait_s=1, group_interval_s=5)
    groups.add("b", 1, now=0.2)
    groups.add("a", 2, now=0.5)
    groups.add("b", 3, now=0.6)
    assert groups.next_due() == 1.2
    assert groups.pop_due(2.0) == [("b", [1, 3]), ("a", [2])]


def test_zero_wait_and_interval_send_each_transition_at_once() -> None:
    groups: NotificationGroups[int] = NotificationGroups(group_wait_s=0, group_interval_s=0)
    for i in range(3):
        assert groups.add("a", i, now=float(i)) == float(i)
        assert groups.pop_due(float(i)) == [("a", [i])]


def test_drain_takes_everything_pending_once() -> None:
    groups: NotificationGroups[int] = NotificationGroups(group_wait_s=10, group_interval_s=10)
    groups.add("a", 1, now=0)
    groups.add("b", 2, now=0)
    assert sorted(groups.drain()) == [("a", [1]), ("b", [2])]
    assert groups.drain() == [] and groups.pending() == 0


def test_negative_timings_are_rejected() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        NotificationGroups(group_wait_s=-1, group_interval_s=0)
