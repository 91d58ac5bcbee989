"""Fixed reference bins and exact PSI / Jensen-Shannon (processors.serving.bins, categorical)."""

from __future__ import annotations

import math

import pytest

from processors.serving.bins import NumericBins, js_distance, js_divergence, psi
from processors.serving.categorical import OTHER, CategoricalBins


def test_numeric_bins_come_from_reference_quantiles_and_count_every_value() -> None:
    bins = NumericBins.from_values([float(v) for v in range(100)])
    assert bins.edges == (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)
    assert (bins.low, bins.high) == (0.0, 99.0)
    assert bins.counts([float(v) for v in range(100)]) == [10] * 10
    assert bins.index(-5.0) == 0 and bins.index(10.0) == 1 and bins.index(1e9) == 9
    assert NumericBins.from_json(bins.to_json()) == bins


def test_repeated_values_give_fewer_bins() -> None:
    bins = NumericBins.from_values([0.0] * 50 + [1.0] * 50)
    assert bins.size == 2
    assert bins.counts([0.0, 1.0, 1.0]) == [1, 2]


def test_psi_and_js_are_exact_on_counts() -> None:
    ref = [50, 30, 20]
    cur = [20, 30, 50]
    p = [0.5, 0.3, 0.2]
    q = [0.2, 0.3, 0.5]
    expected_psi = sum((b - a) * math.log(b / a) for a, b in zip(p, q, strict=True))
    assert psi(ref, cur) == pytest.approx(expected_psi, abs=1e-15)
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    expected_js = 0.5 * sum(a * math.log2(a / c) for a, c in zip(p, m, strict=True)) + 0.5 * sum(
        b * math.log2(b / c) for b, c in zip(q, m, strict=True)
    )
    assert js_divergence(ref, cur) == pytest.approx(expected_js, abs=1e-15)
    assert js_distance(ref, cur) == pytest.approx(math.sqrt(expected_js), abs=1e-15)
    # Counts that add across workers give the same figure as one worker's counts.
    assert psi(ref, [10, 15, 25]) + 0 == psi(
        ref, [a + b for a, b in zip([10, 15, 25], [10, 15, 25], strict=True)]
    )
    assert js_divergence(ref, ref) == 0.0 and psi(ref, [100, 60, 40]) == 0.0
    # Disjoint supports: the bounds.
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)


def test_psi_is_deterministic_bit_for_bit() -> None:
    ref = [123, 456, 789, 1, 0, 33]
    cur = [7, 0, 99, 400, 5, 12]
    assert len({psi(ref, cur) for _ in range(5)}) == 1
    assert len({js_distance(ref, cur) for _ in range(5)}) == 1


def test_categorical_top_k_other_and_unseen() -> None:
    values = ["DE"] * 5 + ["FR"] * 3 + ["US"] * 2 + ["IT"]
    cats = CategoricalBins.from_values(values, top_k=2)
    assert cats.names() == ["DE", "FR", OTHER]
    assert cats.counts(["DE", "US", "IT", "FR", "XX"]) == [1, 1, 3]
    assert not cats.unseen("US") and cats.unseen("XX")
    assert CategoricalBins.from_json(cats.to_json()) == cats


def test_a_reference_reads_non_finite_values_as_missing() -> None:
    from processors.serving.reference import NUMERIC, Reference

    ref = Reference.build({"x": [1.0, "NaN", "NaN", "NaN", 2.0, None, 3.0]}, [0.1, 0.9], 5, "given")
    assert ref.features["x"].kind == NUMERIC and sum(ref.features["x"].counts) == 3
    assert Reference.from_bytes(ref.to_bytes()).features["x"].counts == ref.features["x"].counts
