"""The background publisher: the training thread enqueues, a daemon thread sends.

Shape borrowed from batch span processors: a bounded deque the caller appends to without
locks or I/O, one daemon thread that drains it into one Kafka message per flush, drop-oldest
with a counter at the bound, `flush(timeout)` and `close(timeout)`, and no producer ever in
a forked child (kafka-python is not fork-safe).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from producers.identity import Identity
from stepstream.contract import Batch, Record, RecordKind
from stepstream.settings import Settings
from stepstream.topics import Topics

log = logging.getLogger(__name__)

MAX_RECORDS_PER_MESSAGE = 500

# (event time, step, kind, values): converted to a Record off the training thread.
Pending = tuple[float, int | None, RecordKind, Mapping[str, object]]


def to_float(value: object) -> float | None:
    """A float from a Python number or a 0-d tensor (``.item()`` runs here, off the hot
    path); None for anything else."""
    if isinstance(value, float):
        return value
    if isinstance(value, (int, bool)):
        return float(value)
    item = getattr(value, "item", None)
    if item is not None:
        try:
            return float(item())
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


@dataclass
class PublisherStats:
    """Counters a user (and the publisher's own telemetry) can read."""

    enqueued: int = 0
    dropped: int = 0
    sent_records: int = 0
    sent_messages: int = 0
    send_errors: int = 0
    skipped_values: int = 0
    extra: dict[str, int] = field(default_factory=dict)


ProducerFactory = Callable[[Settings], object]


def kafka_producer(settings: Settings) -> object:
    """A kafka-python producer for one publisher (built on the publisher's thread)."""
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        client_id="stepstream-publisher",
        linger_ms=5,
        compression_type="gzip",
        max_block_ms=1000,
        **settings.kafka_client_config(),
    )


class Publisher:
    """Batches one rank's records into one telemetry message per flush interval."""

    def __init__(
        self,
        identity: Identity,
        settings: Settings,
        producer_factory: ProducerFactory = kafka_producer,
    ) -> None:
        self.identity = identity
        self.settings = settings
        self.topic = Topics(settings.topic_prefix).telemetry
        self.incarnation = uuid.uuid4().hex[:12]
        self.stats = PublisherStats()
        self._queue: deque[Pending] = deque()
        self._maxsize = settings.queue_size
        self._seq = 0
        self._producer_factory = producer_factory
        self._producer: object | None = None
        self._unsent: list[Record] = []
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._stop = threading.Event()
        self._disabled = False
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="stepstream-publisher", daemon=True)
        os.register_at_fork(after_in_child=self._after_fork)
        self._thread.start()

    def _after_fork(self) -> None:
        # A DataLoader worker (or any fork) inherits this object without its thread; it
        # must never build a Kafka client, so it stays silent.
        self._disabled = True
        self._queue = deque()

    def enqueue(self, step: int | None, kind: RecordKind, values: Mapping[str, object]) -> None:
        """Append one record; never blocks, never does I/O. At the bound, drops the oldest."""
        if self._disabled:
            return
        queue = self._queue
        if len(queue) >= self._maxsize:
            queue.popleft()
            self.stats.dropped += 1
        queue.append((time.time(), step, kind, values))
        self.stats.enqueued += 1

    def _drain(self) -> list[Record]:
        records: list[Record] = []
        queue = self._queue
        while queue:
            t, step, kind, values = queue.popleft()
            floats: dict[str, float] = {}
            for name, value in values.items():
                number = to_float(value)
                if number is None:
                    self.stats.skipped_values += 1
                else:
                    floats[name] = number
            records.append(
                Record.model_construct(seq=self._seq, t=t, step=step, kind=kind, values=floats, text=None)
            )
            self._seq += 1
        return records

    def _ensure_producer(self) -> object | None:
        if self._producer is None:
            try:
                self._producer = self._producer_factory(self.settings)
            except Exception as exc:  # broker away: keep records, try again next flush
                self.stats.send_errors += 1
                log.debug("stepstream producer not ready: %s", exc)
        return self._producer

    def _send(self, records: list[Record]) -> bool:
        producer = self._ensure_producer()
        if producer is None:
            return False
        ident = self.identity
        try:
            for start in range(0, len(records), MAX_RECORDS_PER_MESSAGE):
                chunk = records[start : start + MAX_RECORDS_PER_MESSAGE]
                batch = Batch.model_construct(
                    v=1,
                    run=ident.run,
                    rank=ident.rank,
                    world=ident.world,
                    node=ident.node,
                    pid=self._pid,
                    incarnation=self.incarnation,
                    records=chunk,
                )
                producer.send(self.topic, key=batch.key, value=batch.to_bytes())  # type: ignore[attr-defined]
                self.stats.sent_messages += 1
                self.stats.sent_records += len(chunk)
        except Exception as exc:
            self.stats.send_errors += 1
            log.debug("stepstream send failed: %s", exc)
            return False
        return True

    def _cycle(self) -> None:
        records = self._unsent + self._drain()
        self._unsent = []
        if records and not self._send(records):
            # Keep the newest up to the queue bound; older ones are counted as dropped.
            overflow = len(records) - self._maxsize
            if overflow > 0:
                self.stats.dropped += overflow
                records = records[overflow:]
            self._unsent = records

    def _run(self) -> None:
        interval = self.settings.flush_interval_s
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            self._cycle()
            if not self._queue and not self._unsent:
                self._idle.set()
        self._cycle()
        if self._producer is not None:
            try:
                self._producer.flush(timeout=5)  # type: ignore[attr-defined]
                self._producer.close(timeout=5)  # type: ignore[attr-defined]
            except Exception as exc:
                log.debug("stepstream producer close failed: %s", exc)

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything enqueued so far; True if it was handed to Kafka in time."""
        if self._disabled or not self._thread.is_alive():
            return not self._queue
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._idle.clear()
            self._wake.set()
            if self._idle.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                break
        producer = self._producer
        if producer is None or self._unsent or self._queue:
            return False
        try:
            producer.flush(timeout=max(0.1, deadline - time.monotonic()))  # type: ignore[attr-defined]
        except Exception:
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush and stop the thread; records still unsent after `timeout` are dropped."""
        if self._disabled:
            return
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._disabled = True
