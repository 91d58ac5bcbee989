"""KS and Wasserstein from KLL sketches within their error bounds (processors.serving.sketches)."""

from __future__ import annotations

import numpy as np

from processors.serving.sketches import ks, merged, sketch_of, wasserstein


def _exact_ks(a: np.ndarray, b: np.ndarray) -> float:
    points = np.concatenate([a, b])
    fa = np.searchsorted(np.sort(a), points, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), points, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def _exact_w1(a: np.ndarray, b: np.ndarray) -> float:
    ranks = (np.arange(2000) + 0.5) / 2000
    return float(np.mean(np.abs(np.quantile(a, ranks) - np.quantile(b, ranks))))


def test_ks_and_wasserstein_within_their_published_bounds() -> None:
    rng = np.random.default_rng(1)
    for shift in (0.0, 0.3, 1.0):
        a = rng.normal(0, 1, 50_000)
        b = rng.normal(shift, 1, 20_000)
        sa, sb = sketch_of(a.tolist()), sketch_of(b.tolist())
        k = ks(sa, sb)
        w = wasserstein(sa, sb)
        assert k is not None and w is not None
        assert 0 < k.error_bound < 0.03
        assert abs(k.value - _exact_ks(a, b)) <= k.error_bound
        assert abs(w.value - _exact_w1(a, b)) <= w.error_bound
    assert ks(sketch_of([]), sketch_of([1.0])) is None


def test_workers_sketches_merge() -> None:
    rng = np.random.default_rng(2)
    parts = [sketch_of(rng.normal(0, 1, 5000).tolist()).serialize() for _ in range(4)]
    whole = merged(parts)
    assert whole.n == 20_000
