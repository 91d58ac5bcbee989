"""JSON Schema of every topic's messages, generated from the pydantic models of the contract.

What `stepstream schema` prints and docs/wire-format.md describes. Floats are written as
numbers, or as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` for non-finite
values (JSON has none), and the schema says so.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from stepstream.contract import (
    SCHEMA_VERSION,
    Alert,
    Batch,
    ControlAction,
    CrossRankUpdate,
    DeadLetter,
    RankSummary,
    WindowUpdate,
)
from stepstream.serving_contract import ServingBatch
from stepstream.topics import Topics

NON_FINITE = ["NaN", "Infinity", "-Infinity"]


def topic_models(topics: Topics) -> dict[str, tuple[type[BaseModel], str]]:
    """Topic name -> (message model, Kafka key) for every topic stepstream creates."""
    models: dict[str, tuple[type[BaseModel], str]] = {
        topics.telemetry: (Batch, "run:rank"),
        topics.validated: (Batch, "run:rank"),
        topics.summaries: (RankSummary, "run"),
        topics.crossrank: (CrossRankUpdate, "run"),
        topics.windows: (WindowUpdate, "run"),
        topics.alerts: (Alert, "run"),
        topics.deadletter: (DeadLetter, "any"),
        topics.control: (ControlAction, "run"),
        topics.serving: (ServingBatch, "prediction id"),
    }
    assert set(models) == set(topics.all()), "every topic needs its model here"
    return models


class _WireJsonSchema(GenerateJsonSchema):
    """Floats as the wire writes them: a number or one of the non-finite strings."""

    def float_schema(self, schema: core_schema.FloatSchema) -> JsonSchemaValue:
        number = super().float_schema(schema)
        return {"anyOf": [number, {"type": "string", "enum": NON_FINITE}]}

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        # A map whose keys must match a pattern (metric names) has no other keys.
        out = super().dict_schema(schema)
        if "patternProperties" in out:
            out["additionalProperties"] = False
        return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one message model, as it is read."""
    return model.model_json_schema(schema_generator=_WireJsonSchema, mode="validation")


def topic_schemas(topics: Topics) -> dict[str, Any]:
    """Every topic's key format and message schema, under the contract's version."""
    return {
        "version": SCHEMA_VERSION,
        "topics": {
            name: {"key": key, "model": model.__name__, "schema": model_schema(model)}
            for name, (model, key) in topic_models(topics).items()
        },
    }
