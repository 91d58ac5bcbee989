"""Anomaly detectors as pure objects: they see values and return flags, nothing else.

Each detector documents its parameters and defaults, and every flag carries its
evidence (value, threshold, window) so a person can judge it without a dashboard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from stepstream.contract import Severity


@dataclass(frozen=True, slots=True)
class Flag:
    """A detector's finding about one series at one point."""

    detector: str
    run: str
    rank: int
    metric: str
    step: int | None
    t: float
    severity: Severity
    summary: str
    evidence: dict[str, float | None] = field(default_factory=dict)


SeriesId = tuple[str, int, str]


class NonFiniteDetector:
    """Flags a NaN or ±Infinity value in any metric.

    One flag per episode: a series that stays non-finite is flagged once, and the detector
    re-arms when the series is finite again. Parameters: none. Delay: the record itself.
    """

    name = "nonfinite"

    def __init__(self) -> None:
        self._active: set[SeriesId] = set()

    def observe(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> Flag | None:
        """Return a flag when `value` starts a non-finite episode of its series."""
        series = (run, rank, metric)
        if math.isfinite(value):
            self._active.discard(series)
            return None
        if series in self._active:
            return None
        self._active.add(series)
        word = "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
        at = f"step {step}" if step is not None else f"t={t:.3f}"
        return Flag(
            detector=self.name,
            run=run,
            rank=rank,
            metric=metric,
            step=step,
            t=t,
            severity="critical",
            summary=f"{metric} is {word} on rank {rank} of run {run} at {at}",
            evidence={"value": value, "step": float(step) if step is not None else None},
        )
