"""`stepstream schema` and docs/wire-format.md: the schema is the models', and the doc's
examples are valid messages."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from stepstream.cli import app
from stepstream.contract import Batch, DeadLetter, Record, decode_batch
from stepstream.errors import ContractError
from stepstream.schema import topic_models, topic_schemas
from stepstream.topics import Topics

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def json_examples() -> list[dict]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)
    return [json.loads(b) for b in blocks]


def validator(model: str) -> Draft202012Validator:
    (entry,) = [t for t in topic_schemas(Topics())["topics"].values() if t["model"] == model][:1]
    return Draft202012Validator(entry["schema"])


def test_every_topic_has_a_schema_and_a_key() -> None:
    doc = topic_schemas(Topics("p"))
    assert doc["version"] == 1
    assert set(doc["topics"]) == set(Topics("p").all())
    assert doc["topics"]["p.telemetry"]["key"] == "run:rank"
    assert doc["topics"]["p.telemetry.validated"]["model"] == "Batch"
    for entry in doc["topics"].values():
        Draft202012Validator.check_schema(entry["schema"])


def test_the_docs_telemetry_example_is_valid_for_the_schema_and_the_decoder() -> None:
    batch_doc, letter_doc, _ = json_examples()
    validator("Batch").validate(batch_doc)
    batch = decode_batch(json.dumps(batch_doc).encode())
    assert math.isnan(batch.records[0].values["grad_norm"])
    assert batch.records[1].values["underflow"] == -math.inf
    validator("DeadLetter").validate(letter_doc)
    assert DeadLetter.model_validate(letter_doc).truncated


def test_the_docs_serving_example_is_valid_for_the_schema_and_the_stage() -> None:
    from processors.serving.stage import parse_records
    from stepstream.serving_contract import decode_serving

    _, _, serving_doc = json_examples()
    validator("ServingBatch").validate(serving_doc)
    envelope, records = decode_serving(json.dumps(serving_doc).encode())
    parsed = parse_records(envelope.model, envelope.version, records)
    assert not parsed.rejected
    assert [p.id for p in parsed.predictions] == ["req-123"]
    assert [o.id for o in parsed.outcomes] == ["req-117", "req-118"]


def test_what_the_sdk_models_write_validates_including_non_finite_values() -> None:
    batch = Batch(
        run="r-1",
        rank=0,
        records=[Record(seq=0, t=1.5, step=1, values={"a": math.nan, "b": math.inf})],
    )
    validator("Batch").validate(json.loads(batch.to_bytes()))


@pytest.mark.parametrize(
    "change",
    [
        {"run": "{run}"},
        {"run": "a:b"},
        {"rank": -1},
        {"records": [{"seq": 0, "t": 1.0, "values": {"a|b": 1.0}}]},
        {"records": [{"seq": 0, "t": 1.0, "values": {"a": None}}]},
        {"records": [{"seq": 0, "t": 1.0, "values": {"a": "nope"}}]},
    ],
)
def test_the_schema_refuses_what_the_decoder_refuses(change: dict) -> None:
    doc = {"v": 1, "run": "r", "rank": 0, "records": []} | change
    assert not validator("Batch").is_valid(doc)
    with pytest.raises(ContractError):
        decode_batch(json.dumps(doc).encode())


def test_cli_prints_every_topic_as_json_and_one_topic_on_request() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["schema", "--json"], env={"STEPSTREAM_TOPIC_PREFIX": "q"})
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc["topics"]) == set(Topics("q").all())
    assert set(topic_models(Topics("q"))) == set(doc["topics"])
    one = runner.invoke(app, ["schema", "--json", "--topic", "deadletter"])
    assert list(json.loads(one.output)["topics"]) == ["stepstream.deadletter"]
    bad = runner.invoke(app, ["schema", "--topic", "nope"])
    assert bad.exit_code == 1 and "stepstream.telemetry" in bad.output
