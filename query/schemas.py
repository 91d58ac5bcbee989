"""Pydantic mirrors of the read results that are msgspec Structs (`query.reader`).

They document the HTTP API (`response_model`, so /openapi.json names and shapes stay as
they were) and define the JSON the API and `stepstream query --json` emit:
`query.reader.to_json` of a result is byte for byte `dump_json` of its mirror
(tests/unit/test_query_models.py). Reads never build them: validating thousands of rows
through pydantic was most of a rolling read.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stepstream.stored_stats import OpenStats


class RollingStats(OpenStats):
    """WindowStats as stored; extra numeric stats processors add (std, p95 ...) are kept."""


class _JsonModel(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")


class RollingRow(_JsonModel):
    """Rolling stats of one (rank, metric) over one window."""

    rank: int
    metric: str
    window: str
    stats: RollingStats


class SeriesPoint(_JsonModel):
    """One point of a raw series: x is the step (by step) or event time in s (by time)."""

    x: float
    value: float
    step: int | None = None
    t: float | None = Field(None, description="Event time (Unix s), where it was fetched.")


class SeriesResult(_JsonModel):
    """A range of one series, downsampled for plotting when asked."""

    run: str
    rank: int
    metric: str
    by: Literal["step", "time"]
    points: list[SeriesPoint]
    stored: int = Field(description="Points in the range before downsampling.")
    method: str = "none"
    decimated_before: float | None = Field(
        None, description="By step: points before this step come from the decimated series."
    )
