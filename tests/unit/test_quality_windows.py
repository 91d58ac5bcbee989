"""Quality windows sum sufficient statistics over steps and hand them to the math."""

from __future__ import annotations

import math
from collections.abc import Mapping

from processors.quality_windows import QualityWindow


class BinaryMath:
    """A stand-in for stepstream.quality: precision/recall/F1 of one class."""

    def metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        tp, fp, fn = sums.get("tp", 0.0), sums.get("fp", 0.0), sums.get("fn", 0.0)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}


def test_window_sums_the_last_steps_and_replaces_resent_steps() -> None:
    w = QualityWindow(3, BinaryMath())
    for step in range(5):
        w.add(step, {"tp": 1.0 + step, "fp": 1.0, "fn": 0.0})
    w.add(4, {"tp": 10.0})  # re-sent step
    w.add(1, {"tp": 100.0})  # too late
    assert w.sums() == {"tp": 3.0 + 4.0 + 10.0, "fp": 3.0, "fn": 0.0}
    assert w.late == 1
    got = w.compute()
    assert math.isclose(got["precision"], 17 / 20) and got["recall"] == 1.0


def test_non_finite_statistics_are_ignored() -> None:
    w = QualityWindow(5, BinaryMath())
    w.add(0, {"tp": math.nan, "fp": 2.0})
    assert w.sums() == {"fp": 2.0}
