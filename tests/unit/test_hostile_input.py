"""Hostile input, the pure parts: decoding anything, bounded dead letters, time bounds,
the forward to the validated topic, and the guard that keeps agents alive."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import statistics
from typing import Any

import pytest

from processors.forward import forward_messages, strip_metrics
from processors.validation import Limits, check_batch
from stepstream.contract import (
    MAX_TEXT_CHARS,
    Batch,
    DeadLetter,
    Record,
    RecordKind,
    decode_batch,
)
from stepstream.deadletter import EXCERPT_BYTES, dead_letter, excerpt
from stepstream.errors import ContractError
from stepstream.faust_seam import guarded
from stepstream.messages import Message

NOW = 1_800_000_000.0


def good(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1,
        "run": "r1",
        "rank": 0,
        "records": [{"seq": 0, "t": NOW, "step": 1, "values": {"loss": 1.0}}],
    }
    doc.update(fields)
    return doc


def reason_of(raw: bytes | None, max_bytes: int | None = None) -> str:
    with pytest.raises(ContractError) as info:
        decode_batch(raw, max_bytes)
    return info.value.reason


# -- decoding: every input is a batch or a ContractError with a reason ----------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "null"),
        (b"", "empty"),
        (b"\xff\xfe\x00garbage", "undecodable"),
        (b"[" * 100_000, "undecodable"),  # deeper than any parser stack
        (b'{"v": 1, "run": "r1", "rank": 0, "records": ' + b"[" * 5000, "undecodable"),
        (b"null", "schema"),
        (b"[1, 2]", "schema"),
        (b'"a string"', "schema"),
        (json.dumps(good(rank="zero")).encode(), "schema"),
        (json.dumps({"v": 1, "rank": 0}).encode(), "schema"),  # missing run
        (json.dumps(good(v=2)).encode(), "version"),
        (json.dumps(good(v=0)).encode(), "version"),
        (json.dumps(good(v=-7)).encode(), "version"),
        (json.dumps({"v": 99, "whatever": [1]}).encode(), "version"),
        (json.dumps(good(run="{run}")).encode(), "schema"),
        (json.dumps(good(run="a:b")).encode(), "schema"),
        (json.dumps(good(run="<script>alert(1)</script>")).encode(), "schema"),
        (json.dumps(good(run="run\n")).encode(), "schema"),
        (json.dumps(good(node="n" * 10_000)).encode(), "schema"),
    ],
)
def test_every_hostile_value_gets_a_reason(raw: bytes | None, reason: str) -> None:
    assert reason_of(raw) == reason


def test_deep_but_valid_json_does_not_exhaust_the_stack_when_peeking_the_version() -> None:
    # Valid JSON nested beyond Python's recursion limit, but inside a wrong-typed field:
    # the version peek must not use a recursive parser that raises RecursionError.
    nested = "[" * 150 + "]" * 150
    raw = ('{"v": 1, "run": "r1", "rank": ' + nested + "}").encode()
    assert reason_of(raw) == "schema"


@pytest.mark.parametrize(
    "values",
    [{"a b": 1.0}, {"{x}": 1.0}, {"a|b": 1.0}, {"": 1.0}, {"loss": "high"}, {"x" * 201: 1.0}],
)
def test_hostile_metric_names_and_values_are_schema_errors(values: dict[str, Any]) -> None:
    doc = good()
    doc["records"][0]["values"] = values
    assert reason_of(json.dumps(doc).encode()) == "schema"


def test_oversized_messages_are_refused_before_parsing() -> None:
    raw = json.dumps(good()).encode()
    assert reason_of(raw + b" " * 2000, max_bytes=1024) == "too_large"
    assert decode_batch(raw, max_bytes=1024).run == "r1"


def test_text_is_bounded_but_markup_and_control_characters_are_data() -> None:
    doc = good()
    doc["records"][0].update(kind="log", text="x" * (MAX_TEXT_CHARS + 1))
    assert reason_of(json.dumps(doc).encode()) == "schema"
    doc["records"][0]["text"] = "<script>alert(1)</script>\x00\x1b[31m{run}:0"
    batch = decode_batch(json.dumps(doc).encode())
    assert batch.records[0].text == "<script>alert(1)</script>\x00\x1b[31m{run}:0"


# -- dead letters: bounded, encodable, traceable ---------------------------------------


def letter_of(value: bytes | None, key: bytes | None = b"k") -> DeadLetter:
    letter = dead_letter(
        stage="processor/series-stage",
        reason="undecodable",
        detail="bad",
        topic="p.telemetry",
        key=key,
        value=value,
        partition=3,
        offset=41,
        now=NOW,
    )
    # What goes on the topic reads back to the same letter.
    return DeadLetter.model_validate_json(letter.to_bytes())


def test_dead_letter_of_a_2mb_message_is_small_and_identifies_it() -> None:
    value = b'{"v": 1, "records": [' + b"1," * 1_000_000 + b"1]}"
    letter = letter_of(value)
    assert len(letter.to_bytes()) < 8192
    assert (letter.size, letter.sha256) == (len(value), hashlib.sha256(value).hexdigest())
    assert (letter.payload, letter.payload_encoding) == (value[:EXCERPT_BYTES].decode(), "utf-8")
    assert letter.truncated
    assert (letter.stage, letter.topic, letter.partition, letter.offset) == (
        "processor/series-stage",
        "p.telemetry",
        3,
        41,
    )


def test_non_utf8_and_control_bytes_travel_as_base64() -> None:
    for value in (b"\xff\xfe\x00\x01abc", b"ok\x00\x1b[2J", "é\u0085".encode()):
        letter = letter_of(value)
        assert letter.payload_encoding == "base64"
        assert base64.b64decode(letter.payload) == value
        assert not letter.truncated


def test_a_multibyte_character_cut_by_the_excerpt_stays_utf8() -> None:
    value = "é".encode() * EXCERPT_BYTES  # 2 bytes each: the limit cuts none, or one
    text, encoding, truncated = excerpt(b"a" + value)
    assert encoding == "utf-8" and truncated
    assert text == "a" + "é" * ((EXCERPT_BYTES - 1) // 2)


def test_tombstones_and_empty_values_are_told_apart() -> None:
    null, empty = letter_of(None, key=None), letter_of(b"")
    assert (null.size, null.sha256, null.payload, null.key) == (None, None, "", None)
    assert (empty.size, empty.sha256) == (0, hashlib.sha256(b"").hexdigest())


def test_huge_keys_and_details_are_bounded_and_escaped() -> None:
    letter = dead_letter(
        stage="s",
        reason="schema",
        detail="\x00" * 100_000,
        topic="t",
        key=b"\x1b" * 1_000_000,
        value=b"{}",
        partition=0,
        offset=0,
        now=NOW,
    )
    assert len(letter.to_bytes()) < 8192
    assert letter.key is not None and letter.key.startswith("\\x1b") and len(letter.key) <= 256
    assert letter.detail.startswith("\\x00") and len(letter.detail) <= 1024


# -- time bounds in both directions ----------------------------------------------------


def batch_at(*times: float, records: int = 1) -> Batch:
    return Batch(
        run="r1",
        rank=0,
        records=[Record(seq=i, t=t, step=i, values={"loss": 1.0}) for i, t in enumerate(times)],
    )


def test_records_far_in_the_past_or_future_are_rejected() -> None:
    limits = Limits(max_future_s=3600.0, max_past_s=86400.0)
    assert check_batch(batch_at(NOW - 86400 + 1, NOW + 3599), NOW, limits) is None
    past = check_batch(batch_at(NOW, NOW - 86401), NOW, limits)
    assert past is not None and past.reason == "past_time" and "seq 1" in past.detail
    future = check_batch(batch_at(NOW + 86400), NOW, limits)
    assert future is not None and future.reason == "future_time"
    absurd = check_batch(batch_at(math.inf), NOW, limits)
    assert absurd is not None and absurd.reason == "absurd_time"


def test_a_batch_over_the_record_limit_is_rejected() -> None:
    limits = Limits(max_records=20_000)
    rejection = check_batch(batch_at(*([NOW] * 20_001)), NOW, limits)
    assert rejection is not None and rejection.reason == "too_many_records"
    assert check_batch(batch_at(*([NOW] * 20_000)), NOW, limits) is None


# -- the forward to the validated topic ------------------------------------------------


def test_forward_splits_by_size_keeping_every_record_in_order() -> None:
    batch = batch_at(*[NOW + i for i in range(1000)])
    whole = batch.to_bytes()
    parts = forward_messages(batch, max_bytes=len(whole) // 5)
    assert len(parts) > 4 and all(len(p) <= len(whole) // 5 for p in parts)
    seqs = [r.seq for p in parts for r in decode_batch(p).records]
    assert seqs == list(range(1000))
    assert forward_messages(batch, max_bytes=len(whole)) == [whole]


def test_forward_strips_refused_metrics_but_keeps_other_kinds() -> None:
    batch = Batch(
        run="r1",
        rank=0,
        records=[
            Record(seq=0, t=NOW, step=0, values={"a": 1.0, "b": 2.0}),
            Record(seq=1, t=NOW, step=0, kind=RecordKind.LOG, values={"b": 40.0}, text="e"),
        ],
    )
    stripped = strip_metrics(batch, lambda r, m: r.kind == RecordKind.LOG or m == "a")
    assert [r.values for r in stripped.records] == [{"a": 1.0}, {"b": 40.0}]
    assert stripped.records[1].text == "e" and batch.records[0].values == {"a": 1.0, "b": 2.0}
    assert strip_metrics(batch, lambda r, m: True) is batch


# -- the guard around every agent's work -----------------------------------------------


def test_guard_dead_letters_only_the_message_that_fails_and_handles_the_rest() -> None:
    messages = [Message("t", 0, i, None, v) for i, v in enumerate((b"1", b"boom", b"3"))]
    handled: list[bytes | None] = []
    rejected: list[tuple[bytes | None, str, str, str]] = []

    async def handle(batch: list[Message]) -> None:
        if any(m.value == b"boom" for m in batch):
            raise KeyError("a bug")
        handled.extend(m.value for m in batch)

    async def reject(message: Message, stage: str, reason: str, detail: str) -> None:
        rejected.append((message.value, stage, reason, detail))

    asyncio.run(guarded(messages, handle, reject, "processor/x"))
    assert handled == [b"1", b"3"]
    assert rejected == [(b"boom", "processor/x", "internal_error", "KeyError: 'a bug'")]


def test_guard_does_nothing_extra_when_all_goes_well() -> None:
    calls: list[int] = []

    async def handle(batch: list[Message]) -> None:
        calls.append(len(batch))

    async def reject(*args: Any) -> None:
        raise AssertionError("nothing to reject")

    asyncio.run(guarded([Message("t", 0, 0, None, b"")] * 3, handle, reject, "s"))
    assert calls == [3]


def test_a_dead_letter_that_cannot_be_sent_is_logged_and_the_stage_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from stepstream.faust_seam import send_dead_letter

    class Refusing:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        async def send(self, *, key: bytes | None, value: bytes) -> None:
            if len(self.sent) == 0:
                self.sent.append(value)
                raise RuntimeError("MessageSizeTooLargeError")
            self.sent.append(value)

    topic = Refusing()
    message = Message("t", 1, 7, b"r:0", b"\xff" * 3_000_000)

    async def go() -> list[bool]:
        kw = {"stage": "processor/series-stage", "reason": "x", "detail": "d"}
        return [
            await send_dead_letter(topic, message, **kw),
            await send_dead_letter(topic, message, **kw),
        ]

    assert asyncio.run(go()) == [False, True]
    assert "could not dead-letter t[1]@7" in caplog.text
    letter = DeadLetter.model_validate_json(topic.sent[1])
    assert (letter.size, letter.offset, letter.payload_encoding) == (3_000_000, 7, "base64")
    assert len(topic.sent[1]) < 8192


def test_a_window_update_of_thousands_of_metrics_is_split_by_metric_and_adds_up() -> None:
    from processors.forward import StageUpdate, sized_update
    from stepstream.contract import WindowStats, WindowUpdate

    names = [f"m{i:04d}" for i in range(3000)]
    update = StageUpdate(
        run="r1",
        rank=2,
        step=9,
        t=NOW,
        latest={n: float(i) for i, n in enumerate(names)},
        windows={
            w: {n: WindowStats(count=1, mean=float(i)) for i, n in enumerate(names)}
            for w in ("50steps", "10s")
        },
    )
    whole = update.to_bytes()
    parts = [WindowUpdate.model_validate_json(p) for p in sized_update(update, len(whole) // 6)]
    assert len(parts) >= 6 and all(len(p.to_bytes()) <= len(whole) // 6 for p in parts)
    assert {(p.run, p.rank, p.step) for p in parts} == {("r1", 2, 9)}
    merged: dict[str, float] = {}
    for p in parts:
        assert not set(p.latest) & set(merged)  # each metric in one part only
        merged.update(p.latest)
        assert set(p.windows["10s"]) == set(p.latest) == set(p.windows["50steps"])
    assert merged == update.latest
    assert sized_update(update, len(whole)) == [whole]


def test_a_summary_of_many_steps_is_split_by_step_and_counts_records_once() -> None:
    from processors.forward import sized_summary
    from stepstream.contract import RankSummary, StepPoint

    summary = RankSummary(
        run="r1",
        rank=0,
        last_step=9999,
        records=10_000,
        steps=[StepPoint(step=s, t=NOW, values={"loss": 1.0}) for s in range(10_000)],
        nonfinite=[StepPoint(step=5, t=NOW, values={"loss": math.nan})],
    )
    whole = summary.to_bytes()
    parts = [RankSummary.model_validate_json(p) for p in sized_summary(summary, len(whole) // 4)]
    assert len(parts) >= 4 and all(len(p.to_bytes()) <= len(whole) // 4 for p in parts)
    assert [s.step for p in parts for s in p.steps] == list(range(10_000))
    assert sum(p.records for p in parts) == 10_000
    assert [len(p.nonfinite) for p in parts] == [1] + [0] * (len(parts) - 1)
    assert {p.last_step for p in parts} == {9999}


def test_forward_merges_the_batches_of_each_publisher_in_order() -> None:
    from processors.forward import merge_batches

    def b(run: str, inc: str, *seqs: int) -> Batch:
        records = [Record(seq=s, t=NOW, step=s, values={"x": float(s)}) for s in seqs]
        return Batch(run=run, rank=0, incarnation=inc, records=records)

    inputs = [b("r1", "a", 0, 1), b("r2", "a", 0), b("r1", "a", 2), b("r1", "new", 0)]
    merged = merge_batches(inputs)
    assert [(m.run, m.incarnation, [r.seq for r in m.records], ix) for m, ix in merged] == [
        ("r1", "a", [0, 1, 2], [0, 2]),
        ("r2", "a", [0], [1]),
        ("r1", "new", [0], [3]),
    ]
    assert [r.seq for r in inputs[0].records] == [0, 1]  # the inputs are left as they were


def test_values_whose_sum_leaves_the_float_range_do_not_crash_the_stages() -> None:
    # Finite values near the float maximum: math.fsum raised OverflowError on their sum,
    # and (v - mean) ** 2 on their deviations, which crashed stage 1 and stage 2.
    from processors.forward import StageUpdate
    from processors.run_stage import crossrank_stats
    from processors.series_stage import SeriesStage
    from stepstream.contract import WindowUpdate

    stage = SeriesStage([50], [10.0], clock=lambda: NOW, stats_interval_s=0.0)
    big = [1e308, 1.7e308, -1.7e308, 1e308]
    result = stage.process(
        Batch(
            run="r1",
            rank=0,
            incarnation="i",
            records=[Record(seq=i, t=NOW, step=i, values={"x": v}) for i, v in enumerate(big)],
        )
    )
    assert result.update is not None and not result.rejected
    assert isinstance(result.update, StageUpdate)
    stats = WindowUpdate.model_validate_json(result.update.to_bytes()).windows["50steps"]["x"]
    assert stats.count == 4 and stats.mean == pytest.approx(sum(v / 4 for v in big))
    # Finite, though the squares are not (statistics works in exact fractions).
    assert stats.std == pytest.approx(statistics.pstdev(big))
    across = crossrank_stats({0: {"x": 1e308}, 1: {"x": 1.7e308}})["x"]
    assert across.mean == pytest.approx(1.35e308) and across.std == pytest.approx(0.35e308)
