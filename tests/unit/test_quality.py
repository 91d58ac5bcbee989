"""Quality metrics from sufficient statistics against direct computations."""

from __future__ import annotations

import math
import random

import pytest
import torch

from producers import quality_stats
from stepstream import quality as q
from stepstream.errors import ConfigError


def direct_classification(y: list[int], p: list[int], classes: int) -> dict[str, float]:
    out = {"accuracy": sum(a == b for a, b in zip(y, p, strict=True)) / len(y)}
    f1s = []
    for c in range(classes):
        tp = sum(a == c and b == c for a, b in zip(y, p, strict=True))
        fp = sum(a != c and b == c for a, b in zip(y, p, strict=True))
        fn = sum(a == c and b != c for a, b in zip(y, p, strict=True))
        out[f"precision{c}"] = tp / (tp + fp) if tp + fp else math.nan
        out[f"recall{c}"] = tp / (tp + fn) if tp + fn else math.nan
        out[f"f1{c}"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
        if tp + fp + fn:
            f1s.append(out[f"f1{c}"])
    out["macro_f1"] = sum(f1s) / len(f1s)
    return out


def direct_auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def test_classification_over_ranks_and_batches_equals_direct() -> None:
    rng = random.Random(0)
    classes = 4
    batches = []
    for _ in range(6):  # e.g. 3 steps x 2 ranks, each a batch of its own size
        n = rng.randint(5, 40)
        y = [rng.randrange(classes) for _ in range(n)]
        p = [t if rng.random() < 0.6 else rng.randrange(classes - 1) for t in y]
        batches.append((y, p))
    per_batch = []
    for y, p in batches:
        logits = torch.nn.functional.one_hot(torch.tensor(p), classes).float() + 0.1
        values, _ = quality_stats.classification(torch.tensor(y), logits, classes, "c").resolve()
        per_batch.append(values)
    merged = q.Confusion.from_values("c", q.merge(per_batch))
    ally = [v for y, _ in batches for v in y]
    allp = [v for _, p in batches for v in p]
    want = direct_classification(ally, allp, classes)
    assert merged.n == len(ally)
    assert same(merged.accuracy(), want["accuracy"])
    for c in range(classes):
        assert same(merged.precision(c), want[f"precision{c}"])
        assert same(merged.recall(c), want[f"recall{c}"])
        assert same(merged.f1(c), want[f"f1{c}"])
    assert same(merged.macro_f1(), want["macro_f1"])


def test_confusion_round_trips_through_values() -> None:
    counts = q.Confusion(n=10, tp=[3, 4], fp=[1, 2], fn=[2, 1])
    assert q.Confusion.from_values("t", counts.to_values("t")) == counts
    assert set(counts.to_values("t")) >= {"quality/t/n", "quality/t/tp/0", "quality/t/fn/1"}


def test_auc_from_histograms_equals_pairwise_auc() -> None:
    rng = random.Random(1)
    bins = 20
    labels = [rng.randrange(2) for _ in range(300)]
    # Scores on bin centres: no two different scores share a bin, so binning is exact.
    scores = [(rng.randrange(bins) + 0.5) / bins for _ in labels]
    halves = []
    for part in (slice(0, 150), slice(150, 300)):
        values, _ = quality_stats.binary_scores(
            torch.tensor(labels[part]), torch.tensor(scores[part]), bins=bins, task="b"
        ).resolve()
        halves.append(values)
    hist = q.ScoreHistogram.from_values("b", q.merge(halves))
    assert sum(hist.pos) == sum(labels)
    assert same(hist.auc(), direct_auc(labels, scores))
    assert math.isnan(q.ScoreHistogram([1, 0], [0, 0]).auc())
    assert q.ScoreHistogram([0, 5], [5, 0]).auc() == 1.0


def test_regression_errors_equal_direct() -> None:
    rng = random.Random(2)
    y = [rng.gauss(0, 1) for _ in range(50)]
    p = [v + rng.gauss(0, 0.3) for v in y]
    parts = []
    for part in (slice(0, 20), slice(20, 50)):
        values, _ = quality_stats.regression(
            torch.tensor(y[part], dtype=torch.float64), torch.tensor(p[part], dtype=torch.float64)
        ).resolve()
        parts.append(values)
    stats = q.Regression.from_values("reg", q.merge(parts))
    mse = sum((a - b) ** 2 for a, b in zip(p, y, strict=True)) / len(y)
    mae = sum(abs(a - b) for a, b in zip(p, y, strict=True)) / len(y)
    assert stats.n == 50
    assert math.isclose(stats.mse(), mse, rel_tol=1e-12)
    assert math.isclose(stats.mae(), mae, rel_tol=1e-12)
    assert math.isclose(stats.rmse(), math.sqrt(mse), rel_tol=1e-12)
    assert math.isnan(q.Regression(0, 0, 0).mse())


def test_invalid_task_name_is_refused() -> None:
    with pytest.raises(ConfigError):
        quality_stats.regression(torch.zeros(2), torch.zeros(2), task="a/b")
