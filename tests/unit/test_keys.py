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
    assert len(set(keys.run_keys("run-1", ["50steps", "10s"]))) == 14  # 12 per-run keys + 2 windows


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


# --- raw series keys, validation of every variable part, cluster slots ---------------

from redis.crc import key_slot  # noqa: E402

from stepstream.keys import (  # noqa: E402
    SERIES_KINDS,
    parse_series_member,
    series_member,
    text_series_member,
)


def test_run_keys_of_every_kind_share_one_cluster_slot() -> None:
    keys = RedisKeys()
    run = "llama-7b.run_3"
    every = keys.run_keys(run, ["50steps", "10s", "60s"])
    every += keys.series_keys(run, 0, "loss") + keys.series_keys(run, 63, "grad_norm/layer.1:w")
    slots = {key_slot(k.encode()) for k in every}
    assert slots == {key_slot(run.encode())}
    # The hash tag is the run id, so a different run lands elsewhere (for these two ids).
    assert key_slot(keys.meta("other-run").encode()) != key_slot(keys.meta(run).encode())


def test_series_keys_are_disjoint_per_kind_rank_and_metric() -> None:
    keys = RedisKeys()
    made = [
        keys.series("r", kind, rank, metric)
        for kind in SERIES_KINDS
        for rank in (0, 1, 10)
        for metric in ("loss", "loss:1", "1|x".replace("|", "_"))
    ]
    made += keys.run_keys("r", ["50steps"])
    assert len(made) == len(set(made))
    assert keys.series("r", "step", 1, "a/b") == "stepstream:{r}:series:step:1|a/b"


@pytest.mark.parametrize("bad", ["a|b", "a b", "", "{x}", "x}", "é"])
def test_metric_names_that_could_reach_other_keys_are_rejected(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid metric name"):
        RedisKeys().series("r", "step", 0, bad)


@pytest.mark.parametrize("bad", ["50steps}", "a:b", "a b", "", "{r}"])
def test_window_names_are_validated(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid window name"):
        RedisKeys().window("r", bad)


@pytest.mark.parametrize("bad", ["a{b", "}", "a b", ""])
def test_key_prefixes_with_braces_are_rejected(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid key prefix"):
        RedisKeys(bad)


@pytest.mark.parametrize("rank", [-1, True, 1.5, "0"])
def test_ranks_must_be_non_negative_ints(rank: object) -> None:
    with pytest.raises(ConfigError, match="invalid rank"):
        series_field(rank, "loss")  # type: ignore[arg-type]


def test_series_member_round_trip_including_non_finite() -> None:
    assert parse_series_member(series_member(7, 3, 0.25)) == (7, 3, 0.25)
    assert parse_series_member(series_member(None, 0, math.inf)) == (None, 0, math.inf)
    step, seq, value = parse_series_member(series_member(1, 2, math.nan))
    assert (step, seq) == (1, 2) and math.isnan(value)
    assert text_series_member(7, 3, 0.25) == "7|3|0.25"
    assert parse_series_member("7|3|0.25") == parse_series_member(b"7|3|0.25") == (7, 3, 0.25)


def test_run_pattern_matches_only_that_run() -> None:
    assert RedisKeys().run_pattern("r-1") == "stepstream:{r-1}:*"
