"""Metrics from label counts (processors.serving.metrics) against an offline computation."""

from __future__ import annotations

import numpy as np
import pytest

from processors.serving.metrics import (
    SCORE_BINS,
    add_counts,
    auc,
    delay_bin,
    label_deltas,
    performance,
)


def _offline_auc(scores: list[float], labels: list[int]) -> float:
    """Mann-Whitney AUC by brute force on scores rounded to the histogram bins."""
    binned = [min(SCORE_BINS - 1, int(s * SCORE_BINS)) for s in scores]
    pos = [b for b, y in zip(binned, labels, strict=True) if y == 1]
    neg = [b for b, y in zip(binned, labels, strict=True) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_metrics_from_counts_equal_offline_metrics() -> None:
    rng = np.random.default_rng(7)
    scores = rng.random(600).tolist()
    labels = [int(rng.random() < s) for s in scores]
    counts: dict[str, float] = {"preds": 800}
    for s, y in zip(scores, labels, strict=True):
        add_counts(counts, label_deltas(s, None, float(y)))
    report = performance(counts)
    predicted = [1 if s >= 0.5 else 0 for s in scores]
    tp = sum(p == 1 and y == 1 for p, y in zip(predicted, labels, strict=True))
    tn = sum(p == 0 and y == 0 for p, y in zip(predicted, labels, strict=True))
    fp = sum(p == 1 and y == 0 for p, y in zip(predicted, labels, strict=True))
    fn = sum(p == 0 and y == 1 for p, y in zip(predicted, labels, strict=True))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert report["accuracy"] == (tp + tn) / 600
    assert report["precision"] == precision and report["recall"] == recall
    assert report["f1"] == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-15)
    assert report["auc"] == pytest.approx(_offline_auc(scores, labels), abs=1e-12)
    errors = np.asarray(scores) - np.asarray(labels)
    assert report["mse"] == pytest.approx(float(np.mean(errors**2)), abs=1e-12)
    assert report["mae"] == pytest.approx(float(np.mean(np.abs(errors))), abs=1e-12)
    assert report["label_coverage"] == 600 / 800


def test_auc_edges_and_user_metrics() -> None:
    assert auc([0, 5], [5, 0]) == 1.0
    assert auc([3, 0], [3, 0]) == 0.5
    assert auc([1], [0]) is None
    report = performance({"preds": 10, "clicks": 4, "conv": 1, "fb": 6})
    assert report["ctr"] == 0.4 and report["conversion_rate"] == 0.25
    assert report["accuracy"] is None


def test_label_delay_bins() -> None:
    assert delay_bin(0.5) == 0 and delay_bin(30) == 2 and delay_bin(2 * 86400) == 7
    report = performance({"d0": 5, "d7": 5})
    assert report["label_delay"]["count"] == 10
    assert report["label_delay"]["p50_le_s"] == 1.0
    assert report["label_delay"]["p90_le_s"] == 3 * 86400.0
