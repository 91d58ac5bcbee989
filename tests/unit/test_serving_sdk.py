"""The serving SDK (producers.serving): records grouped by the partition of their prediction
id, non-finite values as the contract's strings, nothing raised on hostile input, the
stage reads back what it wrote."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.serving.stage import parse_records
from producers.serving import PredictionMonitor
from stepstream.errors import ConfigError
from stepstream.serving_contract import decode_serving, prediction_partition
from stepstream.settings import Settings
from stepstream.topics import Topics


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.lock = threading.Lock()

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        with self.lock:
            self.sent.append((topic, key, value))

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[tuple[PredictionMonitor, RecordingProducer]]:
    producer = RecordingProducer()
    settings = Settings(spool_dir=tmp_path / "spool", flush_interval_s=0.05, partitions=4)
    pm = PredictionMonitor("ctr-model", "v7", settings, producer_factory=lambda s: producer)
    yield pm, producer
    pm.close(2)


def test_each_message_holds_one_partition_keyed_by_one_of_its_ids(
    monitor: tuple[PredictionMonitor, RecordingProducer],
) -> None:
    pm, producer = monitor
    for i in range(200):
        pm.log_prediction(f"req-{i}", features={"age": i, "country": "DE"}, score=0.5)
        pm.log_outcome(f"req-{i}", label=i % 2)
    assert pm.flush(5)
    seen = 0
    for topic, key, value in producer.sent:
        assert topic == Topics().serving
        envelope, records = decode_serving(value)
        assert (envelope.model, envelope.version) == ("ctr-model", "v7")
        partition = prediction_partition(key.decode(), 4)
        assert {prediction_partition(r["id"], 4) for r in records} == {partition}
        seen += len(records)
    assert seen == 400


def test_hostile_values_never_raise_and_arrive_as_refusable_records(
    monitor: tuple[PredictionMonitor, RecordingProducer],
) -> None:
    pm, producer = monitor
    started = time.perf_counter()
    pm.log_prediction("ok", features={"x": math.nan}, score=math.nan)
    pm.log_prediction("bad id!", features={"x": object()}, score=0.1)  # type: ignore[dict-item]
    pm.log_outcome("ok", label=math.inf)
    assert time.perf_counter() - started < 0.05  # only enqueued
    assert pm.flush(5)
    records = [r for _, _, v in producer.sent for r in decode_serving(v)[1]]
    parsed = parse_records("ctr-model", "v7", records)
    assert sorted(r.reason for r in parsed.rejected) == [
        "bad_id",
        "non_finite_label",
        "non_finite_score",
    ]


def test_a_large_reference_is_subsampled_to_fit_one_message(
    monitor: tuple[PredictionMonitor, RecordingProducer],
) -> None:
    pm, producer = monitor
    pm.reference(
        features={f"f{i}": [float(v) for v in range(20_000)] for i in range(20)},
        scores=[0.5] * 20_000,
    )
    assert pm.flush(5)
    (value,) = [v for _, _, v in producer.sent]
    assert len(value) < pm.settings.max_message_bytes
    parsed = parse_records("ctr-model", "v7", decode_serving(value)[1])
    (reference,) = parsed.references
    assert 100 < len(reference.features["f0"]) <= 10_000


def test_bad_names_are_config_errors(tmp_path: Path) -> None:
    settings = Settings(spool_dir=tmp_path)
    with pytest.raises(ConfigError, match="model name"):
        PredictionMonitor("bad model", "v1", settings, producer_factory=lambda s: None)
    with pytest.raises(ConfigError, match="version"):
        PredictionMonitor("m", "v 1", settings, producer_factory=lambda s: None)


class AwayBroker:
    """Refuses to connect while `up` is False; keeps (topic, key, value) once up."""

    def __init__(self) -> None:
        self.up = False
        self.sent: list[tuple[str, bytes, bytes]] = []

    def factory(self, settings: Settings) -> AwayBroker:
        if not self.up:
            raise ConnectionError("no broker")
        return self

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


def test_records_logged_while_the_broker_is_away_are_spooled_and_replayed_to_serving(
    tmp_path: Path,
) -> None:
    broker = AwayBroker()
    settings = Settings(
        spool_dir=tmp_path / "spool", flush_interval_s=0.02, shutdown_timeout_s=0.5, partitions=4
    )
    first = PredictionMonitor("ctr-model", "v7", settings, producer_factory=broker.factory)
    for i in range(30):
        first.log_prediction(f"req-{i}", features={"age": i}, score=0.5)
    first.close()
    assert first.stats.spooled_records == 30 and not broker.sent
    broker.up = True
    second = PredictionMonitor("ctr-model", "v7", settings, producer_factory=broker.factory)
    try:
        assert second.flush(5)
    finally:
        second.close(2)
    assert {topic for topic, _, _ in broker.sent} == {Topics().serving}
    ids = sorted(r["id"] for _, _, v in broker.sent for r in decode_serving(v)[1])
    assert ids == sorted(f"req-{i}" for i in range(30))
    for _, key, value in broker.sent:  # the spooled frames kept their partition keys
        partition = prediction_partition(key.decode(), 4)
        assert {prediction_partition(r["id"], 4) for r in decode_serving(value)[1]} == {partition}
