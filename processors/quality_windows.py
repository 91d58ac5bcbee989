"""Quality windows: sufficient statistics summed over the last N steps, turned into
quality metrics (accuracy, precision/recall/F1, AUC, MSE/MAE) by pluggable math.

The naming of the sufficient-statistic values and the math itself are being written in
``stepstream/quality.py`` on another branch; this module only fixes the interface the
processor needs from it (`QualityMath`) and the windowing, which is the same for every
such statistic: they are additive (confusion counts, score-histogram bins, sums of
squared and absolute errors, counts), so a window's statistics are the sums over its steps.
Not wired into stage 1 yet: that waits for the value naming.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol


class QualityMath(Protocol):
    """Derives quality metrics from summed sufficient statistics (by value name)."""

    def metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        """Quality metrics (e.g. ``f1/macro``, ``auc``, ``mse``) of the summed statistics."""
        ...


class QualityWindow:
    """The quality-kind values of one rank over the last `steps` steps.

    A re-sent step replaces its values; steps older than the window are dropped (and
    counted in `late` when they arrive late); non-finite statistics are ignored, since a
    count cannot be NaN and one would poison every sum.
    """

    def __init__(self, steps: int, quality_math: QualityMath) -> None:
        if steps < 1:
            raise ValueError(f"quality window needs >= 1 step, got {steps}")
        self.steps = steps
        self._math = quality_math
        self._by_step: dict[int, dict[str, float]] = {}
        self._newest = -1
        self.late = 0

    def add(self, step: int, values: Mapping[str, float]) -> None:
        """Place one step's sufficient statistics."""
        if step <= self._newest - self.steps:
            self.late += 1
            return
        clean = {k: v for k, v in values.items() if math.isfinite(v)}
        self._by_step.setdefault(step, {}).update(clean)
        if step > self._newest:
            self._newest = step
            cutoff = step - self.steps
            for old in [s for s in self._by_step if s <= cutoff]:
                del self._by_step[old]

    def sums(self) -> dict[str, float]:
        """Each statistic summed over the window's steps."""
        out: dict[str, float] = {}
        for values in self._by_step.values():
            for name, value in values.items():
                out[name] = out.get(name, 0.0) + value
        return out

    def compute(self) -> dict[str, float]:
        """The quality metrics of the window."""
        return self._math.metrics(self.sums())
