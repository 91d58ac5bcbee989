"""The serving stage's faust wiring: predictions, outcomes and references of served
models in, label joins, window counts, drift and performance reports (Redis) and model
alerts (the alerts topic) out. The logic lives in `processors.serving`; the state in
Redis (`processors.serving_store`, which says why).

The serving topic is keyed by prediction id, so a prediction and its outcome are read by
one worker in order. Per batch: decode and check every record (hostile ones are
dead-lettered with their reason, the rest go on), read the pending records of every id,
apply, write per model in one transaction, then recompute the performance of the
windows whose labels changed (an outcome is in the metrics when its batch is done). A
timer writes this worker's KLL sketches every second; another judges closed windows
(drift, data quality, performance) on the worker that holds partition 0 of the serving
topic, so each window is judged once.

What a worker killed -9 loses: up to a second of its sketch updates (KS and Wasserstein
only; they carry error bounds anyway). Pending records, joins and the exact bin counts
are in the per-batch transaction, and the batches read again after the restart add
nothing twice. The judge's streaks and performance baseline start afresh.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from typing import Any

import faust

from processors.alerting.agent import Alerting
from processors.flags import Flag, flag_to_alert
from processors.serving.evaluate import Judge
from processors.serving.reference import Reference
from processors.serving.sketches import merged, new_sketch
from processors.serving.stage import Effects, ModelStage, Parsed, parse_records
from processors.serving_store import ServingStore
from stepstream.errors import ContractError
from stepstream.faust_seam import Agent, DeadLetters, add_agents, assigned_partitions
from stepstream.keys import RedisKeys
from stepstream.messages import Message
from stepstream.redis_client import async_client
from stepstream.serving_contract import decode_serving
from stepstream.settings import Settings
from stepstream.topics import Topics

log = logging.getLogger(__name__)

SERVING_STAGE = "processor/serving-stage"
#: How often this worker writes its sketches of open windows.
SKETCH_FLUSH_S = 1.0
#: How long a missing reference is not looked up again.
REFERENCE_RECHECK_S = 1.0
#: How often a held reference is compared with the stored one.
REFERENCE_REFRESH_S = 5.0


class ServingWorker:
    """The serving stage's state in one worker process."""

    def __init__(self, settings: Settings, store: ServingStore) -> None:
        self.settings = settings
        self.store = store
        self.models: dict[str, ModelStage] = {}
        self.worker_id = uuid.uuid4().hex[:8]
        #: (model, version, window start, feature) -> this worker's sketch of it.
        self.sketches: dict[tuple[str, str, int, str], Any] = {}
        self.dirty: set[tuple[str, str, int]] = set()
        self.checked: dict[tuple[str, str], float] = {}
        self.reference_raw: dict[tuple[str, str], bytes] = {}
        self.loaded_segments: set[tuple[str, str]] = set()
        self.judge = Judge(
            min_count=settings.serving_min_count,
            consecutive=settings.serving_drift_windows,
            quality_max_rate=settings.serving_quality_max_rate,
        )
        self.judged: dict[tuple[str, str], int] = {}
        #: Models with a window judged since the alert engine was last told.
        self.active_models: set[str] = set()
        self.rejected: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.processed = 0

    def model(self, name: str) -> ModelStage:
        """The stage of model `name`."""
        stage = self.models.get(name)
        if stage is None:
            stage = ModelStage(
                name,
                window_s=self.settings.serving_window_s,
                horizon_s=self.settings.serving_label_horizon_s,
                top_k=self.settings.serving_top_k,
                reference_size=self.settings.serving_reference_size,
            )
            self.models[name] = stage
        return stage

    async def prepare(self, stage: ModelStage, version: str, now: float) -> None:
        """Load the reference and segments of a version this worker does not hold yet."""
        key = (stage.model, version)
        if key not in self.loaded_segments:
            stage.segments.setdefault(version, set()).update(
                await self.store.segments(stage.model, version)
            )
            self.loaded_segments.add(key)
        # A missing reference is looked for every second; one held is compared with the
        # stored one every few seconds, so a reference given after traffic started (or
        # stored by another worker) replaces this worker's. The window in which it changes
        # mixes two sets of bins: its drift figures are not to be trusted.
        held = version in stage.references
        wait = REFERENCE_REFRESH_S if held else REFERENCE_RECHECK_S
        if now - self.checked.get(key, 0.0) < wait:
            return
        self.checked[key] = now
        raw = await self.store.reference_bytes(stage.model, version)
        if raw is None or (held and self.reference_raw.get(key) == raw):
            return
        self.reference_raw[key] = raw
        stage.set_reference(version, Reference.from_bytes(raw))

    async def handle(self, items: list[Parsed], now: float) -> None:
        """Apply the parsed messages of one batch."""
        by_model: dict[str, list[Parsed]] = {}
        for parsed in items:
            by_model.setdefault(parsed.model, []).append(parsed)
        for model, parts in by_model.items():
            stage = self.model(model)
            for parsed in parts:
                for record in parsed.references:
                    reference = stage.reference_from(record)
                    stage.set_reference(parsed.version, reference)
                    await self.store.store_reference(model, parsed.version, reference, True)
                    self.checked[(model, parsed.version)] = now
                await self.prepare(stage, parsed.version, now)
            found = await self.store.pending(model, parts, now)
            effects = Effects()
            for parsed in parts:
                stage.apply(parsed, found, effects)
            for version, reference in effects.built.items():
                # Several workers may build one from their own first window: the first
                # stored is the one everybody uses.
                kept = await self.store.store_reference(model, version, reference, False)
                stage.set_reference(version, kept)
                self.checked[(model, version)] = now
            await self.store.write(model, effects, now)
            await self.store.refresh_performance(model, list(effects.labels))
            for (version, start, feature), values in effects.sketch_values.items():
                key = (model, version, start, feature)
                sketch = self.sketches.get(key)
                if sketch is None:
                    sketch = self.sketches[key] = new_sketch()
                for array in values:
                    sketch.update(array)
                self.dirty.add((model, version, start))
            self.outcomes.update(effects.outcomes)
            self.processed += sum(len(p.predictions) for p in parts)

    async def flush_sketches(self, now: float) -> None:
        """Write the sketches of the windows that changed; forget old windows."""
        dirty, self.dirty = self.dirty, set()
        for model, version, start in dirty:
            blobs = {
                f"{self.worker_id}|{feature}": sketch.serialize()
                for (m, v, s, feature), sketch in self.sketches.items()
                if (m, v, s) == (model, version, start)
            }
            if blobs:
                await self.store.write_sketches(model, version, start, blobs)
        horizon = now - 3 * self.settings.serving_window_s - 60
        for key in [k for k in self.sketches if k[2] < horizon]:
            del self.sketches[key]

    async def judge_closed(self, now: float) -> list[Flag]:
        """Judge every window closed since the last call; the flags to raise."""
        window_s = self.settings.serving_window_s
        grace = max(1.5 * SKETCH_FLUSH_S, 0.25 * window_s)
        closed_before = now - window_s - grace
        flags: list[Flag] = []
        for model in await self.store.models(now):
            for version in await self.store.versions(model):
                key = (model, version)
                last = self.judged.get(key)
                low = last + 1 if last is not None else closed_before - 3 * window_s
                starts = await self.store.windows(model, version, low, closed_before)
                if not starts:
                    continue
                self.active_models.add(model)
                reference = await self.store.reference(model, version)
                for start in starts:
                    self.judged[key] = start
                    if reference is None:
                        continue
                    counts = await self.store.window_counts(model, version, start)
                    blobs = await self.store.window_sketches(model, version, start)
                    sketches = {name: merged(parts) for name, parts in blobs.items()}
                    report, decisions = self.judge.window(
                        model, version, start, reference, counts, sketches
                    )
                    perf = await self.store.window_performance(model, version, start)
                    if perf is not None:
                        decisions += self.judge.performance_window(model, version, start, perf)
                        report["performance"] = perf
                    await self.store.store_drift(model, version, start, report)
                    for d in decisions:
                        flags.append(
                            Flag(
                                detector=d.rule,
                                run=model,
                                rank=None,
                                metric=d.metric,
                                step=None,
                                t=start + window_s,
                                severity="warning",
                                summary=d.summary,
                                evidence=d.evidence,
                                cleared=d.action == "clear",
                                labels={"model": model, "version": version},
                            )
                        )
        return flags


def register_serving(app: faust.App, settings: Settings, alerting: Alerting) -> ServingWorker:
    """Add the serving stage's agent and timers to the processor `app`."""
    topics = Topics(settings.topic_prefix)
    store = ServingStore(
        async_client(settings.redis_url, settings.redis_cluster),
        RedisKeys(settings.key_prefix),
        retention_s=settings.retention_s,
        horizon_s=settings.serving_label_horizon_s,
        cluster=settings.redis_cluster,
    )
    worker = ServingWorker(settings, store)
    dead = DeadLetters.of(app, topics.deadletter, counts=worker.rejected)

    async def reject(message: Message, reason: str, detail: str) -> None:
        await dead.send(message, stage=SERVING_STAGE, reason=reason, detail=detail)

    async def serving_batch(messages: list[Message]) -> None:
        items: list[Parsed] = []
        for message in messages:
            if message.value is None:  # a tombstone
                await reject(message, "null", "the message has no value (a tombstone)")
                continue
            try:
                envelope, records = decode_serving(message.value, settings.max_message_bytes)
            except ContractError as err:
                await reject(message, err.reason, err.detail)
                continue
            parsed = parse_records(envelope.model, envelope.version, records)
            if parsed.rejected:
                reasons = Counter(r.reason for r in parsed.rejected)
                first = parsed.rejected[0]
                detail = (
                    f"{len(parsed.rejected)} of {len(records)} records rejected "
                    f"({dict(reasons)}); the rest were used. First: {first.detail}"
                )
                await reject(message, first.reason, detail)
            items.append(parsed)
        await worker.handle(items, time.time())

    add_agents(
        app,
        dead,
        [
            Agent(
                "serving-stage",
                topics.serving,
                SERVING_STAGE,
                serving_batch,
                settings.processor_batch,
                settings.processor_linger_s,
            )
        ],
    )

    @app.timer(SKETCH_FLUSH_S)
    async def flush_serving_sketches() -> None:
        try:
            await worker.flush_sketches(time.time())
        except Exception as exc:  # Redis away: the next flush writes them
            log.warning("serving sketches not written: %s", exc)

    def owns_judging() -> bool:
        return (topics.serving, 0) in assigned_partitions(app)

    @app.timer(max(0.25, min(5.0, settings.serving_window_s / 4)))
    async def judge_serving_windows() -> None:
        if not owns_judging():
            return
        try:
            flags = await worker.judge_closed(time.time())
        except Exception:
            log.exception("judging serving windows failed; next tick tries again")
            return
        # A model judged is a model reporting: its firing drift alerts hold (the engine
        # resolves a holding detector alert only when its run goes silent).
        for model in worker.active_models:
            alerting.engine.note_activity(model)
        worker.active_models.clear()
        if flags:
            now = time.time()
            await alerting.on_findings([flag_to_alert(f, now) for f in flags])

    return worker
