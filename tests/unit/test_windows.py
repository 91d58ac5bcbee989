"""Window math against a plain reference computation over the same points."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from processors.windows import RollingWindow, summarize


def reference(points: dict[float, float], span: float) -> list[float]:
    """Values of positions in (newest - span, newest], in position order."""
    newest = max(points)
    return [points[p] for p in sorted(points) if p > newest - span]


def test_summary_matches_reference_on_random_finite_values() -> None:
    rng = random.Random(7)
    values = [rng.gauss(3, 2) for _ in range(500)]
    s = summarize(values)
    assert s.count == 500 and s.nonfinite == 0
    assert s.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert (s.min, s.max, s.last) == (min(values), max(values), values[-1])


def test_non_finite_values_are_counted_not_averaged() -> None:
    s = summarize([1.0, math.nan, 3.0, math.inf])
    assert (s.count, s.nonfinite, s.mean, s.min, s.max) == (4, 2, 2.0, 1.0, 3.0)
    assert s.last == math.inf


def test_all_non_finite_window_has_no_mean() -> None:
    s = summarize([math.nan, math.nan])
    assert (s.count, s.nonfinite, s.mean, s.min, s.max) == (2, 2, None, None, None)
    assert math.isnan(s.last or 0.0)


def test_empty_window() -> None:
    s = RollingWindow(5).summary()
    assert (s.count, s.mean, s.last) == (0, None, None)


@pytest.mark.parametrize("seed", range(5))
def test_step_window_with_shuffled_arrival_matches_reference(seed: int) -> None:
    rng = random.Random(seed)
    steps = list(range(200))
    rng.shuffle(steps)
    window = RollingWindow(50)
    seen: dict[float, float] = {}
    late = 0
    for step in steps:
        value = rng.uniform(-1, 1)
        newest = max(seen) if seen else None
        if newest is not None and step <= newest - 50:
            late += 1
        else:
            seen[step] = value
        window.add(step, value)
        expected = reference(seen, 50)
        assert window.values() == expected
    assert window.late == late


def test_step_window_keeps_exactly_the_last_n_steps() -> None:
    window = RollingWindow(50)
    for step in range(120):
        window.add(step, float(step))
    assert window.values() == [float(s) for s in range(70, 120)]
    assert window.summary().mean == statistics.fmean(range(70, 120))


def test_resent_step_replaces_its_value() -> None:
    window = RollingWindow(10)
    for step in range(5):
        window.add(step, 1.0)
    window.add(2, 9.0)
    assert window.values() == [1.0, 1.0, 9.0, 1.0, 1.0]


def test_time_window_uses_event_time_and_counts_late_points() -> None:
    window = RollingWindow(10.0)
    for t in [100.0, 101.5, 103.0, 112.0]:
        window.add(t, t)
    assert window.values() == [103.0, 112.0]
    assert window.add(101.0, 0.0) is False
    assert window.late == 1
    window.add(105.5, 5.0)
    assert window.values() == [103.0, 5.0, 112.0]


def test_span_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RollingWindow(0)


def ref_percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, written out independently."""
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] * (1 - (pos - lo)) + ordered[hi] * (pos - lo)


def ref_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope by the normal equations."""
    n = len(xs)
    sx, sy = sum(xs), sum(ys)
    sxy = sum(x * y for x, y in zip(xs, ys, strict=True))
    sxx = sum(x * x for x in xs)
    return (n * sxy - sx * sy) / (n * sxx - sx * sx)


def ref_ema(xs: list[float], ys: list[float], span: float) -> float:
    newest = xs[-1]
    w = [math.exp(-2.0 * (newest - x) / span) for x in xs]
    return sum(a * b for a, b in zip(w, ys, strict=True)) / sum(w)


def check_full_stats(window: RollingWindow, span: float, seen: dict[float, float]) -> None:
    newest = max(seen)
    xs = [p for p in sorted(seen) if p > newest - span]
    ys = [seen[p] for p in xs]
    fx = [x for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
    fy = [y for y in ys if math.isfinite(y)]
    s = window.summary(span)
    assert s.count == len(ys) and s.nonfinite == len(ys) - len(fy)
    if not fy:
        assert (s.mean, s.std, s.p50, s.ema, s.slope) == (None,) * 5
        return
    assert s.mean == pytest.approx(statistics.fmean(fy), rel=1e-9, abs=1e-12)
    assert s.std == pytest.approx(statistics.pstdev(fy), rel=1e-9, abs=1e-12)
    assert (s.min, s.max) == (min(fy), max(fy))
    ordered = sorted(fy)
    assert s.p50 == pytest.approx(statistics.median(fy), rel=1e-12)
    assert s.p50 == pytest.approx(ref_percentile(ordered, 0.5), rel=1e-12)
    assert s.p95 == pytest.approx(ref_percentile(ordered, 0.95), rel=1e-12)
    if len(fy) >= 2:
        q = statistics.quantiles(fy, n=20, method="inclusive")[18]
        assert s.p95 == pytest.approx(q, rel=1e-9)
        assert s.slope == pytest.approx(ref_slope(fx, fy), rel=1e-6, abs=1e-9)
    assert s.ema == pytest.approx(ref_ema(fx, fy, span), rel=1e-9)
    assert s.last == ys[-1] or (math.isnan(ys[-1]) and math.isnan(s.last or 0.0))


@pytest.mark.parametrize("seed", range(4))
def test_all_statistics_match_reference_with_out_of_order_and_nan(seed: int) -> None:
    rng = random.Random(seed)
    window = RollingWindow(60)
    seen: dict[float, float] = {}
    steps = list(range(300))
    # Mostly in order, with local shuffles, duplicates and a few non-finite values.
    for i in range(0, len(steps), 7):
        chunk = steps[i : i + 7]
        rng.shuffle(chunk)
        steps[i : i + 7] = chunk
    for step in steps + rng.sample(range(250, 300), 10):
        value = rng.gauss(0.01 * step, 1.0) if rng.random() > 0.03 else math.nan
        if window.add(step, value):
            seen[step] = value
        for span in (60, 20, 5):
            check_full_stats(window, span, seen)


def test_time_window_stats_match_reference_over_event_time() -> None:
    rng = random.Random(3)
    window = RollingWindow(10.0)
    seen: dict[float, float] = {}
    t = 1000.0
    for _ in range(400):
        t += rng.expovariate(20)
        position = t - rng.uniform(0, 0.3)  # arrives slightly out of order
        value = 5 + 0.3 * position + rng.gauss(0, 0.1)
        if window.add(position, value):
            seen[position] = value
    for span in (10.0, 2.5):
        check_full_stats(window, span, seen)
    assert window.summary().slope == pytest.approx(0.3, abs=0.05)


def test_single_point_window() -> None:
    s = summarize([4.0])
    assert (s.mean, s.std, s.p50, s.p95, s.ema, s.slope) == (4.0, 0.0, 4.0, 4.0, 4.0, None)
