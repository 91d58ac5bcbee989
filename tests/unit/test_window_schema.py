"""One schema for window statistics (issue 24): the contract's WindowStats is the field
list; every other stats struct is derived from it and must hold exactly its fields."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from processors.series_stage import _stats
from processors.windows import Summary, summarize
from query import reader, schemas
from stepstream import keys
from stepstream.contract import (
    WINDOW_STATS_FIELDS,
    WINDOW_STATS_NUMBERS,
    WindowStats,
    window_stats_types,
)
from stepstream.stored_stats import OpenStats

CONTRACT = tuple(WindowStats.model_fields)
#: The stats a window value holds by position: a prefix of the contract's (a stat the
#: contract gains later is stored by name, so that no reader misreads a position).
STORED = CONTRACT[: keys.WINDOW_STATS_POSITIONS]

#: Every struct that holds window stats, with its fields and the contract's, in order.
#: A new stats struct belongs here.
DERIVED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "stepstream.keys.STORED_WINDOW_STATS (stored order)": (keys.STORED_WINDOW_STATS, STORED),
    "stepstream.stored_stats.OpenStats": (tuple(OpenStats.model_fields), CONTRACT),
    "query.schemas.RollingStats (HTTP API)": (tuple(schemas.RollingStats.model_fields), CONTRACT),
    "query.reader.RollingStats (stored, by position)": (
        tuple(f for f in reader.RollingStats.__struct_fields__ if f != "model_extra"),
        STORED,
    ),
    "processors.windows.Summary (numbers only)": (
        tuple(f.name for f in msgspec.structs.fields(Summary)),
        tuple(f for f in CONTRACT if f != "flags"),
    ),
}


@pytest.mark.parametrize("name", list(DERIVED))
def test_every_stats_struct_holds_exactly_the_contracts_fields(name: str) -> None:
    fields, want = DERIVED[name]
    assert fields == want, f"{name} gained or lost a field against WindowStats"


def test_the_contract_lists_are_its_model() -> None:
    assert WINDOW_STATS_FIELDS == CONTRACT == keys.WINDOW_STATS_FIELDS
    # The stored layout never names a stat the contract lacks.
    assert len(CONTRACT) >= keys.WINDOW_STATS_POSITIONS
    assert tuple(f for f in CONTRACT if f != "flags") == WINDOW_STATS_NUMBERS
    assert [name for name, _, _ in window_stats_types()] == list(CONTRACT)


def test_the_reader_struct_has_the_contracts_types_and_defaults() -> None:
    got = [(f.name, f.type, f.default) for f in msgspec.structs.fields(reader.RollingStats)]
    assert got[:-1] == window_stats_types()[: len(STORED)]
    assert got[-1][0] == "model_extra"
    # The HTTP API documents the same properties (its /openapi.json schema).
    props = schemas.RollingStats.model_json_schema()["properties"]
    assert tuple(props) == CONTRACT


def test_a_summary_becomes_window_stats_field_for_field() -> None:
    summary = summarize([1.0, 2.0, float("nan"), 4.0])
    stats = _stats(summary, ["nan"])
    assert stats.model_dump() == {**msgspec.structs.asdict(summary), "flags": ["nan"]}


def test_the_stored_window_value_keeps_its_layout() -> None:
    # Stored values must read back across releases: this is the layout of release 2.
    stats: dict[str, Any] = {
        "count": 3,
        "nonfinite": 1,
        "mean": 0.5,
        "last": float("nan"),
        "flags": ["nan"],
        "p999": 0.5,
    }
    value = keys.window_stats_value(2, "loss", "50steps", stats)
    assert value == (
        b'[2,"loss","50steps",[3,1,0.5,null,null,"NaN",null,null,null,null,null,["nan"],'
        b'{"p999":0.5}]]'
    )
    (row,) = reader._rolling_rows([value]) or []
    assert (row.rank, row.metric, row.stats.nonfinite, row.stats.p999) == (2, "loss", 1, 0.5)
    assert json.loads(reader.to_json(row))["stats"]["flags"] == ["nan"]


def test_the_packed_window_value_keeps_its_layout() -> None:
    # Packed values must read back across releases: this is the packed layout (magic 0xB1).
    from stepstream import window_values

    stats: dict[str, Any] = {"count": 3, "nonfinite": 1, "mean": 0.5, "last": float("nan")}
    value = keys.window_stats_value(2, "loss", "50steps", stats)
    assert value.hex() == (
        "b102000000"
        + window_values.metric_code("loss").to_bytes(8, "little").hex()
        + "0000000000000840000000000000f03f000000000000e03f"
        + "ad0b00000000f87f" * 2
        + "000000000000f87f"
        + "ad0b00000000f87f" * 5
    )
    assert window_values.metric_code("loss") == 0x6CD3DEDC4CAA698E
    assert keys.window_stats_value(2, "loss", "50steps", {**stats, "flags": ["nan"]})[:1] == b"["
    assert keys.window_stats_value(2, "loss", "50steps", {**stats, "p999": 0.5})[:1] == b"["
