"""Downsampling for plots: LTTB and min/max buckets."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from query.downsample import downsample, lttb, minmax, select, select_plain


def wave(n: int) -> list[tuple[float, float]]:
    return [(float(i), math.sin(i / 10.0)) for i in range(n)]


def test_lttb_keeps_ends_count_and_order() -> None:
    pts = wave(1000)
    out = lttb(pts, 50)
    assert len(out) == 50
    assert out[0] == pts[0] and out[-1] == pts[-1]
    assert [p[0] for p in out] == sorted(p[0] for p in out)
    assert set(out) <= set(pts)


def test_lttb_keeps_a_single_spike() -> None:
    pts = [(float(i), 0.0) for i in range(500)]
    pts[237] = (237.0, 100.0)
    assert (237.0, 100.0) in lttb(pts, 20)


def test_lttb_known_small_case() -> None:
    pts = [(0.0, 0.0), (1.0, 5.0), (2.0, 0.0), (3.0, 1.0), (4.0, 0.0)]
    assert lttb(pts, 3) == [(0.0, 0.0), (1.0, 5.0), (4.0, 0.0)]


def test_short_series_come_back_whole() -> None:
    pts = wave(10)
    assert lttb(pts, 10) == pts and minmax(pts, 50) == pts
    assert downsample(pts, None) == pts and downsample(pts, 3, "none") == pts


def test_minmax_keeps_extremes_of_each_bucket() -> None:
    pts = [(float(i), float(i % 7)) for i in range(100)]
    out = minmax(pts, 10)
    assert len(out) <= 10
    assert (6.0, 6.0) in out and (0.0, 0.0) in out
    assert [p[0] for p in out] == sorted(p[0] for p in out)


@pytest.mark.parametrize("method", ["lttb", "minmax"])
def test_non_finite_points_are_always_kept(method: str) -> None:
    pts = wave(1000)
    pts[500] = (500.0, math.nan)
    pts[900] = (900.0, math.inf)
    out = downsample(pts, 20, method)  # type: ignore[arg-type]
    xs = [p[0] for p in out]
    assert 500.0 in xs and 900.0 in xs
    assert xs == sorted(xs)
    assert sum(1 for p in out if math.isfinite(p[1])) <= 20


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        downsample(wave(10), 0)
    with pytest.raises(ValueError, match="unknown downsampling"):
        downsample(wave(10), 5, "median")  # type: ignore[arg-type]


def _columns(kind: str, n: int, rng: random.Random) -> list[float]:
    if kind == "wave":
        return [math.sin(i / 50.0) for i in range(n)]
    if kind == "noise":
        return [rng.random() for _ in range(n)]
    if kind == "ties":  # equal areas: the first maximum must win, as in the loop
        return [float(i // 37 % 3) for i in range(n)]
    if kind == "overflow":  # inf and inf - inf = NaN areas, as the loop meets them
        return [rng.choice([1e308, -1e308, 0.0, 5e307]) for _ in range(n)]
    ys = [rng.gauss(0.0, 1.0) for _ in range(n)]  # "nonfinite"
    for _ in range(n // 20):
        ys[rng.randrange(n)] = rng.choice([math.nan, math.inf, -math.inf])
    return ys


@pytest.mark.parametrize("kind", ["wave", "noise", "ties", "overflow", "nonfinite"])
def test_vectorised_select_equals_the_plain_loop(kind: str) -> None:
    rng = random.Random(kind)
    for n in (0, 1, 2, 3, 5, 11, 100, 1001, 3000):
        ys = _columns(kind, n, rng)
        steps = list(range(n))
        times = sorted(rng.uniform(0.0, 1e6) for _ in range(n))
        for threshold in (1, 2, 3, 4, 7, 50, 999, 2000):
            for method in ("lttb", "minmax"):
                for xs in (steps, times):
                    want = select_plain(xs, ys, threshold, method)  # type: ignore[arg-type]
                    got = select(np.array(xs, dtype=float), np.array(ys), threshold, method)  # type: ignore[arg-type]
                    assert got == want, (n, threshold, method)
