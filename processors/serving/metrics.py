"""Model and user metrics from additive label counts.

Every outcome that joins its prediction adds integers (and two float sums) to the counts
of the prediction's window and segment; any set of counts (a window, a segment, their
sum) gives its metrics here. AUC comes from score histograms by label: exact for the
scores rounded to `SCORE_BINS` bins (ties in a bin count one half, as the Mann-Whitney
statistic counts ties).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

#: Score histogram bins on [0, 1] (scores outside are clipped) for AUC.
SCORE_BINS = 100
#: Label delay bin upper edges, in seconds (the last bin: beyond 14 days).
DELAY_EDGES_S: tuple[float, ...] = (1.0, 10.0, 60.0, 300.0, 3600.0, 6 * 3600.0, 86400.0)
DELAY_EDGES_S = (*DELAY_EDGES_S, 3 * 86400.0, 7 * 86400.0, 14 * 86400.0)

#: Counters that are float sums (HINCRBYFLOAT); every other counter is an integer.
FLOAT_COUNTERS = frozenset({"se", "ae"})


def score_bin(score: float) -> int:
    """The AUC histogram bin of a finite score."""
    return min(SCORE_BINS - 1, max(0, int(score * SCORE_BINS)))


def delay_bin(delay_s: float) -> int:
    """The label-delay bin of a delay in seconds."""
    return bisect.bisect_left(DELAY_EDGES_S, max(0.0, delay_s))


def predicted_class(score: float | None, prediction: float | None) -> int | None:
    """The class a binary classifier predicted: `prediction` when given, else score >= 0.5."""
    if prediction is not None:
        return 1 if prediction >= 0.5 else 0
    if score is not None:
        return 1 if score >= 0.5 else 0
    return None


def label_deltas(score: float | None, prediction: float | None, label: float) -> dict[str, float]:
    """What one label adds to its prediction's counts."""
    out: dict[str, float] = {"labeled": 1}
    estimate = score if score is not None else prediction
    if estimate is not None:
        err = estimate - label
        out["err_n"] = 1
        out["se"] = err * err
        out["ae"] = abs(err)
    if label in (0.0, 1.0):
        cls = predicted_class(score, prediction)
        if cls is not None:
            name = ("tp" if cls else "fn") if label == 1.0 else ("fp" if cls else "tn")
            out[name] = 1
        if score is not None:
            out[f"{'p' if label == 1.0 else 'n'}{score_bin(score)}"] = 1
    return out


def auc(positives: list[int], negatives: list[int]) -> float | None:
    """Area under the ROC curve from score histograms of positives and negatives (same
    bins, ascending scores); None without both classes."""
    total_p = sum(positives)
    total_n = sum(negatives)
    if not total_p or not total_n:
        return None
    below = 0
    wins = 0.0
    for p, n in zip(positives, negatives, strict=True):
        wins += p * (below + 0.5 * n)
        below += n
    return wins / (total_p * total_n)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def performance(counts: Mapping[str, float]) -> dict[str, Any]:
    """Every metric of one set of counts (missing counters are zero)."""

    def c(name: str) -> float:
        return counts.get(name, 0)

    tp, fp, tn, fn = c("tp"), c("fp"), c("tn"), c("fn")
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None
    )
    positives = [int(c(f"p{i}")) for i in range(SCORE_BINS)]
    negatives = [int(c(f"n{i}")) for i in range(SCORE_BINS)]
    delays = [int(c(f"d{i}")) for i in range(len(DELAY_EDGES_S) + 1)]
    err_n = c("err_n")
    preds = c("preds")
    clicks = c("clicks")
    return {
        "predictions": int(preds),
        "labeled": int(c("labeled")),
        "label_coverage": _ratio(c("labeled"), preds),
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": auc(positives, negatives),
        "mse": _ratio(c("se"), err_n),
        "mae": _ratio(c("ae"), err_n),
        "feedback": int(c("fb")),
        "clicks": int(clicks),
        "conversions": int(c("conv")),
        "ctr": _ratio(clicks, preds),
        "conversion_rate": _ratio(c("conv"), clicks),
        "confusion": {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)},
        "label_delay": delay_summary(delays),
    }


def delay_summary(delays: list[int]) -> dict[str, Any]:
    """The label-delay distribution: counts per bin (upper edges in seconds) and the bin
    edge at or below which half and nine in ten labels arrived."""
    total = sum(delays)
    edges: list[float] = [*DELAY_EDGES_S, math.inf]

    def quantile(q: float) -> float | None:
        if not total:
            return None
        running = 0
        for edge, count in zip(edges, delays, strict=True):
            running += count
            if running >= q * total:
                return edge
        return math.inf

    return {
        "count": total,
        "bins_s": [e if math.isfinite(e) else None for e in edges],
        "counts": delays,
        "p50_le_s": quantile(0.5),
        "p90_le_s": quantile(0.9),
    }


def add_counts(into: dict[str, float], counts: Mapping[str, float]) -> None:
    """Add `counts` into `into` (segments into their model, windows into a range)."""
    for name, value in counts.items():
        into[name] = into.get(name, 0) + value
