"""Stage 1's fast paths against the plain computations they replace (exact equality)."""

from __future__ import annotations

import math
import random
from collections import deque

import numpy as np
import pytest

from processors.detectors.base import SortedWindow, median_mad, sorted_median_mad
from processors.windows import NUMPY_FROM, RollingWindow, summarize, summarize_windows


@pytest.mark.parametrize("seed", range(3))
def test_sorted_window_median_mad_equals_sorting_the_window(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        size = rng.randint(1, 60)
        window, plain = SortedWindow(size), deque[float](maxlen=size)
        for _ in range(rng.randint(1, 150)):
            # Ties and signed zeros are where an order statistic goes wrong first.
            value = rng.choice(
                [rng.random(), rng.gauss(0, 1e6), float(rng.randint(-3, 3)), -0.0, 1e-300]
            )
            window.append(value)
            plain.append(value)
            assert list(window.arrived) == list(plain)
            assert window.ordered == sorted(plain)
            assert sorted_median_mad(window.ordered) == median_mad(plain)


def test_sorted_median_mad_small_windows() -> None:
    assert sorted_median_mad([5.0]) == (5.0, 0.0)
    assert sorted_median_mad([1.0, 3.0]) == (2.0, 1.0)
    assert sorted_median_mad([1.0, 1.0, 1.0, 9.0]) == median_mad([1.0, 1.0, 1.0, 9.0])


def test_long_window_quantiles_equal_a_full_sort() -> None:
    """Above NUMPY_FROM points the window partitions instead of sorting: min, max, p50 and
    p95 must be the very same floats a sort gives, ties and NaNs included."""
    rng = random.Random(5)
    for n in (NUMPY_FROM, NUMPY_FROM + 1, 257, 3000):
        window = RollingWindow(10 * n)
        values = [float(rng.randint(0, 20)) if i % 3 else rng.gauss(0, 1) for i in range(n)]
        values[n // 2] = math.nan
        for step, value in enumerate(values):
            window.add(step, value)
        fast = window.summary()
        plain = summarize(values)  # the pure-Python path, a full sort
        ordered = np.sort(np.array([v for v in values if math.isfinite(v)]))
        assert (fast.min, fast.max) == (ordered[0], ordered[-1]) == (plain.min, plain.max)
        assert fast.p50 == plain.p50
        assert fast.p95 == plain.p95
        assert fast.count == n and fast.nonfinite == 1


@pytest.mark.parametrize("seed", range(3))
def test_windows_summarized_together_equal_one_at_a_time(seed: int) -> None:
    """`summarize_windows` stacks windows of one length: every statistic must be what
    each window's own summary gives (order statistics, counts and last exactly; sums to
    rounding), whether positions are shared or not and with non-finite rows left alone."""
    rng = random.Random(seed)
    for span, lengths in ((50.0, (50, 50, 50, 7, 30)), (10.0, (300, 300, 450, 450, 600))):
        windows = []
        for k, n in enumerate(lengths * 3):
            window = RollingWindow(span * 2)
            step = span / n
            for i in range(n):
                value = rng.choice([rng.gauss(5, 2), float(rng.randint(-2, 2))])
                # Every other window has positions of its own (jittered), the rest share.
                jitter = rng.random() * step * 0.9 if k % 2 else 0.0
                window.add(1000 + i * step + jitter, value if i % 97 else 1e6)
            if n == 30:  # a whole group of non-finite windows
                window.add(1000 + n * step, math.nan)
            windows.append(window)
        together = summarize_windows(windows, span)
        for window, got in zip(windows, together, strict=True):
            alone = window.summary(span)
            exact = ("count", "nonfinite", "min", "max", "last", "p50", "p95")
            # repr: a NaN `last` compares equal to itself
            assert repr([getattr(got, f) for f in exact]) == repr(
                [getattr(alone, f) for f in exact]
            )
            for name in ("mean", "std", "ema", "slope"):
                assert getattr(got, name) == pytest.approx(getattr(alone, name), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("n", [50, 300, 3000])
def test_a_constant_window_reads_its_value_exactly(n: int) -> None:
    """The numpy paths correct their pairwise sums: a constant learning rate of 0.1 must
    read mean 0.1 and std 0, as the exact sum of the pure-Python path gives."""
    windows = [RollingWindow(n) for _ in range(3)]
    for step in range(n):
        for k, window in enumerate(windows):
            window.add(step, 0.1 * (k + 1))
    for k, summary in enumerate([*summarize_windows(windows, n), windows[0].summary()]):
        value = 0.1 * (k % 3 + 1)
        assert (summary.mean, summary.std, summary.p50) == (value, 0.0, value)
