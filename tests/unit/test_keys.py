"""Redis key schema: hash tags, escaping by validation, field round trips."""

from __future__ import annotations

import math

import pytest

from stepstream.errors import ConfigError
from stepstream.keys import (
    RedisKeys,
    format_value,
    parse_series_field,
    series_field,
    step_window_name,
    time_window_name,
)


def test_every_per_run_key_carries_the_run_hash_tag() -> None:
    keys = RedisKeys("ss")
    for key in keys.run_keys("run-1", ["50steps", "10s"]):
        assert key.startswith("ss:{run-1}:")
    assert keys.window("run-1", "10s") == "ss:{run-1}:win:10s"
    assert len(set(keys.run_keys("run-1", ["50steps", "10s"]))) == 8


@pytest.mark.parametrize("bad", ["a}b", "a{b", "a:b", "a b", "", "x*"])
def test_run_ids_that_could_reach_other_keys_are_rejected(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid run id"):
        RedisKeys().latest(bad)


def test_series_field_round_trip_and_rejects_separator() -> None:
    assert parse_series_field(series_field(3, "grad_norm/layer.1")) == (3, "grad_norm/layer.1")
    with pytest.raises(ConfigError):
        series_field(0, "a|b")


def test_window_names() -> None:
    assert step_window_name(50) == "50steps"
    assert time_window_name(10.0) == "10s"
    assert time_window_name(0.5) == "0.5s"


@pytest.mark.parametrize("value", [0.1, -3.0, 1e300, math.inf, -math.inf])
def test_format_value_reads_back(value: float) -> None:
    assert float(format_value(value)) == value


def test_format_nan_reads_back() -> None:
    assert format_value(math.nan) == "NaN"
    assert math.isnan(float(format_value(math.nan)))
