"""Binary series members (stepstream.keys) and their bulk decoding (query.reader), against
the text members earlier releases wrote, without Redis."""

from __future__ import annotations

import math
import random
import struct

import numpy as np
import pytest
import redis

from query.reader import NO_STEP, MetricsReader, _member_columns, _step_columns
from stepstream.errors import ConfigError
from stepstream.keys import (
    SERIES_MEMBER_SIZE,
    is_packed_member,
    parse_series_member,
    series_member,
    text_series_member,
)

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
PAYLOAD_NAN = struct.unpack(">d", bytes.fromhex("7ff8000000c0ffee"))[0]


def bits(value: float) -> bytes:
    return struct.pack(">d", value)


@pytest.mark.parametrize(
    ("step", "seq", "value"),
    [
        (7, 3, 0.25),
        (None, 0, math.inf),
        (0, 0, -math.inf),
        (1, 2, math.nan),
        (5, 9, PAYLOAD_NAN),
        (12, 1, -0.0),
        (INT64_MAX, INT64_MAX, 5e-324),
        (None, -1, 1.7976931348623157e308),
        (-5, INT64_MIN, -1e-300),
        (INT64_MIN + 1, 4, 1.0),
    ],
)
def test_a_member_reads_back_bit_for_bit(step: int | None, seq: int, value: float) -> None:
    member = series_member(step, seq, value)
    assert is_packed_member(member) and len(member) == SERIES_MEMBER_SIZE
    got_step, got_seq, got_value = parse_series_member(member)
    assert (got_step, got_seq) == (step, seq)
    assert bits(got_value) == bits(value)
    # The same point always makes the same bytes: a replayed ZADD is a no-op.
    assert series_member(step, seq, value) == member
    # The bulk decoder agrees with the one-member parse, NaN payloads included.
    steps, values = _member_columns([member])
    assert steps.tolist() == [NO_STEP if step is None else step]
    assert bits(values.tolist()[0]) == bits(value)


@pytest.mark.parametrize(
    ("step", "seq"), [(2**63, 1), (2**70, 1), (INT64_MIN, 1), (3, 2**63), (3, -(2**63) - 1)]
)
def test_numbers_outside_int64_are_stored_as_text_and_read_back(step: int, seq: int) -> None:
    member = series_member(step, seq, 0.5)
    assert not is_packed_member(member)
    assert member == text_series_member(step, seq, 0.5).encode()
    assert parse_series_member(member) == (step, seq, 0.5)


def test_points_of_one_step_sort_by_seq_as_redis_orders_equal_scores() -> None:
    seqs = [0, 1, 9, 10, 255, 256, 2**40, INT64_MAX, -1, INT64_MIN]
    members = [series_member(4, s, 1.0) for s in seqs]
    assert [parse_series_member(m)[1] for m in sorted(members)] == sorted(seqs)
    steps = [0, 1, 255, 256, 2**33]
    assert sorted(series_member(s, 0, 1.0) for s in steps) == [
        series_member(s, 0, 1.0) for s in steps
    ]


def reference(members: list[bytes]) -> tuple[list[int], list[bytes]]:
    """Steps and value bits by the one-member parse, the reference."""
    parsed = [parse_series_member(m) for m in members]
    return [NO_STEP if s is None else s for s, _, _ in parsed], [bits(v) for _, _, v in parsed]


def points(n: int, seed: int) -> list[tuple[int, int, float]]:
    rng = random.Random(seed)
    specials = [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1e16, 1 / 3]
    values = specials + [rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-300, 300) for _ in range(n)]
    return [(step, step * 7 + 1, v) for step, v in enumerate(values)]


def test_binary_text_and_mixed_ranges_decode_as_the_reference_parser() -> None:
    pts = points(3000, seed=3)
    binary = [series_member(*p) for p in pts]
    text = [text_series_member(*p).encode() for p in pts]
    rng = random.Random(4)
    # After an upgrade one sorted set holds both (points written before and after it).
    mixed = [b if rng.random() < 0.5 else t for b, t in zip(binary, text, strict=True)]
    mixed_runs = text[:1000] + binary[1000:]  # text, then binary: the usual upgrade shape
    for members in (binary, text, mixed, mixed_runs, binary[:1] + text[1:2], text[:1]):
        steps, values = _member_columns(members)
        want_steps, want_bits = reference(members)
        assert steps.tolist() == want_steps
        assert [bits(v) for v in values.tolist()] == want_bits
        assert _step_columns(members)[0] == want_steps
    steps, values = _member_columns([])
    assert steps.size == 0 and values.size == 0


def test_text_members_from_a_decoding_client_and_points_without_step_decode() -> None:
    text = [text_series_member(s, q, v) for s, q, v in points(20, seed=5)]
    steps, values = _member_columns(text)  # type: ignore[arg-type]
    assert steps.tolist() == reference([t.encode() for t in text])[0]
    stepless = [text_series_member(None, 3, 1.5).encode(), series_member(None, 4, 2.5)]
    steps, values = _member_columns(stepless)
    assert steps.tolist() == [NO_STEP, NO_STEP] and values.tolist() == [1.5, 2.5]


def test_a_text_member_of_the_binary_length_is_not_taken_for_binary() -> None:
    text = text_series_member(123456, 7890, 0.12345678901).encode()
    assert len(text) == SERIES_MEMBER_SIZE and not is_packed_member(text)
    members = [series_member(1, 1, 2.0), text, series_member(123457, 1, 3.0)]
    steps, values = _member_columns(members)
    assert steps.tolist() == [1, 123456, 123457]
    assert values.tolist() == [2.0, 0.12345678901, 3.0]
    assert np.isfinite(values).all()


def test_a_point_stored_in_both_formats_across_the_upgrade_reads_once() -> None:
    # The sink replays its uncommitted range after the upgrade: those points exist as
    # text (old release) and binary (new); equal scores put the binary one first.
    members = [
        series_member(1, 10, 0.5),
        text_series_member(1, 10, 0.5).encode(),
        text_series_member(2, 11, 0.25).encode(),
        series_member(3, 12, 1.5),
    ]
    steps, values = _member_columns(members)
    assert steps.tolist() == [1, 2, 3] and values.tolist() == [0.5, 0.25, 1.5]


def test_a_reader_over_a_decoding_client_is_refused_with_what_to_do() -> None:
    decoding = redis.Redis(decode_responses=True)  # no connection is made
    with pytest.raises(ConfigError, match="decode_responses=False"):
        MetricsReader(decoding)
    MetricsReader(redis.Redis()).close()
