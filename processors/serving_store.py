"""The serving stage's Redis state: pending predictions (the label-join store), window
counts, label counts, sketches, references and reports.

Why Redis and not a faust Table: the join store must outlive a worker and hold up to the
label horizon (14 days) of predictions. faust's tables here would be memory tables
rebuilt from a changelog topic at every start (the embedded tansu broker has no
compaction, so that replay grows with every update), and a changelog topic must be
created with the source's partition count or faust crashes (PartitionsMismatch).
Redis already holds every other result, keeps a prediction once per id, and lets any
worker read it. Each batch is written per model in one MULTI/EXEC (a model's keys share
its hash tag): the pending records and the counts they caused land together or not at
all, so a batch replayed after a crash finds its predictions pending and its outcomes
joined, and adds nothing twice (see `processors.serving.join`).

This is the one stage outside `sinks/` that writes Redis: the join has to read what it
wrote before it can go on, which a sink behind a topic cannot give it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from processors.serving.join import Pending, lookup_days, pending_day
from processors.serving.metrics import FLOAT_COUNTERS, add_counts, performance
from processors.serving.reference import Reference
from processors.serving.stage import Effects, Parsed
from stepstream.keys import RedisKeys

#: The segment name of a model's total (the sum over its segments) in performance reports.
TOTAL = "__all__"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ServingStore:
    """Async reads and writes of the serving keys (redis-py asyncio client)."""

    def __init__(
        self,
        client: Any,
        keys: RedisKeys,
        *,
        retention_s: int,
        horizon_s: float,
        cluster: bool = False,
    ) -> None:
        self.client = client
        self.keys = keys
        self.retention_s = retention_s
        self.horizon_s = horizon_s
        self.cluster = cluster

    async def reference(self, model: str, version: str) -> Reference | None:
        """The stored reference of a version, if any."""
        raw = await self.client.get(self.keys.model_reference(model, version))
        return Reference.from_bytes(raw) if raw else None

    async def reference_bytes(self, model: str, version: str) -> bytes | None:
        """The stored reference of a version as stored (for change checks)."""
        raw = await self.client.get(self.keys.model_reference(model, version))
        return bytes(raw) if raw else None

    async def store_reference(
        self, model: str, version: str, reference: Reference, replace: bool
    ) -> Reference:
        """Store a reference (`replace`: a given one replaces any; else only if none is
        stored yet) and return the one in force."""
        key = self.keys.model_reference(model, version)
        if replace:
            await self.client.set(key, reference.to_bytes(), ex=self.retention_s)
            return reference
        stored = await self.client.set(key, reference.to_bytes(), nx=True, ex=self.retention_s)
        if stored:
            return reference
        raw = await self.client.get(key)
        return Reference.from_bytes(raw) if raw else reference

    async def segments(self, model: str, version: str) -> set[str]:
        """The segments of a version that have their own series."""
        members = await self.client.smembers(self.keys.model_segments(model, version))
        return {_text(m) for m in members}

    async def pending(
        self, model: str, parsed: Iterable[Parsed], now: float
    ) -> dict[str, Pending | None]:
        """The stored pending record of every prediction and outcome id in `parsed`."""
        # Each id is looked up only where it can be: a prediction under its own day, an
        # outcome under every day of the horizon before it.
        by_day: dict[int, set[str]] = {}
        for p in parsed:
            for record in p.predictions:
                by_day.setdefault(pending_day(record.t), set()).add(record.id)
            for outcome in p.outcomes:
                for day in lookup_days(outcome.t, self.horizon_s, now):
                    by_day.setdefault(day, set()).add(outcome.id)
        found: dict[str, Pending | None] = {}
        for ids in by_day.values():
            found.update(dict.fromkeys(ids))
        if not found:
            return found
        days = sorted(by_day, reverse=True)  # newest first: the newest record of an id wins
        orders = [sorted(by_day[day]) for day in days]
        pipe = self.client.pipeline(transaction=False)
        for day, order in zip(days, orders, strict=True):
            pipe.hmget(self.keys.model_pending(model, day), order)
        replies = await pipe.execute()
        for order, values in zip(orders, replies, strict=True):
            for pid, raw in zip(order, values, strict=True):
                if raw is not None and found[pid] is None:
                    found[pid] = Pending.from_bytes(raw)
        return found
        order = sorted(ids)
        ordered_days = sorted(days, reverse=True)
        pipe = self.client.pipeline(transaction=False)
        for day in ordered_days:
            pipe.hmget(self.keys.model_pending(model, day), order)
        replies = await pipe.execute()
        for values in replies:
            for pid, raw in zip(order, values, strict=True):
                if raw is not None and found[pid] is None:
                    found[pid] = Pending.from_bytes(raw)
        return found

    async def write(self, model: str, effects: Effects, now: float) -> None:
        """Write one batch's effects of `model` atomically (one MULTI/EXEC)."""
        keys = self.keys
        ttl = self.retention_s
        pipe = self.client.pipeline(transaction=not self.cluster)
        by_day: dict[int, dict[str, bytes]] = {}
        for pid, (day, record) in effects.pending.items():
            by_day.setdefault(day, {})[pid] = record.to_bytes()
        for day, mapping in by_day.items():
            key = keys.model_pending(model, day)
            pipe.hset(key, mapping=mapping)
            pipe.expireat(key, int((day + 2) * 86400 + self.horizon_s))
        for (version, start), counts in effects.counts.items():
            key = keys.model_counts(model, version, start)
            for name, value in counts.items():
                pipe.hincrby(key, name, value)
            pipe.expire(key, ttl)
        for (version, start), labels in effects.labels.items():
            for key in (
                keys.model_labels(model, version, start),
                keys.model_label_totals(model, version),
            ):
                for name, amount in labels.items():
                    if name.rsplit("|", 1)[1] in FLOAT_COUNTERS:
                        pipe.hincrbyfloat(key, name, amount)
                    else:
                        pipe.hincrby(key, name, int(amount))
                pipe.expire(key, ttl)
        windows: dict[str, set[int]] = {}
        for version, start in [*effects.counts, *effects.labels]:
            windows.setdefault(version, set()).add(start)
        for version, starts in windows.items():
            key = keys.model_windows(model, version)
            pipe.zadd(key, {str(s): s for s in starts})
            pipe.expire(key, ttl)
        if effects.outcomes:
            key = keys.model_outcomes(model)
            for name, value in effects.outcomes.items():
                pipe.hincrby(key, name, value)
            pipe.expire(key, ttl)
        if effects.versions:
            key = keys.model_versions(model)
            pipe.zadd(key, dict(effects.versions), gt=True)
            pipe.expire(key, ttl)
        for version, segment in effects.new_segments:
            key = keys.model_segments(model, version)
            pipe.sadd(key, segment)
            pipe.expire(key, ttl)
        await pipe.execute()
        if effects.versions:
            await self.client.zadd(keys.models(), {model: max(effects.versions.values())}, gt=True)

    async def refresh_performance(self, model: str, windows: Iterable[tuple[str, int]]) -> None:
        """Recompute the performance reports of the windows whose label counts changed."""
        windows = list(windows)
        for version in {v for v, _ in windows}:
            raw = await self.client.hgetall(self.keys.model_label_totals(model, version))
            await self._store_reports(model, version, "total", raw)
        for version, start in windows:
            raw = await self.client.hgetall(self.keys.model_labels(model, version, start))
            await self._store_reports(model, version, str(start), raw)

    async def _store_reports(self, model: str, version: str, start: str, raw: Any) -> None:
        reports = performance_reports(raw)
        key = self.keys.model_performance(model, version)
        mapping = {f"{start}|{seg}": _json(rep) for seg, rep in reports.items()}
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, self.retention_s)
        await pipe.execute()

    async def write_sketches(
        self, model: str, version: str, start: int, blobs: Mapping[str, bytes]
    ) -> None:
        """Store this worker's sketches of one window (`blobs`: field -> sketch)."""
        key = self.keys.model_sketches(model, version, start)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=dict(blobs))
        pipe.expire(key, self.retention_s)
        await pipe.execute()

    async def models(self, now: float | None = None) -> list[str]:
        """Models with a prediction within the retention."""
        since = (now or time.time()) - self.retention_s
        names = await self.client.zrangebyscore(self.keys.models(), since, "+inf")
        return [_text(n) for n in names]

    async def versions(self, model: str) -> list[str]:
        """Versions of a model."""
        return [_text(v) for v in await self.client.zrange(self.keys.model_versions(model), 0, -1)]

    async def windows(self, model: str, version: str, low: float, high: float) -> list[int]:
        """Window starts in [low, high]."""
        found = await self.client.zrangebyscore(self.keys.model_windows(model, version), low, high)
        return sorted(int(_text(s)) for s in found)

    async def window_counts(self, model: str, version: str, start: int) -> dict[str, int]:
        """The counts hash of a window."""
        raw = await self.client.hgetall(self.keys.model_counts(model, version, start))
        return {_text(k): int(v) for k, v in raw.items()}

    async def window_sketches(self, model: str, version: str, start: int) -> dict[str, list[bytes]]:
        """Every worker's sketches of a window, by feature."""
        raw = await self.client.hgetall(self.keys.model_sketches(model, version, start))
        out: dict[str, list[bytes]] = {}
        for field, blob in raw.items():
            feature = _text(field).split("|", 1)[1]
            out.setdefault(feature, []).append(blob)
        return out

    async def window_performance(self, model: str, version: str, start: int) -> Any:
        """The model's performance report of a window (None without one)."""
        import orjson

        raw = await self.client.hget(
            self.keys.model_performance(model, version), f"{start}|{TOTAL}"
        )
        return orjson.loads(raw) if raw else None

    async def store_drift(
        self, model: str, version: str, start: int, report: Mapping[str, Any]
    ) -> None:
        """Store the drift report of a closed window."""
        key = self.keys.model_drift(model, version)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, str(start), _json(report))
        pipe.expire(key, self.retention_s)
        await pipe.execute()


def _json(value: Any) -> bytes:
    from pydantic_core import to_json

    return to_json(value, inf_nan_mode="strings")


def performance_reports(raw: Mapping[bytes | str, bytes | str]) -> dict[str, dict[str, Any]]:
    """Metrics per segment of a window's label counts, and their sum under ``__all__``."""
    by_segment: dict[str, dict[str, float]] = {}
    for field, value in raw.items():
        segment, counter = _text(field).rsplit("|", 1)
        number = float(value) if counter in FLOAT_COUNTERS else int(value)
        by_segment.setdefault(segment, {})[counter] = number
    total: dict[str, float] = {}
    for counts in by_segment.values():
        add_counts(total, counts)
    reports = {seg: performance(counts) for seg, counts in by_segment.items()}
    reports[TOTAL] = performance(total)
    return reports
