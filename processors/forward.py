"""What stage 1 sends onward, sized to fit a Kafka message: the batches that passed its
checks (to the validated topic), window updates and rank summaries.

Pure: no faust or Kafka. The sink's raw-series writer reads only the validated topic, so
what reaches Redis passed the same checks as what reached the windows (one validation
point), and only stage 1 dead-letters bad telemetry. A forwarded batch keeps the run, rank,
incarnation and seq numbers of the original, so the sink's writes stay idempotent; metrics
the cardinality cap refused are left out, and a batch whose JSON would exceed the message
limit is split into consecutive parts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgspec

from processors.windows import Summary
from stepstream.contract import (
    SCHEMA_VERSION,
    WINDOW_STATS_NUMBERS,
    Batch,
    RankSummary,
    Record,
    WindowStats,
)


def strip_metrics(batch: Batch, keep: Callable[[Record, str], bool]) -> Batch:
    """`batch` without the values for which `keep(record, metric)` is False."""
    if all(keep(r, m) for r in batch.records for m in r.values):
        return batch
    records: list[Record] = [
        r.model_copy(update={"values": {m: v for m, v in r.values.items() if keep(r, m)}})
        for r in batch.records
    ]
    return batch.model_copy(update={"records": records})


def merge_batches(batches: Sequence[Batch]) -> list[tuple[Batch, list[int]]]:
    """The batches of each publisher (run, rank, incarnation and identity) as one batch,
    records in arrival order, with the indexes of the batches merged into it: stage 1
    forwards one message per publisher per call, not one per input message (a send costs
    about as much as processing a small batch)."""
    groups: dict[tuple[str, int, str, int, str, int], tuple[Batch, list[int]]] = {}
    for index, batch in enumerate(batches):
        who = (batch.run, batch.rank, batch.incarnation, batch.world, batch.node, batch.pid)
        known = groups.get(who)
        if known is None:
            groups[who] = (batch.model_copy(update={"records": list(batch.records)}), [index])
        else:
            known[0].records.extend(batch.records)
            known[1].append(index)
    return list(groups.values())


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


#: Window stats as stage 1 holds them: the `Summary` it computed (no open flags, every
#: stat finite or None), else a `WindowStats`.
Stats = Summary | WindowStats


@dataclass(slots=True)
class StageUpdate:
    """A window update as stage 1 makes it: the fields of the contract's `WindowUpdate`,
    with each series' stats as the stage computed them (`Stats`). `to_bytes` writes the
    JSON a `WindowUpdate` reads, in one msgspec call: building and serializing a pydantic
    `WindowStats` per series per window was a third of stage 1's CPU."""

    run: str
    rank: int
    world: int = 1
    node: str = ""
    step: int | None = None
    t: float = 0.0
    latest: dict[str, float] = dataclasses.field(default_factory=dict)
    windows: dict[str, dict[str, Stats]] = dataclasses.field(default_factory=dict)
    status: str | None = None
    v: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        """The JSON of this update on the windows topic (a `WindowUpdate`)."""
        if not math.isfinite(sum(self.latest.values())):  # a NaN or an infinity somewhere
            latest: dict[str, Any] = {m: _json_float(v) for m, v in self.latest.items()}
            return _ENCODER.encode(dataclasses.replace(self, latest=latest))
        return _ENCODER.encode(self)


def _json_float(value: float) -> float | str:
    """A float as the contract's JSON carries it: non-finite ones as strings."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _encode_other(obj: Any) -> Any:
    """WindowStats (a series with open flags, or a non-finite stat) as its fields, with
    non-finite floats as strings as pydantic writes them."""
    if isinstance(obj, WindowStats):
        return {k: _json_float(v) if isinstance(v, float) else v for k, v in obj.__dict__.items()}
    raise TypeError(f"cannot encode {type(obj).__name__} in a window update")


_ENCODER = msgspec.json.Encoder(enc_hook=_encode_other)


#: A Summary's stats as a tuple, in the contract's order.
_SUMMARY_VALUES = attrgetter(*WINDOW_STATS_NUMBERS)


def is_plain(summary: Summary) -> bool:
    """True when `StageUpdate.to_bytes` may write `summary` as it is: every stat finite
    or None (JSON has no NaN; the contract writes non-finite floats as strings). A sum
    that overflows reads as not plain, which only costs the slower path."""
    return math.isfinite(sum(filter(None, _SUMMARY_VALUES(summary))))


def sized_update(update: StageUpdate, max_bytes: int) -> list[bytes]:
    """The JSON of a window update, split by metric into updates of at most `max_bytes`
    each (a rank with thousands of metrics makes one update megabytes long). The sink
    writes each metric's fields on their own, so parts add up to the whole."""
    data = update.to_bytes()
    if len(data) <= max_bytes:
        return [data]
    metrics = sorted(set(update.latest).union(*(set(w) for w in update.windows.values())))
    if len(metrics) <= 1:
        return [data]
    out: list[bytes] = []
    for part in (set(metrics[: len(metrics) // 2]), set(metrics[len(metrics) // 2 :])):
        piece = dataclasses.replace(
            update,
            latest={m: v for m, v in update.latest.items() if m in part},
            windows={
                name: {m: s for m, s in stats.items() if m in part}
                for name, stats in update.windows.items()
            },
        )
        out.extend(sized_update(piece, max_bytes))
    return out


def sized_summary(summary: RankSummary, max_bytes: int) -> list[bytes]:
    """The JSON of a rank summary, split by step into summaries of at most `max_bytes`
    each; the first part carries the record count and the non-finite points."""
    data = summary.to_bytes()
    if len(data) <= max_bytes or len(summary.steps) <= 1:
        return [data]
    half = len(summary.steps) // 2
    first = summary.model_copy(update={"steps": summary.steps[:half]})
    rest = summary.model_copy(update={"steps": summary.steps[half:], "records": 0, "nonfinite": []})
    return sized_summary(first, max_bytes) + sized_summary(rest, max_bytes)
