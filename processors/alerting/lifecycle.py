"""The alert lifecycle, Prometheus-style: inactive -> pending -> firing -> resolved.

One `AlertState` per fingerprint. `evaluate` is called with each new observation of the
rule's condition (true or false) at an event time and step, and returns the transition
to emit, if any. Entering pending and a pending condition clearing (withdrawn) are
transitions that are stored and shown but never notify anyone; a withdrawn alert is then
forgotten. `keep_firing_for` holds a firing alert through short clears, which is what
turns a flapping series into one firing and one resolved notification.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from processors.alerting.durations import ZERO, Span


class Phase(StrEnum):
    """Where an alert is in its lifecycle."""

    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


class Notice(StrEnum):
    """What `evaluate` asks the caller to emit."""

    PENDING = "pending"
    WITHDRAWN = "withdrawn"
    FIRING = "firing"
    REPEAT = "repeat"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Timing:
    """A rule's timing: `for_`, `keep_firing_for` and the repeat interval (seconds)."""

    for_: Span = ZERO
    keep_firing_for: Span = ZERO
    repeat_interval_s: float = 3600.0


@dataclass(slots=True)
class AlertState:
    """The lifecycle of one fingerprint."""

    phase: Phase = Phase.INACTIVE
    active_since_t: float = 0.0
    active_since_step: int | None = None
    cleared_since_t: float | None = None
    cleared_since_step: int | None = None
    last_notified_t: float = 0.0

    def evaluate(self, active: bool, t: float, step: int | None, timing: Timing) -> Notice | None:
        """Advance with one observation; return the transition due, if any."""
        if active:
            self.cleared_since_t = None
            self.cleared_since_step = None
            entered = self.phase is Phase.INACTIVE
            if entered:
                self.phase = Phase.PENDING
                self.active_since_t, self.active_since_step = t, step
            if self.phase is Phase.PENDING:
                if timing.for_.elapsed(self.active_since_t, self.active_since_step, t, step):
                    self.phase = Phase.FIRING
                    self.last_notified_t = t
                    return Notice.FIRING
                # Only the first observation of an episode emits; a rule with no `for`
                # fires at once above and is never seen pending.
                return Notice.PENDING if entered else None
            if t - self.last_notified_t >= timing.repeat_interval_s:
                self.last_notified_t = t
                return Notice.REPEAT
            return None

        if self.phase is Phase.PENDING:
            self.phase = Phase.INACTIVE
            return Notice.WITHDRAWN
        if self.phase is Phase.FIRING:
            if self.cleared_since_t is None:
                self.cleared_since_t, self.cleared_since_step = t, step
            if timing.keep_firing_for.elapsed(
                self.cleared_since_t, self.cleared_since_step, t, step
            ):
                self.phase = Phase.INACTIVE
                self.cleared_since_t = self.cleared_since_step = None
                return Notice.RESOLVED
        return None
