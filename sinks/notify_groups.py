"""Notification grouping: alert transitions of one group (a run) become one notification.

Alertmanager's semantics, with defaults sized for training jobs rather than for scrape
intervals: the first transition of a quiet group waits `group_wait_s` for company, later
ones are sent at most every `group_interval_s`. A NaN storm over 64 ranks is one webhook
call, not 64; a flapping series is a notification every `group_interval_s` at most.

Pure: no I/O, time is passed in. Items are opaque (the delivery side keeps the alert and
whatever it needs to acknowledge it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Group(Generic[T]):
    pending: list[T] = field(default_factory=list)
    due: float | None = None
    last_sent: float | None = None


class NotificationGroups(Generic[T]):
    """Collects items per group key and says when each group's notification is due.

    `add` an item, ask `next_due` when to look again, and `pop_due` the groups whose time
    has come; every item is returned exactly once, in arrival order within its group.
    """

    def __init__(self, group_wait_s: float, group_interval_s: float) -> None:
        if group_wait_s < 0 or group_interval_s < 0:
            raise ValueError("group_wait_s and group_interval_s must be >= 0")
        self.group_wait_s = group_wait_s
        self.group_interval_s = group_interval_s
        self._groups: dict[str, _Group[T]] = {}

    def add(self, key: str, item: T, now: float) -> float:
        """Queue `item` in group `key`; return when that group's notification is due."""
        group = self._groups.setdefault(key, _Group())
        group.pending.append(item)
        if group.due is None:
            if group.last_sent is None or now - group.last_sent >= self.group_interval_s:
                group.due = now + self.group_wait_s  # a quiet group: wait for company
            else:
                group.due = group.last_sent + self.group_interval_s
        return group.due

    def next_due(self) -> float | None:
        """The earliest time a group is due, or None when nothing is pending."""
        dues = [g.due for g in self._groups.values() if g.due is not None]
        return min(dues) if dues else None

    def pop_due(self, now: float) -> list[tuple[str, list[T]]]:
        """Take the items of every group due at `now`, by group, oldest due first."""
        ready = sorted(
            (g.due, key) for key, g in self._groups.items() if g.due is not None and g.due <= now
        )
        out = []
        for _, key in ready:
            group = self._groups[key]
            out.append((key, group.pending))
            group.pending, group.due, group.last_sent = [], None, now
        self._forget_quiet(now)
        return out

    def pending(self) -> int:
        """Items queued and not yet taken."""
        return sum(len(g.pending) for g in self._groups.values())

    def drain(self) -> list[tuple[str, list[T]]]:
        """Take every pending item regardless of timing (used at shutdown)."""
        out = [(key, g.pending) for key, g in self._groups.items() if g.pending]
        self._groups.clear()
        return out

    def _forget_quiet(self, now: float) -> None:
        # A group idle for a whole interval behaves like a new one: drop it so memory
        # follows the number of active runs, not every run ever seen.
        quiet = [
            key
            for key, g in self._groups.items()
            if g.due is None and (g.last_sent is None or now - g.last_sent >= self.group_interval_s)
        ]
        for key in quiet:
            del self._groups[key]
