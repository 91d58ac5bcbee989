"""The serving wire contract: what a serving process publishes about its model's
predictions, the outcomes (labels, clicks, conversions) that arrive later, and the
reference distribution drift is measured against. One definition; the SDK
(`producers.serving`) writes it, the serving stage (`processors.serving_app`) reads it.

One Kafka message carries a batch of records of one model from one publisher:
``{"v": 1, "model", "version", "incarnation", "records": [...]}``. Predictions and outcomes
are keyed by prediction id: a message holds only records whose ids fall in one partition
(`prediction_partition`, Kafka's default partitioner), and its key is one of those ids, so
a prediction and its outcome meet in one partition whichever process sent each.

Non-finite numbers travel as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (JSON
has none): a NaN score is rejected by the stage with reason ``non_finite_score``, a
non-finite feature value counts as missing.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from stepstream.contract import RUN_ID_PATTERN, SCHEMA_VERSION
from stepstream.errors import ConfigError, ContractError

PREDICTION_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:@/=+-]{0,127}$"
"""Prediction ids: 1-128 characters safe as a Redis hash field and a Kafka key."""

FEATURE_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_./@-]{0,99}$"
"""Feature and segment names: no ``|``, ``:`` or ``=`` (they separate stored fields)."""

MODEL_PATTERN = RUN_ID_PATTERN
"""Model names follow run ids: they are the hash tag of the model's Redis keys."""

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

ModelName = Annotated[str, StringConstraints(pattern=MODEL_PATTERN)]
Version = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]
PredictionId = Annotated[str, StringConstraints(pattern=PREDICTION_ID_PATTERN)]
FeatureName = Annotated[str, StringConstraints(pattern=FEATURE_NAME_PATTERN)]
#: A feature value: a number, a category, or missing (null).
FeatureValue = float | str | bool | None

#: Most features one prediction may carry; a larger map is dead-lettered.
MAX_FEATURES = 200
#: Longest categorical value kept (longer ones are cut to this).
MAX_CATEGORY_CHARS = 100
#: Most values per feature in one reference record (the SDK splits larger references).
MAX_REFERENCE_VALUES = 50_000

_ID_RE = re.compile(PREDICTION_ID_PATTERN)
_MODEL_RE = re.compile(MODEL_PATTERN)
_VERSION_RE = re.compile(VERSION_PATTERN)
_FEATURE_RE = re.compile(FEATURE_NAME_PATTERN)

NON_FINITE_STRINGS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class ServingModel(BaseModel):
    """Base of serving message models: unknown fields ignored, non-finite as strings."""

    # Keys only in the parser's string cache, as `contract.WireModel` (prediction ids are
    # unique strings: cached, they outlive their predictions and pin freed memory).
    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="strings", cache_strings="keys")


class PredictionRecord(ServingModel):
    """One prediction the model served."""

    kind: Literal["prediction"] = "prediction"
    id: PredictionId = Field(description="Prediction id; its outcome names the same id.")
    t: float = Field(description="Event time (Unix seconds) the prediction was served.")
    features: dict[FeatureName, FeatureValue] = Field(
        default_factory=dict, description=f"Model inputs; at most {MAX_FEATURES}."
    )
    score: float | None = Field(None, description="Score or probability (finite).")
    prediction: float | None = Field(None, description="Predicted class or value.")
    segment: dict[FeatureName, str] = Field(
        default_factory=dict, description="Segment labels (country=DE); top K kept."
    )


class OutcomeRecord(ServingModel):
    """What happened after a prediction: its label and/or user feedback."""

    kind: Literal["outcome"] = "outcome"
    id: PredictionId
    t: float = Field(description="Event time (Unix seconds) the outcome was observed.")
    label: float | None = Field(None, description="Ground truth (class or value).")
    clicked: bool | None = None
    converted: bool | None = None


class ReferenceRecord(ServingModel):
    """Reference values (training or validation data) drift is measured against."""

    kind: Literal["reference"] = "reference"
    t: float
    features: dict[FeatureName, list[FeatureValue]] = Field(default_factory=dict)
    scores: list[float] = Field(default_factory=list)


ServingRecord = Annotated[
    PredictionRecord | OutcomeRecord | ReferenceRecord, Field(discriminator="kind")
]


class ServingBatch(ServingModel):
    """One message on the serving topic (key: a prediction id of its partition)."""

    v: int = SCHEMA_VERSION
    model: ModelName
    version: Version = "default"
    incarnation: str = Field("", description="Publisher instance id (debugging).")
    records: list[ServingRecord]


def check_model(model: str) -> str:
    """`model` if it is a valid model name, else ConfigError saying what is allowed."""
    if not isinstance(model, str) or not _MODEL_RE.fullmatch(model):
        raise ConfigError(
            f"invalid model name {model!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return model


def check_version(version: str) -> str:
    """`version` if it is a valid model version, else ConfigError."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise ConfigError(
            f"invalid model version {version!r}: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return version


def valid_id(value: object) -> bool:
    """True if `value` is a usable prediction id."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def valid_feature_name(value: object) -> bool:
    """True if `value` is a usable feature or segment name."""
    return isinstance(value, str) and _FEATURE_RE.fullmatch(value) is not None


def _murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's, kafka-python's and aiokafka's default
    partitioner), so the SDK knows the partition a key lands in."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = seed ^ length
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = (data[i4] & 0xFF) + ((data[i4 + 1] & 0xFF) << 8)
        k += ((data[i4 + 2] & 0xFF) << 16) + ((data[i4 + 3] & 0xFF) << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= (k % 0x100000000) >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    extra = length % 4
    if extra >= 3:
        h ^= (data[(length & ~3) + 2] & 0xFF) << 16
    if extra >= 2:
        h ^= (data[(length & ~3) + 1] & 0xFF) << 8
    if extra >= 1:
        h ^= data[length & ~3] & 0xFF
        h = (h * m) & 0xFFFFFFFF
    h ^= (h % 0x100000000) >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= (h % 0x100000000) >> 15
    return h


def prediction_partition(prediction_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the key `prediction_id`."""
    return (_murmur2(prediction_id.encode()) & 0x7FFFFFFF) % partitions


def decode_serving(raw: bytes, max_bytes: int | None = None) -> tuple[ServingBatch, list[Any]]:
    """The envelope of one serving message and its records, still as parsed JSON (each
    record is checked on its own by the stage, so one bad record costs itself).

    ContractError: ``too_large``, ``undecodable``, ``schema`` (no envelope), ``version``
    (a newer major version).
    """
    if max_bytes is not None and len(raw) > max_bytes:
        raise ContractError("too_large", f"{len(raw)} bytes > {max_bytes}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContractError("undecodable", str(exc)[:200]) from exc
    if not isinstance(body, dict):
        raise ContractError("schema", "a serving message is a JSON object")
    version = body.get("v", SCHEMA_VERSION)
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ContractError("version", f"schema version {version} > {SCHEMA_VERSION}")
    records = body.get("records")
    if not isinstance(records, list):
        raise ContractError("schema", "records: a list is required")
    try:
        envelope = ServingBatch.model_validate({**body, "records": []})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ContractError("schema", f"{where}: {first['msg']}") from exc
    return envelope, records
