"""Calibrated drift thresholds and window judgement (processors.serving.drift, evaluate)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from processors.serving.drift import Streaks, calibrate
from processors.serving.evaluate import DATA_QUALITY, FEATURE_DRIFT, Decision, Judge
from processors.serving.reference import Reference
from processors.serving.sketches import sketch_of
from processors.serving.stage import Effects, ModelStage, parse_records

FEATURES = 8
WINDOW = 500


def _draw(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {
        f"f{i}": rng.normal(i, 1 + i / 4, n).tolist() for i in range(FEATURES)
    }
    cols["f0"] = (np.asarray(cols["f0"]) + shift).tolist()
    cols["country"] = rng.choice(["DE", "FR", "US", "IT"], n, p=[0.4, 0.3, 0.2, 0.1]).tolist()
    return cols


def _run(seed: int, windows: int, shift_from: int | None = None) -> list[tuple[int, Decision]]:
    rng = np.random.default_rng(seed)
    ref_cols = _draw(rng, 5000)
    scores = rng.random(5000).tolist()
    stage = ModelStage("m", window_s=60, horizon_s=86400, top_k=10, reference_size=5000)
    reference = Reference.build(ref_cols, scores, 10, "given")
    stage.set_reference("v", reference)
    judge = Judge(min_count=100, consecutive=2, quality_max_rate=0.05)
    out = []
    for w in range(windows):
        shift = 1.0 if shift_from is not None and w >= shift_from else 0.0
        cols = _draw(rng, WINDOW, shift)
        window_scores = rng.random(WINDOW)
        records = [
            {
                "kind": "prediction",
                "id": f"{w}-{i}",
                "t": w * 60.0 + 1,
                "features": {k: v[i] for k, v in cols.items()},
                "score": float(window_scores[i]),
            }
            for i in range(WINDOW)
        ]
        effects = Effects()
        stage.apply(parse_records("m", "v", records), {}, effects)
        counts = effects.counts[("v", w * 60)]
        sketches = {
            f: sketch_of(np.concatenate(vals).tolist())
            for (_, start, f), vals in effects.sketch_values.items()
        }
        report, decisions = judge.window("m", "v", w * 60, reference, counts, sketches)
        assert report["predictions"] == WINDOW
        out.extend((w, d) for d in decisions)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_stable_stream_raises_nothing(seed: int) -> None:
    assert _run(seed, 40) == []


def test_a_shifted_feature_is_named_within_two_windows_and_only_it() -> None:
    decisions = _run(11, 12, shift_from=6)
    fired = [(w, d.rule, d.metric) for w, d in decisions if d.action == "fire"]
    assert (7, FEATURE_DRIFT, "feature:f0") in fired
    assert {m for _, _, m in fired} == {"feature:f0"}, fired
    assert min(w for w, _, _ in fired) <= 7


def test_thresholds_shrink_with_window_size_and_are_deterministic() -> None:
    ref = [400, 300, 200, 100]
    small = calibrate(ref, 100, "x")
    large = calibrate(ref, 10_000, "x")
    assert large.value < small.value
    assert calibrate(ref, 100, "x") == small


def test_streaks_fire_once_and_clear() -> None:
    s = Streaks(2)
    assert [s.observe("k", o) for o in (True, False, True, True, True, False)] == [
        None,
        None,
        None,
        "fire",
        None,
        "clear",
    ]


def test_data_quality_counts_and_alert() -> None:
    rng = np.random.default_rng(0)
    stage = ModelStage("m", window_s=60, horizon_s=86400, top_k=10, reference_size=5000)
    reference = Reference.build(
        {"age": rng.normal(40, 5, 2000).tolist(), "c": ["a", "b"] * 1000}, [], 10, "given"
    )
    stage.set_reference("v", reference)
    records = [
        {
            "kind": "prediction",
            "id": f"p{i}",
            "t": 1.0,
            "features": {
                "age": ("x" if i % 5 == 0 else (None if i % 5 == 1 else 1000.0)),
                "c": "zz",
            },
        }
        for i in range(200)
    ]
    effects = Effects()
    stage.apply(parse_records("m", "v", records), {}, effects)
    counts = effects.counts[("v", 0)]
    assert counts["q|age|type"] == 40 and counts["q|age|missing"] == 40
    assert counts["q|age|range"] == 120 and counts["q|c|unseen"] == 200
    judge = Judge(min_count=100, consecutive=2, quality_max_rate=0.05)
    _, decisions = judge.window("m", "v", 0, reference, counts, {})
    assert {(d.rule, d.metric) for d in decisions if d.rule == DATA_QUALITY} == {
        (DATA_QUALITY, "feature:age"),
        (DATA_QUALITY, "feature:c"),
    }


def test_performance_drop_against_earlier_windows() -> None:
    judge = Judge(min_count=100, consecutive=2, quality_max_rate=0.05)

    def window(correct: int, total: int) -> dict[str, object]:
        return {"confusion": {"tp": correct, "tn": 0, "fp": total - correct, "fn": 0}}

    decisions = []
    for w in range(5):  # 90 % accurate: the baseline
        decisions += judge.performance_window("m", "v", w, window(180, 200))
    assert decisions == []
    assert judge.performance_window("m", "v", 5, window(150, 200)) == []  # one window: pending
    (fired,) = judge.performance_window("m", "v", 6, window(150, 200))
    assert (fired.rule, fired.action, fired.metric) == ("performance_drop", "fire", "accuracy")
    assert fired.evidence["value"] == 0.75
    (cleared,) = judge.performance_window("m", "v", 7, window(181, 200))
    assert cleared.action == "clear"
    assert judge.performance_window("m", "v", 8, window(5, 50)) == []  # too few labels
