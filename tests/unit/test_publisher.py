"""The background publisher with a recording stand-in for the Kafka producer."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from producers.identity import Identity
from producers.publisher import Publisher, to_float
from stepstream.contract import RecordKind, decode_batch
from stepstream.settings import Settings

IDENT = Identity(run="r", rank=1, world=2, local_rank=1, node="n")


class RecordingProducer:
    """Keeps what would have gone to Kafka."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.threads: set[str] = set()

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.threads.add(threading.current_thread().name)
        self.sent.append((topic, key, value))

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


def publisher(queue_size: int = 1000, factory: Any = None) -> tuple[Publisher, RecordingProducer]:
    producer = RecordingProducer()
    settings = Settings(queue_size=queue_size, flush_interval_s=0.05)
    pub = Publisher(IDENT, settings, producer_factory=factory or (lambda s: producer))
    return pub, producer


def records_of(producer: RecordingProducer) -> list[Any]:
    return [r for _, _, raw in producer.sent for r in decode_batch(raw).records]


def test_records_arrive_in_order_with_contiguous_seq_in_few_messages() -> None:
    pub, producer = publisher()
    for step in range(300):
        pub.enqueue(step, RecordKind.TRAIN, {"loss": step * 0.5})
    assert pub.flush(5)
    pub.close()
    records = records_of(producer)
    assert [r.seq for r in records] == list(range(300))
    assert [r.values["loss"] for r in records] == [s * 0.5 for s in range(300)]
    assert len(producer.sent) < 30  # batched, not one message per record
    topic, key, _ = producer.sent[0]
    assert (topic, key) == ("stepstream.telemetry", b"r:1")


def test_bound_drops_oldest_and_counts() -> None:
    gate = threading.Event()
    producer = RecordingProducer()

    def slow_factory(settings: Settings) -> RecordingProducer:
        gate.wait(5)
        return producer

    settings = Settings(queue_size=10, flush_interval_s=0.05)
    pub = Publisher(IDENT, settings, producer_factory=slow_factory)
    pub._stop.set()  # hold the thread's loop so the queue fills before any drain
    pub._wake.set()
    pub._thread.join(5)
    for step in range(25):
        pub.enqueue(step, RecordKind.TRAIN, {"x": float(step)})
    assert pub.stats.dropped == 15
    assert [item[1] for item in pub._queue] == list(range(15, 25))
    gate.set()


def test_tensor_values_are_converted_on_the_publisher_thread() -> None:
    calls: list[str] = []

    class Scalar:
        def item(self) -> float:
            calls.append(threading.current_thread().name)
            return 2.5

    pub, producer = publisher()
    pub.enqueue(0, RecordKind.TRAIN, {"loss": Scalar(), "bad": "text"})
    assert pub.flush(5)
    pub.close()
    assert calls == ["stepstream-publisher"]
    assert records_of(producer)[0].values == {"loss": 2.5}
    assert pub.stats.skipped_values == 1


def test_broker_away_keeps_records_until_it_returns() -> None:
    attempts = []
    producer = RecordingProducer()

    def flaky(settings: Settings) -> RecordingProducer:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("no broker")
        return producer

    pub, _ = publisher(factory=flaky)
    for step in range(5):
        pub.enqueue(step, RecordKind.TRAIN, {"x": 1.0})
    deadline = time.monotonic() + 5
    while len(records_of(producer)) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    pub.close()
    assert [r.seq for r in records_of(producer)] == [0, 1, 2, 3, 4]
    assert pub.stats.send_errors == 2


def test_enqueue_is_cheap() -> None:
    pub, _ = publisher(queue_size=200_000)
    values = {"loss": 0.1, "acc": 0.9}
    start = time.perf_counter()
    for step in range(20_000):
        pub.enqueue(step, RecordKind.TRAIN, values)
    per_call_us = (time.perf_counter() - start) / 20_000 * 1e6
    pub.close()
    assert per_call_us < 50  # generous: a lock-free append, not I/O


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_never_publishes() -> None:
    pub, producer = publisher()
    pid = os.fork()
    if pid == 0:  # child: must stay silent and never build a producer
        pub.enqueue(0, RecordKind.TRAIN, {"x": 1.0})
        ok = len(pub._queue) == 0 and pub._disabled
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    pub.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert records_of(producer) == []


def test_to_float() -> None:
    assert to_float(3) == 3.0 and to_float(True) == 1.0 and to_float(None) is None
