"""The serving SDK: a served model's predictions, and the outcomes that come later.

from producers import serving
pm = serving.init("ctr-model", version="v7")
pm.reference(features={"age": ages, "country": countries}, scores=scores)  # optional
pm.log_prediction("req-123", features={"age": 31, "country": "DE"}, score=0.82,
                  prediction=1, segment={"country": "DE"})
pm.log_outcome("req-123", label=1)          # any process, minutes to days later
pm.close()

Every call only appends to a bounded in-process queue: the training SDK's publisher
(`producers.publisher.Publisher`) sends from its own thread, spools to disk while the
broker is away and replays later. Nothing here raises on bad input: a record the
pipeline cannot use (a bad id, a NaN score, too many features) is dead-lettered there
with its reason, and counted in `stats`.
"""

from __future__ import annotations

import atexit
import math
import socket
import time
import weakref
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from producers.identity import Identity
from producers.publisher import (
    MAX_RECORDS_PER_MESSAGE,
    ProducerFactory,
    Publisher,
    PublisherStats,
    kafka_producer,
)
from producers.spool import Frame
from stepstream.contract import SCHEMA_VERSION, RecordKind
from stepstream.serving_contract import check_model, check_version, prediction_partition
from stepstream.settings import Settings
from stepstream.topics import Topics

_LOG = RecordKind.LOG
#: Share of the message limit a reference may take (the rest: envelope and slack).
_REFERENCE_SHARE = 0.6
#: JSON bytes budgeted per reference value.
_BYTES_PER_VALUE = 24


def _finite_or_text(value: Any) -> Any:
    """A non-finite float as the contract's string (orjson would write null)."""
    if type(value) is float and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return value


def _partition_key(record: Mapping[str, Any], partitions: int) -> tuple[int, bytes]:
    pid = record.get("id")
    if isinstance(pid, str):
        return prediction_partition(pid, partitions), pid.encode()
    return 0, b"reference" if pid is None else str(pid).encode()


class ServingPublisher(Publisher):
    """The publisher, sending serving records to the serving topic in messages that each
    hold the records of one partition, keyed by one of their prediction ids."""

    def __init__(
        self,
        identity: Identity,
        settings: Settings,
        model: str,
        version: str,
        producer_factory: ProducerFactory = kafka_producer,
    ) -> None:
        # Set before the base starts its thread, which reads them.
        self._serving_topic = Topics(settings.topic_prefix).serving
        self.model = model
        self.version = version
        super().__init__(identity, settings, producer_factory)

    @property
    def topic(self) -> str:
        """The serving topic (the base class's telemetry topic is not used)."""
        return self._serving_topic

    @topic.setter
    def topic(self, value: str) -> None:
        pass  # the base names the telemetry topic; serving records go to the serving topic

    def _drain(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        popleft = self._queue.popleft
        while True:
            try:
                item = popleft()
            except IndexError:
                break
            records.append(item[3])  # type: ignore[arg-type]  # always a dict here
        self._seq += len(records)
        return records

    def _frames(self, records: list[dict[str, Any]]) -> list[Frame]:
        groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
        keys: dict[int, bytes] = {}
        partitions = self.settings.partitions
        for record in records:
            partition, key = _partition_key(record, partitions)
            groups[partition].append(record)
            keys.setdefault(partition, key)
        frames: list[Frame] = []
        for partition, group in groups.items():
            for start in range(0, len(group), MAX_RECORDS_PER_MESSAGE):
                self._encode_serving(
                    keys[partition], group[start : start + MAX_RECORDS_PER_MESSAGE], frames
                )
        return frames

    def _encode_serving(self, key: bytes, chunk: list[dict[str, Any]], frames: list[Frame]) -> None:
        batch = {
            "v": SCHEMA_VERSION,
            "model": self.model,
            "version": self.version,
            "incarnation": self.incarnation,
            "records": chunk,
        }
        # Anything orjson cannot write (an odd id, a custom object) goes as its text:
        # the pipeline judges it, the caller never sees an exception.
        value = orjson.dumps(batch, default=str)
        if len(value) > self.settings.max_message_bytes and len(chunk) > 1:
            half = len(chunk) // 2
            self._encode_serving(key, chunk[:half], frames)
            self._encode_serving(key, chunk[half:], frames)
            return
        frames.append(Frame(key, value, len(chunk)))


def _values(values: Any) -> list[Any]:
    """A list of plain Python values from a sequence or array (numpy arrays included)."""
    tolist = getattr(values, "tolist", None)
    out = tolist() if callable(tolist) else list(values)
    return [_finite_or_text(v) if isinstance(v, float) else v for v in out]


def _subsample(values: list[Any], size: int) -> list[Any]:
    if len(values) <= size:
        return values
    step = len(values) / size  # evenly spaced: deterministic, keeps the order's mix
    return [values[int(i * step)] for i in range(size)]


def _close(publisher: Publisher, timeout: float) -> None:
    publisher.close(timeout)


class PredictionMonitor:
    """Publishes one serving process's predictions and outcomes of one model version."""

    def __init__(
        self,
        model: str,
        version: str,
        settings: Settings,
        producer_factory: ProducerFactory = kafka_producer,
    ) -> None:
        self.model = check_model(model)
        self.version = check_version(version)
        self.settings = settings
        identity = Identity(
            run=f"serving.{model}",
            rank=0,
            world=1,
            local_rank=0,
            node=settings.node or socket.gethostname(),
        )
        self._publisher = ServingPublisher(identity, settings, model, version, producer_factory)
        self._enqueue = self._publisher.enqueue
        self._finalizer = weakref.finalize(
            self, _close, self._publisher, settings.shutdown_timeout_s
        )
        atexit.register(self._finalizer)

    @property
    def stats(self) -> PublisherStats:
        """Counters: enqueued, dropped, sent, spooled and replayed records."""
        return self._publisher.stats

    def reference(
        self,
        features: Mapping[str, Sequence[Any]] | None = None,
        scores: Sequence[float] | None = None,
    ) -> None:
        """Give the reference drift is measured against (training or validation data):
        values per feature and the model's scores on them. Optional: without one, the
        first window of traffic is the reference. Large references are subsampled evenly
        to fit one message (``STEPSTREAM_SERVING_REFERENCE_SIZE`` values per feature at
        most)."""
        columns = {name: _values(v) for name, v in (features or {}).items()}
        score_values = _values(scores) if scores is not None else []
        budget = int(self.settings.max_message_bytes * _REFERENCE_SHARE / _BYTES_PER_VALUE)
        per_column = max(1, min(self.settings.serving_reference_size, budget // (len(columns) + 1)))
        record = {
            "kind": "reference",
            "t": _now(),
            "features": {k: _subsample(v, per_column) for k, v in columns.items()},
            "scores": _subsample(score_values, per_column),
        }
        self._enqueue(None, _LOG, record)

    def log_prediction(
        self,
        prediction_id: str,
        features: Mapping[str, Any] | None = None,
        score: float | None = None,
        prediction: float | None = None,
        segment: Mapping[str, str] | None = None,
        t: float | None = None,
    ) -> None:
        """Record one served prediction. Never blocks or raises on its inputs."""
        record: dict[str, Any] = {
            "kind": "prediction",
            "id": prediction_id,
            "t": _now() if t is None else t,
            "features": features if features is not None else {},
        }
        if score is not None:
            record["score"] = _finite_or_text(score)
        if prediction is not None:
            record["prediction"] = _finite_or_text(prediction)
        if segment:
            record["segment"] = segment
        self._enqueue(None, _LOG, record)

    def log_outcome(
        self,
        prediction_id: str,
        label: float | None = None,
        clicked: bool | None = None,
        converted: bool | None = None,
        t: float | None = None,
    ) -> None:
        """Record what happened after the prediction `prediction_id` (from any process,
        at any time within ``STEPSTREAM_SERVING_LABEL_HORIZON_S``): its ground-truth
        `label`, and/or user feedback (`clicked`, `converted`)."""
        record: dict[str, Any] = {
            "kind": "outcome",
            "id": prediction_id,
            "t": _now() if t is None else t,
        }
        if label is not None:
            record["label"] = _finite_or_text(label)
        if clicked is not None:
            record["clicked"] = clicked
        if converted is not None:
            record["converted"] = converted
        self._enqueue(None, _LOG, record)

    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver everything logged so far; True if Kafka acknowledged it in time."""
        return self._publisher.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to `timeout`) and stop; what is undelivered stays in the spool."""
        self._publisher.close(timeout if timeout is not None else self.settings.shutdown_timeout_s)
        self._finalizer.detach()

    def __enter__(self) -> PredictionMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_now = time.time


def init(
    model: str,
    version: str = "default",
    *,
    settings: Settings | None = None,
    **overrides: Any,
) -> PredictionMonitor:
    """Start monitoring a served model in this process (one per serving process; it never
    blocks). `overrides` are Settings fields; they beat ``STEPSTREAM_*`` variables, which
    beat the running local stack and the defaults. ConfigError for a bad model name,
    version or setting."""
    from stepstream.stack import load_settings

    resolved = load_settings(**overrides) if settings is None else settings.replace(**overrides)
    return PredictionMonitor(model, version, resolved)
