"""The background publisher with a recording stand-in for the Kafka producer."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from producers.identity import Identity
from producers.publisher import Publisher, to_float
from stepstream.contract import RecordKind, decode_batch
from stepstream.settings import Settings

IDENT = Identity(run="r", rank=1, world=2, local_rank=1, node="n")


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every publisher of these tests spools under the test's own directory."""
    monkeypatch.setenv("STEPSTREAM_SPOOL_DIR", str(tmp_path / "spool"))
    yield tmp_path / "spool"


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
    # The thread connects before its first drain: held in the factory, it drains nothing.
    pub = Publisher(IDENT, settings, producer_factory=slow_factory)
    try:
        for step in range(25):
            pub.enqueue(step, RecordKind.TRAIN, {"x": float(step)})
        assert pub.stats.dropped == 15
        assert [item[1] for item in pub._queue] == list(range(15, 25))
    finally:
        gate.set()
        pub.close(2)
    assert [r.step for r in records_of(producer)] == list(range(15, 25))


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


def test_known_names_with_values_that_are_not_floats_are_converted_or_skipped() -> None:
    """Once names are known, a record mixing floats, ints, a tensor-like and text takes the
    fast path: only the non-floats are converted, text is skipped and counted."""

    class Scalar:
        def item(self) -> float:
            return 2.5

    pub, producer = publisher()
    pub.enqueue(0, RecordKind.TRAIN, {"loss": 1.0, "acc": 0.5, "n": 3.0})
    assert pub.flush(5)
    pub.enqueue(1, RecordKind.TRAIN, {"loss": Scalar(), "acc": "text", "n": 4})
    pub.enqueue(2, RecordKind.TRAIN, {"loss": 0.25, "acc": 0.75, "n": 5.0})
    assert pub.flush(5)
    pub.close()
    assert [r.values for r in records_of(producer)] == [
        {"loss": 1.0, "acc": 0.5, "n": 3.0},
        {"loss": 2.5, "n": 4.0},
        {"loss": 0.25, "acc": 0.75, "n": 5.0},
    ]
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


class FakeFuture:
    """A kafka-python send future that the fake broker resolves at flush()."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.errbacks: list[Any] = []
        self.is_done = False
        self.ok = False

    def add_callback(self, fn: Any, *args: Any) -> None:
        self.callbacks.append((fn, args))

    def add_errback(self, fn: Any, *args: Any) -> None:
        self.errbacks.append((fn, args))

    def resolve(self, ok: bool) -> None:
        self.is_done, self.ok = True, ok
        for fn, args in self.callbacks if ok else self.errbacks:
            fn(*args, None if ok else ConnectionError("broker gone"))

    def succeeded(self) -> bool:
        return self.ok


class FlakyBroker:
    """Producers whose deliveries succeed or fail depending on `up`; keeps what arrived."""

    def __init__(self) -> None:
        self.up = True
        self.delivered: list[bytes] = []
        self.pending: list[tuple[FakeFuture, bytes]] = []
        self.lock = threading.Lock()

    def factory(self, settings: Settings) -> FlakyBroker:
        if not self.up:
            raise ConnectionError("no broker")
        return self

    def send(self, topic: str, key: bytes, value: bytes) -> FakeFuture:
        future = FakeFuture()
        with self.lock:
            self.pending.append((future, value))
        return future

    def flush(self, timeout: float | None = None) -> None:
        with self.lock:
            pending, self.pending = self.pending, []
        for future, value in pending:
            if self.up:
                self.delivered.append(value)
            future.resolve(self.up)

    def close(self, timeout: float | None = None) -> None:
        self.flush()

    def seqs(self) -> list[int]:
        return [r.seq for raw in self.delivered for r in decode_batch(raw).records]


def test_failed_deliveries_spool_and_replay_in_order(spool_dir: Path) -> None:
    broker = FlakyBroker()
    settings = Settings(flush_interval_s=0.02, spool_segment_bytes=2048)
    pub = Publisher(IDENT, settings, producer_factory=broker.factory)
    try:
        for step in range(50):
            pub.enqueue(step, RecordKind.TRAIN, {"x": float(step)})
        assert pub.flush(5)
        broker.up = False  # the broker goes away: in-flight and new batches fail
        for step in range(50, 400):
            pub.enqueue(step, RecordKind.TRAIN, {"x": float(step)})
            if step % 50 == 0:
                time.sleep(0.03)
        assert not pub.flush(0.5)
        assert pub.stats.spooled_records > 0
        assert list(spool_dir.rglob("*.spool"))
        broker.up = True
        assert pub.flush(10)
    finally:
        pub.close(5)
    seqs = broker.seqs()
    assert sorted(set(seqs)) == list(range(400))  # nothing lost
    assert seqs == sorted(seqs)  # replayed in order, before anything newer
    assert pub.stats.replayed_records == pub.stats.spooled_records
    assert not list(spool_dir.rglob("*.spool"))  # acknowledged segments are deleted


def test_next_incarnation_replays_what_the_last_one_spooled(spool_dir: Path) -> None:
    broker = FlakyBroker()
    broker.up = False
    settings = Settings(flush_interval_s=0.02, shutdown_timeout_s=0.5)
    first = Publisher(IDENT, settings, producer_factory=broker.factory)
    for step in range(20):
        first.enqueue(step, RecordKind.TRAIN, {"x": 1.0})
    first.close()
    assert first.stats.spooled_records == 20
    broker.up = True
    second = Publisher(IDENT, settings, producer_factory=broker.factory)
    try:
        assert second.flush(5)
    finally:
        second.close()
    batches = [decode_batch(raw) for raw in broker.delivered]
    assert [r.seq for b in batches for r in b.records] == list(range(20))
    assert {b.incarnation for b in batches} == {first.incarnation}


def test_deferred_values_and_bad_names() -> None:
    calls: list[str] = []

    class Stacked:
        def tolist(self) -> list[float]:
            calls.append(threading.current_thread().name)
            return [1.0, float("nan")]

    from producers.deferred import TensorValues

    pub, producer = publisher()
    pub.enqueue(3, RecordKind.GRAD, TensorValues(["a", "b"], Stacked()))
    pub.enqueue(4, RecordKind.TRAIN, {"ok": 1.0, "has|pipe": 2.0, "has space": 3.0})
    assert pub.flush(5)
    pub.close()
    first, second = records_of(producer)
    assert calls == ["stepstream-publisher"]
    assert first.values["a"] == 1.0 and first.values["b"] != first.values["b"]  # NaN kept
    assert second.values == {"ok": 1.0}
    assert pub.stats.skipped_values == 2


def test_counters_as_values() -> None:
    pub, _ = publisher(queue_size=3)
    pub.close()
    pub.stats.dropped, pub.stats.dropped_spool = 2, 5
    values = pub.stats.values()
    assert values["stepstream/dropped"] == 7.0
    assert values["stepstream/dropped_queue"] == 2.0
    assert values["stepstream/dropped_spool"] == 5.0


def test_persist_flush_returns_once_spooled_while_broker_away(spool_dir: Path) -> None:
    broker = FlakyBroker()
    broker.up = False
    pub = Publisher(IDENT, Settings(flush_interval_s=0.05), producer_factory=broker.factory)
    try:
        for step in range(10):
            pub.enqueue(step, RecordKind.TRAIN, {"x": 1.0})
        start = time.monotonic()
        assert not pub.flush(5, persist=True)  # the path SIGTERM and crashes take
        assert time.monotonic() - start < 2
        assert pub.stats.spooled_records == 10 and list(spool_dir.rglob("*.spool"))
    finally:
        pub.close(5)


def test_messages_stay_under_the_size_limit_and_keep_every_record_in_order() -> None:
    producer = RecordingProducer()
    settings = Settings(flush_interval_s=0.05, max_message_bytes=20_000)
    pub = Publisher(IDENT, settings, producer_factory=lambda s: producer)
    wide = {f"grad_norm/layer{i}": float(i) for i in range(40)}  # ~1.2 KB per record
    for step in range(200):
        pub.enqueue(step, RecordKind.TRAIN, wide)
    assert pub.flush(5)
    pub.close()
    sizes = [len(raw) for _, _, raw in producer.sent]
    assert max(sizes) <= 20_000 and sum(sizes) > 200_000
    records = records_of(producer)
    assert [r.seq for r in records] == list(range(200))
    assert all(r.values == wide for r in records)


def test_batch_encoding_decodes_to_what_pydantic_encodes() -> None:
    """The fast encoder's bytes decode to the same Batch as pydantic's, and a batch with
    a non-finite value keeps it (the contract's "NaN"/"Infinity" strings, never null)."""
    from pydantic_core import to_json

    from producers.publisher import encode_batch

    def batch(values: list[dict[str, float]]) -> dict[str, Any]:
        records = [
            {"seq": i, "t": 1.7e9 + i / 3, "step": i or None, "kind": "train", "values": v}
            | {"text": 'é\n"x"' if i else None}
            for i, v in enumerate(values)
        ]
        return {"v": 1, "run": "r", "rank": 1, "world": 2, "node": "n", "pid": 7,
                "incarnation": "abc", "records": records}  # fmt: skip

    finite = batch([{"loss": 0.1 + 0.2, "big": 1e300, "tiny": -5e-324}, {"n": 3.0}])
    raw = encode_batch(finite)
    assert decode_batch(raw) == decode_batch(to_json(finite, inf_nan_mode="strings"))
    nan = float("nan")
    for bad in (nan, math.inf, -math.inf):
        data = batch([{"loss": 1.0}, {"loss": bad, "ok": 2.0}])
        raw = encode_batch(data)
        value = decode_batch(raw).records[1].values["loss"]
        assert (math.isnan(value) and math.isnan(bad)) or value == bad
    # Finite values whose sum overflows still encode (by the slower path).
    assert decode_batch(encode_batch(batch([{"a": 1e308, "b": 1e308}]))).records[0].values == {
        "a": 1e308,
        "b": 1e308,
    }


def test_conversion_never_changes_the_callers_dict() -> None:
    """Values that need converting are converted in a copy: a dict the caller keeps (and
    logs again) still holds what the caller put there."""

    class Scalar:
        def item(self) -> float:
            return 2.5

    scalar = Scalar()
    values: dict[str, Any] = {"loss": scalar, "acc": 0.5, "n": 3}
    pub, producer = publisher()
    pub.enqueue(0, RecordKind.TRAIN, values)
    assert pub.flush(5)
    pub.enqueue(1, RecordKind.TRAIN, values)
    assert pub.flush(5)
    pub.close()
    assert values == {"loss": scalar, "acc": 0.5, "n": 3}
    assert [r.values for r in records_of(producer)] == [{"loss": 2.5, "acc": 0.5, "n": 3.0}] * 2


def test_tensor_like_values_are_read_by_the_encoder_and_non_finite_ones_kept() -> None:
    """After a first conversion teaches the publisher a tensor type, later records of it go
    to the encoder unconverted: finite values arrive as they are, a NaN or infinite one as
    NaN/Infinity (never null), one that cannot be read is skipped and counted, and records
    without a step or text decode with none."""

    class Scalar:
        def __init__(self, value: Any) -> None:
            self.value = value

        def item(self) -> Any:
            if isinstance(self.value, Exception):
                raise self.value
            return self.value

    pub, producer = publisher()
    pub.enqueue(0, RecordKind.TRAIN, {"loss": Scalar(0.5), "acc": 0.25})
    assert pub.flush(5)
    assert Scalar in pub._direct
    pub.enqueue(1, RecordKind.TRAIN, {"loss": Scalar(1.5), "acc": 0.5})
    pub.enqueue(2, RecordKind.TRAIN, {"loss": Scalar(3), "acc": 1})
    assert pub.flush(5)
    pub.enqueue(3, RecordKind.TRAIN, {"loss": Scalar(math.inf), "acc": 0.5})
    pub.enqueue(4, RecordKind.TRAIN, {"loss": Scalar(float("nan")), "acc": 0.5})
    pub.enqueue(None, RecordKind.TRAIN, {"loss": Scalar(RuntimeError("2 elements")), "acc": 2.0})
    assert pub.flush(5)
    pub.close()
    records = records_of(producer)
    assert [r.values for r in records[:4]] == [
        {"loss": 0.5, "acc": 0.25},
        {"loss": 1.5, "acc": 0.5},
        {"loss": 3.0, "acc": 1.0},
        {"loss": math.inf, "acc": 0.5},
    ]
    assert math.isnan(records[4].values["loss"])
    assert records[5].values == {"acc": 2.0} and records[5].step is None
    assert all(r.text is None for r in records)
    assert pub.stats.skipped_values == 1
    # The batch with the finite tensor-like values took the one-call encoder (no NaN
    # strings, no step or text nulls): its raw bytes hold the values as numbers.
    assert b'"loss":1.5' in producer.sent[1][2] and b"null" not in producer.sent[1][2]


@pytest.mark.parametrize(
    ("kind", "values", "text"),
    [
        (RecordKind.TRAIN, {"loss": math.nan}, None),
        (RecordKind.TRAIN, {"loss": 1.0, "grad_norm": math.inf}, None),
        (RecordKind.LOG, {"log/level": 50.0}, "Traceback ..."),
        (RecordKind.HEARTBEAT, {"heartbeat/status": 3.0}, "crashed"),
    ],
)
def test_records_wait_for_the_interval_and_urgent_ones_go_at_once(
    kind: RecordKind, values: dict[str, float], text: str | None
) -> None:
    producer = RecordingProducer()
    pub = Publisher(IDENT, Settings(flush_interval_s=30.0), producer_factory=lambda s: producer)
    try:
        pub.enqueue(None, RecordKind.TRAIN, {"loss": 1.0})
        deadline = time.monotonic() + 5
        while not producer.sent and time.monotonic() < deadline:
            time.sleep(0.02)
        # The rank's first records go at once (it is known before it can die)...
        assert [r.step for r in records_of(producer)] == [None]
        producer.sent.clear()
        pub.enqueue(0, RecordKind.TRAIN, {"loss": 1.0})
        time.sleep(0.6)  # ...then, three drains: an ordinary record waits for its interval
        assert producer.sent == []
        pub.enqueue(1, kind, values, text)
        deadline = time.monotonic() + 5
        while not producer.sent and time.monotonic() < deadline:
            time.sleep(0.02)
        # Both go in one message, the held record first, well before the 30 s interval.
        assert len(producer.sent) == 1
        assert [r.step for r in records_of(producer)] == [0, 1]
    finally:
        pub.close()
