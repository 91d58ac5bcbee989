"""What stage 1 forwards to the validated topic: the batches that passed its checks.

Pure: no faust or Kafka. The sink's raw-series writer reads only the validated topic, so
what reaches Redis passed the same checks as what reached the windows (one validation
point), and only stage 1 dead-letters bad telemetry. A forwarded batch keeps the run, rank,
incarnation and seq numbers of the original, so the sink's writes stay idempotent; metrics
the cardinality cap refused are left out, and a batch whose JSON would exceed the message
limit is split into consecutive parts.
"""

from __future__ import annotations

from collections.abc import Callable

from stepstream.contract import Batch, Record


def strip_metrics(batch: Batch, keep: Callable[[Record, str], bool]) -> Batch:
    """`batch` without the values for which `keep(record, metric)` is False."""
    if all(keep(r, m) for r in batch.records for m in r.values):
        return batch
    records: list[Record] = [
        r.model_copy(update={"values": {m: v for m, v in r.values.items() if keep(r, m)}})
        for r in batch.records
    ]
    return batch.model_copy(update={"records": records})


def forward_messages(batch: Batch, max_bytes: int) -> list[bytes]:
    """The JSON of `batch`, split by records into parts of at most `max_bytes` each (a
    single record larger than that is returned whole: sending it is the caller's risk)."""
    data = batch.to_bytes()
    if len(data) <= max_bytes or len(batch.records) <= 1:
        return [data]
    half = len(batch.records) // 2
    return forward_messages(
        batch.model_copy(update={"records": batch.records[:half]}), max_bytes
    ) + forward_messages(batch.model_copy(update={"records": batch.records[half:]}), max_bytes)
