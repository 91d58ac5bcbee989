"""Silences: matchers with an expiry that mute notifications (the alert state still moves)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from processors.alerting.matchers import match_all


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes alerts whose labels match `matchers` between `starts_at` and `ends_at`."""

    id: str
    matchers: dict[str, str]
    starts_at: float
    ends_at: float
    created_by: str = ""
    comment: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def active(self, now: float) -> bool:
        """True while the silence is in force."""
        return self.starts_at <= now < self.ends_at

    def mutes(self, labels: Mapping[str, str], now: float) -> bool:
        """True when the silence is in force and matches the labels."""
        return self.active(now) and match_all(self.matchers, labels)


def silenced_by(
    silences: Iterable[Silence], labels: Mapping[str, str], now: float
) -> Silence | None:
    """The first silence muting these labels now, if any."""
    return next((s for s in silences if s.mutes(labels, now)), None)
