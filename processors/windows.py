"""Rolling windows over steps or event time, as small pure objects.

faust's own windows are whole-second and closed by the wall clock; training telemetry
needs windows over the last N *steps* and over fine-grained *event* time, with records
that may arrive out of order. A window here keeps the points whose position (step or event
time) lies within `span` of the newest position seen, ordered by position.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Summary:
    """Statistics of the values in a window. Non-finite values are counted in `nonfinite`
    and left out of mean/min/max so that one NaN does not erase the window's history;
    `last` is the value at the newest position, finite or not."""

    count: int
    nonfinite: int
    mean: float | None
    min: float | None
    max: float | None
    last: float | None


EMPTY_SUMMARY = Summary(count=0, nonfinite=0, mean=None, min=None, max=None, last=None)


def summarize(values: list[float]) -> Summary:
    """Summarize values given in position order (the last one is the newest)."""
    if not values:
        return EMPTY_SUMMARY
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        mean: float | None = math.fsum(finite) / len(finite)
        low: float | None = min(finite)
        high: float | None = max(finite)
    else:
        mean = low = high = None
    return Summary(
        count=len(values),
        nonfinite=len(values) - len(finite),
        mean=mean,
        min=low,
        max=high,
        last=values[-1],
    )


class RollingWindow:
    """Points whose position is within `span` of the newest position: (newest - span, newest].

    For a step window the position is the step and `span` the number of steps; for a time
    window the position is the event time and `span` the seconds. A point at a position
    already held replaces it (a re-sent step overwrites). A point older than the window is
    refused and counted in `late`, never raised.
    """

    __slots__ = ("_positions", "_values", "late", "span")

    def __init__(self, span: float) -> None:
        if span <= 0:
            raise ValueError(f"window span must be > 0, got {span}")
        self.span = span
        self._positions: list[float] = []
        self._values: list[float] = []
        self.late = 0

    def __len__(self) -> int:
        return len(self._values)

    @property
    def newest(self) -> float | None:
        """The newest position seen, or None while empty."""
        return self._positions[-1] if self._positions else None

    def add(self, position: float, value: float) -> bool:
        """Place one point; return False if it was too late to count."""
        positions = self._positions
        if not positions or position > positions[-1]:
            positions.append(position)
            self._values.append(value)
            self._evict(position - self.span)
            return True
        if position <= positions[-1] - self.span:
            self.late += 1
            return False
        index = bisect_left(positions, position)
        if index < len(positions) and positions[index] == position:
            self._values[index] = value
        else:
            positions.insert(index, position)
            self._values.insert(index, value)
        return True

    def _evict(self, cutoff: float) -> None:
        drop = bisect_right(self._positions, cutoff)
        if drop:
            del self._positions[:drop]
            del self._values[:drop]

    def values(self) -> list[float]:
        """The values in position order, oldest first."""
        return list(self._values)

    def summary(self) -> Summary:
        """Statistics of the window as it stands."""
        return summarize(self._values)
