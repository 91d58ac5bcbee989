"""The background publisher: the training thread enqueues, a daemon thread sends.

Shape borrowed from batch span processors: a bounded deque the caller appends to without
locks or I/O, one daemon thread that drains it into one Kafka message per flush interval,
drop-oldest with a counter at the bound, `flush(timeout)` and `close(timeout)`, and no
producer ever in a forked child (kafka-python is not fork-safe).

What Kafka cannot take goes to an on-disk spool (producers.spool): a batch whose send
future fails, or every batch while no producer can be built. While the spool holds
anything, new batches are appended behind it so replay keeps the original order; the
spool is replayed oldest segment first, and a segment is deleted once all of its frames
are acknowledged. After any delivery failure the Kafka producer is thrown away and built
afresh: a restarted broker does not know the old producer's idempotence state.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic_core import to_json

from producers.deferred import Deferred
from producers.identity import Identity
from producers.spool import Frame, Spool
from stepstream.contract import METRIC_NAME_PATTERN, SCHEMA_VERSION, RecordKind, series_key
from stepstream.errors import ConfigError
from stepstream.settings import Settings
from stepstream.topics import Topics

log = logging.getLogger(__name__)

MAX_RECORDS_PER_MESSAGE = 500
_NAME_OK = re.compile(METRIC_NAME_PATTERN).match
_KIND_VALUES = {kind: kind.value for kind in RecordKind}
_LOG = RecordKind.LOG
_YIELD_EVERY_S = 0.0005
#: How often the publisher drains the queue and looks for urgent records; it sends only
#: every `flush_interval_s` otherwise (a Kafka message costs a worker ~0.1 ms and the
#: rank ~1.4 ms of CPU whatever it holds: fewer, fuller messages).
_DRAIN_S = 0.2
#: Records held before a send is due anyway (a size bound on what waits).
_HOLD_RECORDS = 20_000
#: Heartbeat texts that must not wait: a rank's last words.
_URGENT_STATUS = frozenset({"closing", "crashed"})

Values = Mapping[str, object] | Deferred
# (event time, step, kind, values, text): made a record off the training thread.
Pending = tuple[float, int | None, RecordKind, Values, str | None]


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


def _scalar(value: Any) -> float:
    """orjson's fallback for a value it cannot write (a 0-d tensor): its finite float.

    Anything else raises, which sends the whole batch to the careful path (conversion,
    skips counted, pydantic's "NaN"/"Infinity" strings)."""
    number = value.item()
    if type(number) is float and number - number == 0.0:
        return number
    if type(number) is int:
        return float(number)
    raise TypeError("not a finite number")


def encode_fast(batch: dict[str, Any]) -> bytes | None:
    """The JSON of one telemetry batch in one orjson call (about a third of pydantic's
    cost), or None when the batch needs `encode_batch` after its values are converted.

    Values may still be 0-d tensors: orjson hands them to `_scalar`. orjson writes a
    non-finite float as null where the contract wants "NaN"/"Infinity" (a NaN loss must
    arrive as NaN); the publisher's records carry no null fields (a missing step or text
    is left out), so a ``:null`` in the output is such a value (or a rare text holding
    ``:null``, which only costs the slower path).
    """
    try:
        value = orjson.dumps(batch, default=_scalar)
    except orjson.JSONEncodeError:  # a value to convert or skip, a text it refuses
        return None
    return None if b":null" in value else value


def encode_batch(batch: dict[str, Any]) -> bytes:
    """The JSON of a telemetry batch whose values are all floats (the contract's `Batch`
    as plain dicts): `encode_fast` when it can, else pydantic, which writes non-finite
    floats as the contract's "NaN"/"Infinity" strings."""
    return encode_fast(batch) or to_json(batch, inf_nan_mode="strings")


@dataclass
class PublisherStats:
    """Counters a user (and the publisher's own telemetry) can read."""

    enqueued: int = 0
    dropped: int = 0
    sent_records: int = 0
    sent_messages: int = 0
    send_errors: int = 0
    skipped_values: int = 0
    spooled_records: int = 0
    replayed_records: int = 0
    dropped_spool: int = 0
    spool_bytes: int = 0
    queue_depth: int = 0
    #: SDK parts that failed on the training thread and turned themselves off.
    sdk_errors: int = 0

    def values(self) -> dict[str, float]:
        """The counters as record values named ``stepstream/<counter>``.

        ``stepstream/dropped`` counts every record lost for good: queue overflow plus
        spool overflow.
        """
        return {
            "stepstream/enqueued": float(self.enqueued),
            "stepstream/dropped": float(self.dropped + self.dropped_spool),
            "stepstream/dropped_queue": float(self.dropped),
            "stepstream/dropped_spool": float(self.dropped_spool),
            "stepstream/sent": float(self.sent_records),
            "stepstream/send_errors": float(self.send_errors),
            "stepstream/skipped_values": float(self.skipped_values),
            "stepstream/spooled": float(self.spooled_records),
            "stepstream/replayed": float(self.replayed_records),
            "stepstream/spool_bytes": float(self.spool_bytes),
            "stepstream/queue_depth": float(self.queue_depth),
            "stepstream/sdk_errors": float(self.sdk_errors),
        }


ProducerFactory = Callable[[Settings], Any]


#: kafka-python's check of each codec's library, and the package that provides it.
_CODECS: dict[str, tuple[str, str]] = {
    "gzip": ("has_gzip", "the standard library"),
    "lz4": ("has_lz4", "lz4"),
    "snappy": ("has_snappy", "python-snappy"),
    "zstd": ("has_zstd", "zstandard"),
}


def check_producer_settings(settings: Settings) -> None:
    """Raise ConfigError now for settings kafka-python would refuse only once connected.

    KafkaProducer checks its codec after bootstrapping, on the publisher's thread, where a
    refusal would spool every batch forever with nothing but debug logs; the security
    settings and TLS files are checked as the clients will use them.
    """
    from kafka import codec

    from stepstream.kafka_security import ssl_context

    name = settings.kafka_compression
    if name != "none":
        check, package = _CODECS[name]
        if not getattr(codec, check)():
            raise ConfigError(
                f"kafka_compression={name} needs {package}: pip install {package}, or set "
                "STEPSTREAM_KAFKA_COMPRESSION=lz4"
            )
    ssl_context(settings)  # ConfigError naming the variable when TLS files do not load


def kafka_producer(settings: Settings) -> Any:
    """A kafka-python producer for one publisher (built on the publisher's thread).

    Bootstrap is bounded to 2 s so an absent broker costs the publisher thread little;
    an unacknowledged batch fails after `kafka_delivery_timeout_s` and is spooled.
    `check_producer_settings` has vetted `settings` when the publisher was created.
    """
    from kafka import KafkaProducer

    delivery_ms = int(settings.kafka_delivery_timeout_s * 1000)
    linger_ms = min(settings.kafka_linger_ms, delivery_ms // 4)
    compression = None if settings.kafka_compression == "none" else settings.kafka_compression
    return KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        client_id="stepstream-publisher",
        linger_ms=linger_ms,
        compression_type=compression,
        max_block_ms=1000,
        bootstrap_timeout_ms=2000,
        request_timeout_ms=max(500, delivery_ms - linger_ms - 100),
        delivery_timeout_ms=delivery_ms,
        # Nothing reads the client's own metrics; recording them cost ~10 % of the
        # sender thread's CPU per message.
        metrics_enabled=False,
        **settings.kafka_client_config(),
    )


def close_producer(producer: Any, timeout: float) -> None:
    """Close a kafka-python producer for good, also when its broker is gone.

    kafka-python's close() flushes first and raises on a flush timeout before it stops its
    network thread; then the thread is told to abort the pending batches (their futures
    fail, so their frames are spooled) and the close is repeated, which now succeeds.
    """
    try:
        producer.close(timeout=timeout)
        return
    except Exception as exc:
        log.debug("stepstream producer close timed out: %s", exc)
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(2.0)
    with contextlib.suppress(Exception):
        producer.close(timeout=0)


def _dir_lock(directory: Path) -> IO[bytes] | None:
    """An exclusive lock on a spool directory, or None if another process holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = (directory / ".lock").open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


class Publisher:
    """Batches one rank's records into one telemetry message per flush interval."""

    def __init__(
        self,
        identity: Identity,
        settings: Settings,
        producer_factory: ProducerFactory = kafka_producer,
    ) -> None:
        # Before any thread starts: a configuration Kafka would refuse fails the caller.
        check_producer_settings(settings)
        self.identity = identity
        self.settings = settings
        self.topic = Topics(settings.topic_prefix).telemetry
        self.incarnation = uuid.uuid4().hex[:12]
        self.stats = PublisherStats()
        self._key = series_key(identity.run, identity.rank)
        self._queue: deque[Pending] = deque()
        self._maxsize = settings.queue_size
        self._seq = 0
        self._producer_factory = producer_factory
        self._producer: Any = None
        self._broken = False
        self._next_connect = 0.0
        self._backoff = 0.25
        self._failed: deque[Frame] = deque()  # appended by kafka-python's threads
        self._spool: Spool | None = None
        self._spool_lock: IO[bytes] | None = None
        self._good_names: set[str] = set()
        # Value types orjson writes itself (float, int) or through `_scalar` (the 0-d
        # tensor types seen converting): records holding only these are not converted.
        self._direct: set[type] = {float, int}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._flush_done = threading.Event()
        self._flush_deadline: float | None = None
        self._flush_ok = False
        self._flush_persist = False
        #: Drained records waiting for their send (publisher thread only).
        self._held: list[dict[str, Any]] = []
        #: A drained record must go now: a non-finite value, an exception, last words.
        self._urgent = False
        #: Nothing sent yet: the first records go at once, so a rank that dies in its first
        #: seconds is known to the pipeline (as its run's world member) before it dies.
        self._announced = False
        self._last_send = time.monotonic()
        self._close_timeout = settings.shutdown_timeout_s
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

    @property
    def disabled(self) -> bool:
        """True in a forked child and after close: enqueue() does nothing."""
        return self._disabled

    def enqueue(
        self, step: int | None, kind: RecordKind, values: Values, text: str | None = None
    ) -> None:
        """Append one record; never blocks, never does I/O. At the bound, drops the oldest."""
        if self._disabled:
            return
        queue = self._queue
        if len(queue) >= self._maxsize:
            with contextlib.suppress(IndexError):  # the publisher may have drained it
                queue.popleft()
                self.stats.dropped += 1
        queue.append((time.time(), step, kind, values, text))
        self.stats.enqueued += 1

    # -- the publisher thread -------------------------------------------------------

    def _name_ok(self, name: str) -> bool:
        if name in self._good_names:
            return True
        if isinstance(name, str) and _NAME_OK(name):
            self._good_names.add(name)
            return True
        return False

    def _drain(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        append = records.append
        popleft = self._queue.popleft
        good = self._good_names
        direct = self._direct
        kinds = _KIND_VALUES
        seq = self._seq
        clock = time.perf_counter
        since = clock()
        urgent = False
        try:
            while True:
                try:
                    t, step, kind, values, text = popleft()
                except IndexError:
                    break
                if seq & 63 == 63 and clock() - since >= _YIELD_EVERY_S:
                    # Hand the GIL back now and then: a training thread coming out of a
                    # torch op must not wait for the whole drain. By time, not by count:
                    # a sleep(0) costs ~18 us of CPU, five of them per 0.2 s drain did not
                    # buy anything a drain shorter than a millisecond needs.
                    time.sleep(0)
                    since = clock()
                mapping: Mapping[str, object]
                if type(values) is dict:
                    mapping = values
                else:
                    resolve = getattr(values, "resolve", None)
                    if resolve is None:
                        mapping = values  # type: ignore[assignment]
                    else:
                        try:
                            mapping, resolved_text = resolve()
                        except Exception as exc:  # a bad tensor must not stop the publisher
                            self.stats.skipped_values += 1
                            log.debug("stepstream could not convert deferred values: %s", exc)
                            continue
                        text = text or resolved_text
                # Fast path: names seen before, value types checked at C speed and left
                # as they are (a loss tensor is read by the encoder); other records are
                # converted in a copy.
                floats: dict[str, Any]
                if type(mapping) is dict and good.issuperset(mapping):
                    if direct.issuperset(map(type, mapping.values())):
                        floats = mapping
                    else:
                        floats = self._converted(mapping)
                else:
                    floats = self._convert(mapping)
                if not urgent and (kind is _LOG or (text in _URGENT_STATUS)):
                    urgent = True
                if not urgent and floats:
                    try:  # one C call a record; NaN or inf anywhere makes the sum non-finite
                        total = math.fsum(floats.values())
                        urgent = total - total != 0.0
                    except (OverflowError, ValueError):  # inf and -inf together
                        urgent = True
                    except Exception:  # a value fsum cannot read: the encoder will
                        pass
                # No null fields: a null in the encoded batch then means a non-finite
                # value (see `encode_fast`).
                record = {"seq": seq, "t": t, "kind": kinds[kind], "values": floats}
                if step is not None:
                    record["step"] = step
                if text is not None:
                    record["text"] = text
                append(record)
                seq += 1
        finally:
            self._seq = seq
            if urgent:
                self._urgent = True
        return records

    def _converted(self, values: dict[str, Any]) -> dict[str, Any]:
        """A copy of `values` (names known good) with the values that are not floats
        converted; those that are not numbers dropped and counted."""
        floats = dict(values)
        for name, value in values.items():
            kind = type(value)
            if kind is not float:
                number = to_float(value)
                if number is None:
                    self.stats.skipped_values += 1
                    del floats[name]
                else:
                    floats[name] = number
                    self._learn(kind, value)
        return floats

    def _learn(self, kind: type, value: object) -> None:
        """Let later values of `kind` (a tensor type that converted) reach the encoder."""
        if kind is not bool and kind not in self._direct and hasattr(value, "item"):
            self._direct.add(kind)

    def _convert(self, values: Mapping[str, object]) -> dict[str, float]:
        floats: dict[str, float] = {}
        good = self._good_names
        for name, value in values.items():
            kind = type(value)
            number = value if isinstance(value, float) and kind is float else to_float(value)
            if number is None or (name not in good and not self._name_ok(name)):
                self.stats.skipped_values += 1
            else:
                floats[name] = number
                if kind is not float:
                    self._learn(kind, value)
        return floats

    def _frames(self, records: list[dict[str, Any]]) -> list[Frame]:
        frames: list[Frame] = []
        for start in range(0, len(records), MAX_RECORDS_PER_MESSAGE):
            self._encode(records[start : start + MAX_RECORDS_PER_MESSAGE], frames)
        return frames

    def _encode(self, chunk: list[dict[str, Any]], frames: list[Frame]) -> None:
        """Append the frame of `chunk`, split in halves while its JSON is over the
        message limit (``STEPSTREAM_MAX_MESSAGE_BYTES``; larger messages are refused)."""
        ident = self.identity
        batch = {
            "v": SCHEMA_VERSION,
            "run": ident.run,
            "rank": ident.rank,
            "world": ident.world,
            "node": ident.node,
            "pid": self._pid,
            "incarnation": self.incarnation,
            "records": chunk,
        }
        value = encode_fast(batch)
        if value is None:  # a value to convert or skip, or a non-finite one
            for record in chunk:
                record["values"] = self._convert(record["values"])
            value = encode_batch(batch)
        if len(value) > self.settings.max_message_bytes and len(chunk) > 1:
            half = len(chunk) // 2
            self._encode(chunk[:half], frames)
            self._encode(chunk[half:], frames)
            return
        frames.append(Frame(self._key, value, len(chunk)))

    def _ensure_producer(self) -> Any:
        if self._producer is None and time.monotonic() >= self._next_connect:
            try:
                self._producer = self._producer_factory(self.settings)
                self._backoff = 0.25
            except Exception as exc:  # broker away: spool, and try again later
                self.stats.send_errors += 1
                self._next_connect = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, 5.0)
                log.debug("stepstream producer not ready: %s", exc)
        return self._producer

    def _on_ack(self, frame: Frame, _metadata: object = None) -> None:
        self.stats.sent_records += frame.records
        self.stats.sent_messages += 1

    def _on_fail(self, frame: Frame, exc: BaseException) -> None:
        self._failed.append(frame)
        self._broken = True
        log.debug("stepstream delivery failed: %s", exc)

    def _send(self, frames: list[Frame]) -> list[Frame]:
        """Send frames with delivery callbacks; return those that could not be handed over."""
        producer = self._ensure_producer()
        if producer is None:
            return frames
        for i, frame in enumerate(frames):
            try:
                future = producer.send(self.topic, key=frame.key, value=frame.value)
            except Exception as exc:  # metadata unavailable within max_block_ms, ...
                self.stats.send_errors += 1
                self._broken = True
                log.debug("stepstream send failed: %s", exc)
                return frames[i:]
            if future is None:  # a producer without futures: handed over is delivered
                self._on_ack(frame)
            else:
                future.add_callback(self._on_ack, frame)
                future.add_errback(self._on_fail, frame)
        return []

    def _open_spool(self) -> Spool | None:
        if self._spool is None:
            root = self.settings.resolved_spool_dir() / self.identity.run
            directory = root / f"rank-{self.identity.rank}"
            try:
                self._spool_lock = _dir_lock(directory)
                if self._spool_lock is None:  # another live process owns it
                    directory = root / f"rank-{self.identity.rank}.{self.incarnation}"
                    self._spool_lock = _dir_lock(directory)
                self._spool = Spool(
                    directory, self.settings.spool_max_bytes, self.settings.spool_segment_bytes
                )
            except OSError as exc:
                log.warning("stepstream spool %s unusable, records may be lost: %s", directory, exc)
                return None
        return self._spool

    def _to_spool(self, frames: list[Frame]) -> None:
        if not frames:
            return
        spool = self._open_spool()
        records = sum(f.records for f in frames)
        if spool is None:
            self.stats.dropped_spool += records
            return
        try:
            spool.append(frames)
            self.stats.spooled_records += records
        except OSError as exc:
            self.stats.dropped_spool += records
            log.warning("stepstream spool write failed, %d records lost: %s", records, exc)
        self.stats.dropped_spool = max(self.stats.dropped_spool, spool.dropped_records)
        self.stats.spool_bytes = spool.size

    def _absorb_failures(self) -> None:
        failed = []
        while self._failed:
            failed.append(self._failed.popleft())
        if failed:
            self.stats.send_errors += 1
            self._to_spool(failed)

    def _drop_producer(self, timeout: float = 0.0) -> None:
        producer, self._producer = self._producer, None
        self._broken = False
        if producer is not None:
            close_producer(producer, timeout)  # aborted batches fail: their errbacks spool them
        self._absorb_failures()
        self._next_connect = time.monotonic() + self._backoff

    def _spool_pending(self) -> bool:
        return self._spool is not None and bool(self._spool)

    def _replay(self, deadline: float) -> None:
        """Send sealed spool segments oldest first; delete each once fully acknowledged."""
        spool = self._spool
        producer = self._ensure_producer()
        if spool is None or producer is None:
            return
        spool.seal()
        for path in spool.sealed():
            frames = spool.read(path)
            futures = []
            try:
                for frame in frames:
                    futures.append(producer.send(self.topic, key=frame.key, value=frame.value))
                wait = min(self.settings.kafka_delivery_timeout_s, deadline - time.monotonic())
                producer.flush(timeout=max(0.1, wait))
            except Exception as exc:
                log.debug("stepstream replay failed: %s", exc)
                self._broken = True
                break
            if not all(f is None or (f.is_done and f.succeeded()) for f in futures):
                self._broken = True
                break
            replayed = sum(f.records for f in frames)
            self.stats.replayed_records += replayed
            self.stats.sent_records += replayed
            self.stats.sent_messages += len(frames)
            spool.remove(path)
            if time.monotonic() >= deadline:
                break
        self.stats.spool_bytes = spool.size
        if self._broken:
            self.stats.send_errors += 1
            self._drop_producer()

    def _cycle(self, deadline: float, due_only: bool = False) -> None:
        """Drain the queue and send what it held. `due_only`: hold the records instead
        unless a send is due: `flush_interval_s` passed since the last, an urgent record
        came, too many are held, or the spool has batches to replay."""
        records = self._drain()
        if self._held:
            records = self._held + records
            self._held = []
        now = time.monotonic()
        if (
            due_only
            and not self._urgent
            and (self._announced or not records)
            and now - self._last_send < self.settings.flush_interval_s
            and len(records) < _HOLD_RECORDS
            and not self._spool_pending()
        ):
            self._held = records
            self.stats.queue_depth = len(self._queue) + len(records)
            return
        self._urgent = False
        self._last_send = now
        self._announced = self._announced or bool(records)
        frames = self._frames(records)
        self._absorb_failures()
        if self._broken:
            self._drop_producer()
        if frames and not self._spool_pending():
            self._ensure_producer()
        if self._spool_pending() or self._producer is None:
            self._to_spool(frames)
            if self._spool_pending():
                self._replay(deadline)
        else:
            self._to_spool(self._send(frames))
        self.stats.queue_depth = len(self._queue)

    def _flush_cycle(self, deadline: float, persist: bool = False) -> bool:
        while True:
            if self._flush_once(deadline):
                return True
            if persist and self._producer is None:
                return False  # no broker now: what is left is safe in the spool
            # Not delivered yet (broker away, or reconnect backing off): retry until the
            # deadline, waking when the next connection attempt is due.
            now = time.monotonic()
            if now >= deadline - 0.05:
                return False
            pause = max(0.05, self._next_connect - now) if self._producer is None else 0.05
            time.sleep(min(pause, deadline - now))

    def _flush_once(self, deadline: float) -> bool:
        self._cycle(deadline)
        producer = self._producer
        if producer is not None:
            try:
                producer.flush(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                log.debug("stepstream flush failed: %s", exc)
                self._broken = True
            self._absorb_failures()
            if self._broken:
                self._drop_producer()
            elif self._spool_pending():
                self._replay(deadline)
        return not self._queue and not self._failed and not self._spool_pending()

    def _run(self) -> None:
        interval = min(_DRAIN_S, self.settings.flush_interval_s)
        directory = self.settings.resolved_spool_dir() / self.identity.run
        if (directory / f"rank-{self.identity.rank}").is_dir():
            self._open_spool()  # a previous incarnation left batches: replay them
        self._ensure_producer()  # connect now, in the background, not at the first flush
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            try:
                requested = self._flush_deadline
                if requested is not None:
                    self._flush_ok = self._flush_cycle(requested, self._flush_persist)
                    self._flush_deadline = None
                    self._flush_done.set()
                else:
                    self._cycle(time.monotonic() + 2.0, due_only=True)
            except Exception as exc:  # never let a bug kill telemetry for the whole run
                log.warning("stepstream publisher cycle failed: %s", exc, exc_info=True)
        try:
            # At exit, records in the spool are safe: wait for the broker no longer.
            self._flush_cycle(time.monotonic() + self._close_timeout, persist=True)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            close_producer(producer, min(1.0, self._close_timeout))
        self._absorb_failures()
        # What is still queued now would be lost: keep it for the next incarnation.
        self._to_spool(self._frames(self._drain()))
        if self._spool is not None:
            self._spool.close()
        if self._spool_lock is not None:
            self._spool_lock.close()
        self._flush_done.set()

    # -- the caller's side ---------------------------------------------------------

    def flush(self, timeout: float = 10.0, persist: bool = False) -> bool:
        """Deliver everything enqueued so far; True if Kafka acknowledged all of it (the
        spool included) within `timeout`. With `persist`, return as soon as what is left
        is in the spool while no broker answers (for exits). Never call it from the
        publisher thread."""
        if self._disabled or not self._thread.is_alive():
            return False
        if threading.current_thread() is self._thread:
            return False
        with self._flush_lock:
            self._flush_done.clear()
            self._flush_persist = persist
            self._flush_deadline = time.monotonic() + timeout
            self._wake.set()
            if not self._flush_done.wait(timeout + 1.0):
                return False
            return self._flush_ok

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to `timeout`, default `shutdown_timeout_s`) and stop the thread.
        What is still undelivered then stays in the spool for the next incarnation."""
        if self._disabled:
            return
        self._disabled = True
        if timeout is not None:
            self._close_timeout = timeout
        self._stop.set()
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(self._close_timeout + 3.0)
