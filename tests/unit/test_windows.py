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
