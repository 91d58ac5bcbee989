"""docs/wire-format.md is enough to publish telemetry: a second, independent Kafka client
(confluent-kafka, librdkafka) follows only that page, and the values come back from Redis
through the public reader, NaN and Infinity included."""

from __future__ import annotations

import json
import math
import time
import uuid

import pytest
from confluent_kafka import Producer

from query.reader import MetricsReader
from stepstream.settings import Settings

from .conftest import wait_for

pytestmark = pytest.mark.integration

STEPS = 40


def wire(value: float) -> float | str:
    """A float as the wire format says: non-finite values as strings."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def loss(step: int) -> float:
    return {10: math.nan, 20: math.inf, 21: -math.inf}.get(step, 1.0 / (step + 1))


def test_a_librdkafka_producer_following_the_wire_format_doc_lands_in_redis(
    live_settings: Settings, reader: MetricsReader, run_id: str
) -> None:
    rank, incarnation = 2, uuid.uuid4().hex
    producer = Producer(
        {"bootstrap.servers": live_settings.kafka_bootstrap, "compression.type": "lz4"}
    )
    topic = f"{live_settings.topic_prefix}.telemetry"
    errors: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    now = time.time()
    for start in range(0, STEPS, 10):  # four messages of ten records
        records = [
            {"seq": s, "t": now + s * 0.01, "step": s, "values": {"loss": wire(loss(s))}}
            for s in range(start, start + 10)
        ]
        value = {
            "v": 1,
            "run": run_id,
            "rank": rank,
            "world": 4,
            "node": "librdkafka-host",
            "incarnation": incarnation,
            "records": records,
            "my_own_field": {"ignored": True},  # unknown fields are ignored
        }
        producer.produce(
            topic,
            key=f"{run_id}:{rank}",
            value=json.dumps(value, allow_nan=False),
            on_delivery=delivered,
        )
    assert producer.flush(15) == 0 and errors == []

    def complete() -> list | None:
        points = reader.series(run_id, "loss", rank=rank).points
        return points if len(points) == STEPS else None

    points = wait_for(complete, timeout=30)
    assert [p.step for p in points] == list(range(STEPS))
    for p in points:
        want = loss(p.step or 0)
        if math.isnan(want):
            assert math.isnan(p.value)
        else:
            assert p.value == want, (p.step, p.value, want)
    assert reader.latest(run_id)[(rank, "loss")] == loss(STEPS - 1)
    (meta,) = [r for r in reader.ranks(run_id) if r.rank == rank]
    assert (meta.step, meta.node) == (STEPS - 1, "librdkafka-host")
