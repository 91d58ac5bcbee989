"""The wire contract: round trips, non-finite values, unknown fields, versions."""

from __future__ import annotations

import json
import math

import pytest

from stepstream.contract import (
    Alert,
    Batch,
    Record,
    RecordKind,
    WindowStats,
    WindowUpdate,
    decode_batch,
)
from stepstream.errors import ContractError


def make_batch(**values: float) -> Batch:
    return Batch(
        run="run-1",
        rank=1,
        world=2,
        node="n1",
        pid=42,
        incarnation="abc",
        records=[Record(seq=0, t=1.5, step=7, kind=RecordKind.TRAIN, values=values)],
    )


def test_round_trip_keeps_every_field() -> None:
    batch = make_batch(loss=0.25, lr=1e-3)
    decoded = decode_batch(batch.to_bytes())
    assert decoded == batch
    assert decoded.key == b"run-1:1"


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_infinities_survive_bytes(value: float) -> None:
    decoded = decode_batch(make_batch(loss=value).to_bytes())
    assert decoded.records[0].values["loss"] == value


def test_nan_survives_bytes_as_an_explicit_string() -> None:
    raw = make_batch(loss=math.nan).to_bytes()
    assert json.loads(raw)["records"][0]["values"]["loss"] == "NaN"
    assert math.isnan(decode_batch(raw).records[0].values["loss"])


def test_non_finite_window_stats_and_alert_evidence_round_trip() -> None:
    stats = WindowStats(count=2, nonfinite=1, mean=1.0, min=1.0, max=1.0, last=math.nan)
    update = WindowUpdate(
        run="r", rank=0, latest={"loss": -math.inf}, windows={"10s": {"loss": stats}}
    )
    back = WindowUpdate.model_validate_json(update.to_bytes())
    assert math.isnan(back.windows["10s"]["loss"].last or 0.0)
    assert back.latest["loss"] == -math.inf
    alert = Alert(
        fingerprint="f",
        rule="nonfinite",
        run="r",
        t=1.0,
        raised_at=2.0,
        evidence={"value": math.nan},
    )
    assert math.isnan(Alert.model_validate_json(alert.to_bytes()).evidence["value"] or 0.0)


def test_unknown_fields_are_ignored() -> None:
    doc = json.loads(make_batch(loss=1.0).to_bytes())
    doc["future_field"] = {"x": 1}
    doc["records"][0]["also_new"] = [1, 2]
    decoded = decode_batch(json.dumps(doc).encode())
    assert decoded.records[0].values == {"loss": 1.0}


def test_newer_major_version_is_rejected_with_reason_version() -> None:
    doc = json.loads(make_batch(loss=1.0).to_bytes())
    doc["v"] = 2
    with pytest.raises(ContractError) as err:
        decode_batch(json.dumps(doc).encode())
    assert err.value.reason == "version"
    assert "v2" in err.value.detail


def test_newer_version_with_other_shape_still_says_version() -> None:
    with pytest.raises(ContractError) as err:
        decode_batch(b'{"v": 3, "completely": "different"}')
    assert err.value.reason == "version"


def test_garbage_bytes_are_undecodable() -> None:
    with pytest.raises(ContractError) as err:
        decode_batch(b"\x00\xffnot json")
    assert err.value.reason == "undecodable"


def test_schema_violation_names_the_field() -> None:
    doc = json.loads(make_batch(loss=1.0).to_bytes())
    doc["rank"] = -1
    with pytest.raises(ContractError) as err:
        decode_batch(json.dumps(doc).encode())
    assert err.value.reason == "schema"
    assert "rank" in err.value.detail


@pytest.mark.parametrize("run", ["", "a b", "x{y}", "r:1", "-lead", "a" * 129])
def test_unsafe_run_ids_are_rejected(run: str) -> None:
    doc = json.loads(make_batch(loss=1.0).to_bytes())
    doc["run"] = run
    with pytest.raises(ContractError):
        decode_batch(json.dumps(doc).encode())


def test_metric_names_with_separator_are_rejected() -> None:
    doc = json.loads(make_batch(loss=1.0).to_bytes())
    doc["records"][0]["values"] = {"a|b": 1.0}
    with pytest.raises(ContractError):
        decode_batch(json.dumps(doc).encode())
