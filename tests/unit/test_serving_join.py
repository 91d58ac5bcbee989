"""The label join (processors.serving.join) and the stage's use of it (processors.serving.stage)."""

from __future__ import annotations

from processors.serving.join import Pending, join, lookup_days, pending_day
from processors.serving.stage import Effects, ModelStage, parse_records

DAY = 86400.0


def _stage() -> ModelStage:
    return ModelStage("m", window_s=60, horizon_s=14 * DAY, top_k=2, reference_size=100)


def test_join_verdicts() -> None:
    p = Pending(1000.0, "v1", "__none__", 0.8, 1.0)
    assert join(None, ["label"], 1001, DAY) == ("orphan", [])
    assert join(p, ["label"], 1000 + 2 * DAY, DAY) == ("late", [])
    assert join(p, ["label"], 1010, DAY) == ("joined", ["label"])
    assert join(p, ["label"], 1011, DAY) == ("duplicate", [])
    assert join(p, ["label", "clicked"], 1012, DAY) == ("joined", ["clicked"])
    assert Pending.from_bytes(p.to_bytes()) == p


def test_lookup_days_cover_the_horizon() -> None:
    t = 100 * DAY + 5
    days = lookup_days(t, 14 * DAY, t)
    assert pending_day(t) in days and pending_day(t - 14 * DAY) in days
    assert days == sorted(days, reverse=True)


def test_outcomes_join_predictions_of_the_same_batch_and_of_earlier_ones() -> None:
    stage = _stage()
    records = [
        {"kind": "prediction", "id": "a", "t": 120.0, "score": 0.9, "segment": {"c": "DE"}},
        {"kind": "prediction", "id": "b", "t": 130.0, "score": 0.2},
        {"kind": "outcome", "id": "a", "t": 125.0, "label": 1},
        {"kind": "outcome", "id": "zz", "t": 125.0, "label": 1},
    ]
    parsed = parse_records("m", "v1", records)
    effects = Effects()
    stage.apply(parsed, {"a": None, "b": None, "zz": None}, effects)
    labels = effects.labels[("v1", 120)]
    assert labels["c=DE|preds"] == 1 and labels["__none__|preds"] == 1
    assert labels["c=DE|tp"] == 1 and labels["c=DE|labeled"] == 1 and labels["c=DE|p90"] == 1
    assert effects.outcomes == {"joined": 1, "orphan": 1}
    assert effects.pending["a"][1].joined == "l"
    # Later: an outcome for b, a replayed prediction a, a repeated outcome for a.
    found = {pid: rec for pid, (_, rec) in effects.pending.items()}
    later = parse_records(
        "m",
        "v1",
        [
            {"kind": "prediction", "id": "a", "t": 120.0, "score": 0.9},
            {"kind": "outcome", "id": "b", "t": 4000.0, "label": 1, "clicked": True},
            {"kind": "outcome", "id": "a", "t": 4000.0, "label": 1},
        ],
    )
    effects2 = Effects()
    stage.apply(later, found, effects2)
    assert effects2.outcomes == {"duplicate_prediction": 1, "joined": 1, "duplicate": 1}
    labels2 = effects2.labels[("v1", 120)]
    assert labels2 == {
        "__none__|labeled": 1,
        "__none__|err_n": 1,
        "__none__|se": (0.2 - 1.0) ** 2,
        "__none__|ae": 0.8,
        "__none__|fn": 1,
        "__none__|p20": 1,
        "__none__|d5": 1,
        "__none__|fb": 1,
        "__none__|clicks": 1,
    }


def test_hostile_records_are_rejected_with_reasons() -> None:
    records = [
        {"kind": "prediction", "id": "bad id with spaces", "t": 1.0},
        {"kind": "prediction", "id": "ok", "t": 1.0, "score": "NaN"},
        {"kind": "prediction", "id": "ok2", "t": 1.0, "features": {f"f{i}": 1 for i in range(500)}},
        {"kind": "outcome", "id": "ok3", "t": 1.0},
        {"kind": "weird"},
        "not an object",
        {"kind": "prediction", "id": "fine", "t": 1.0, "features": {"x": "NaN"}},
    ]
    parsed = parse_records("m", "v1", records)
    assert [r.reason for r in parsed.rejected] == [
        "bad_id",
        "non_finite_score",
        "too_many_features",
        "empty_outcome",
        "schema",
        "schema",
    ]
    assert [p.id for p in parsed.predictions] == ["fine"]


def test_segments_are_capped_at_top_k_then_other() -> None:
    stage = _stage()
    records = [
        {"kind": "prediction", "id": f"p{i}", "t": 1.0, "segment": {"c": c}}
        for i, c in enumerate(["DE", "FR", "US", "DE", "IT"])
    ]
    effects = Effects()
    stage.apply(parse_records("m", "v1", records), {}, effects)
    labels = effects.labels[("v1", 0)]
    assert labels == {"c=DE|preds": 2, "c=FR|preds": 1, "__other__|preds": 2}


def test_without_a_reference_the_first_window_becomes_it_and_counting_starts_after() -> None:
    stage = ModelStage("m", window_s=60, horizon_s=DAY, top_k=5, reference_size=50)
    records = [
        {
            "kind": "prediction",
            "id": f"p{i}",
            "t": 1.0,
            "features": {"x": float(i % 10)},
            "score": 0.5,
        }
        for i in range(80)
    ]
    effects = Effects()
    stage.apply(parse_records("m", "v", records), {}, effects)
    assert set(effects.built) == {"v"} and effects.built["v"].source == "traffic"
    assert effects.counts == {}  # the rest of the batch waits for the stored reference
    assert effects.labels[("v", 0)]["__none__|preds"] == 80
    later = Effects()
    stage.apply(parse_records("m", "v", [{**records[0], "id": "q"}]), {}, later)
    assert later.counts[("v", 0)]["n"] == 1


def test_the_fast_path_and_pydantic_agree_on_what_is_valid() -> None:
    good = {"kind": "prediction", "id": "a", "t": 1.0, "features": {"x": 1.0}, "score": 0.5}
    records = [
        good,
        {**good, "id": "b", "features": {"bad name": 1.0}},
        {**good, "id": "c", "segment": {"country": 3}},
        {**good, "id": "d", "t": "soon"},
        {**good, "id": "e", "score": "0.25"},  # lax: pydantic reads a numeric string
        {**good, "id": "f", "features": {"x": "NaN", "y": [1]}},
        {**good, "id": "g", "features": {"x": [1]}},  # a known name: the fast path refuses too
        {**good, "id": "h", "features": {"x": "NaN", "y": None}},
    ]
    parsed = parse_records("m", "v", records)
    assert [p.id for p in parsed.predictions] == ["a", "e", "h"]
    assert parsed.predictions[1].score == 0.25
    assert [r.reason for r in parsed.rejected] == ["schema"] * 5
