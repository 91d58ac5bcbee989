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

from collections.abc import Callable, Sequence

from stepstream.contract import Batch, RankSummary, Record, WindowUpdate


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


def sized_update(update: WindowUpdate, max_bytes: int) -> list[bytes]:
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
        piece = update.model_copy(
            update={
                "latest": {m: v for m, v in update.latest.items() if m in part},
                "windows": {
                    name: {m: s for m, s in stats.items() if m in part}
                    for name, stats in update.windows.items()
                },
            }
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
