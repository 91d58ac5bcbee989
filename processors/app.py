"""The processor faust app: thin wiring around the pure stages.

Stage 1 (``series-stage``, telemetry keyed ``run:rank``): decode, validate, window, detect;
emits window updates, alerts, dead letters, per-rank summaries (keyed by run) and the
batches that passed its checks, to the validated topic the sink stores raw series from.
Stage 1 is the only place that validates telemetry, and every message it reads is either
used or dead-lettered once (``stepstream.faust_seam.guarded``: no exception escapes).
Stage 2 (``run-stage``, summaries keyed ``run``): cross-rank stats and detectors; a timer
judges dead and hung ranks. Both agents live in one app, so one worker process runs both.

Window and detector state is memory in the process that owns the partition. When a
partition moves to another worker (a worker died or joined), the new owner starts that
partition's series cold: windows refill from new data (50 steps / 60 s by default) and
detectors re-learn their baselines. Nothing is rebuilt from the topic. A partition that
comes back after another worker held it (this worker was cut off, then rejoined) is met by
a jump in its offsets (`stepstream.positions.PartitionOffsets`, applied by the seam): its
series start cold too, else the seq the other worker consumed would read as lost telemetry.

The agents are (topic, handler) pairs run by `stepstream.faust_seam`, which owns batching,
the guard, dead letters and offsets; the per-partition bookkeeping is in
`processors.partition_state`.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import faust
from pydantic import ValidationError

from processors.alerting.agent import Alerting
from processors.detectors import check_detector_params
from processors.detectors.liveness import KnownRank, read_mark_interval_s
from processors.forward import (
    forward_messages,
    merge_batches,
    sized_summary,
    sized_update,
    strip_metrics,
)
from processors.partition_state import PartitionKeys, SeededRuns
from processors.run_stage import RunStage
from processors.series_stage import SeriesStage
from processors.serving_app import register_serving
from processors.validation import Limits
from stepstream.contract import (
    READ_MARK_KEY,
    Batch,
    RankSummary,
    ReadMark,
    Record,
    RecordKind,
    check_value,
    decode_batch,
    run_key,
    validation_reason,
)
from stepstream.errors import ContractError
from stepstream.faust_seam import (
    Agent,
    DeadLetters,
    add_agents,
    make_app,
    on_partitions_assigned,
    on_partitions_revoked,
    raw_topic,
    read_as_of,
)
from stepstream.keys import RedisKeys
from stepstream.messages import Message
from stepstream.positions import PartitionOffsets, ReadProgress
from stepstream.redis_client import async_client
from stepstream.settings import Settings
from stepstream.stored_stats import StoredRank
from stepstream.streaming import release_memory
from stepstream.topics import Topics

log = logging.getLogger(__name__)

#: How often the stage-2 timer judges liveness, in seconds.
TICK_S = 0.2

#: The stage names dead letters carry.
SERIES_STAGE = "processor/series-stage"
RUN_STAGE = "processor/run-stage"

#: Record kinds whose values are not capped by metric name in stage 1.
CAPPED_EXEMPT = frozenset({RecordKind.LOG, RecordKind.HEARTBEAT, RecordKind.QUALITY})


def known_rank(rank: int, entry: StoredRank) -> KnownRank:
    """A rank registry entry as liveness takes it."""
    return KnownRank(rank, entry.t, entry.step, entry.node, entry.status)


def create_processor_app(settings: Settings) -> faust.App:
    """Build the processor app; nothing connects until a worker starts it. ConfigError
    for detector parameters or a rule file the worker cannot use."""
    check_detector_params(settings.detector_params)
    topics = Topics(settings.topic_prefix)
    app = make_app(settings, topics.group("processor"))
    summaries = raw_topic(app, topics.summaries)
    windows = raw_topic(app, topics.windows)
    crossrank = raw_topic(app, topics.crossrank)
    validated = raw_topic(app, topics.validated)
    dead = DeadLetters.of(app, topics.deadletter)
    # Below the producer's request limit (max_request_size, 1 MB by default) with room
    # for the record overhead.
    forward_limit = int(settings.max_message_bytes * 0.9)
    stage = SeriesStage(
        settings.window_steps,
        settings.window_seconds,
        crossrank_metrics=settings.crossrank_metrics,
        limits=Limits(
            max_records=settings.max_records_per_batch,
            max_future_s=settings.max_future_s,
            max_past_s=settings.max_past_s,
            max_metrics_per_run=settings.max_metrics_per_run,
            max_seq_jump=settings.max_seq_jump,
        ),
        detector_params=settings.detector_params,
        stats_interval_s=settings.window_stats_interval_s,
        stats_budget_per_s=settings.window_stats_budget_per_s,
        quality_window_steps=settings.window_steps[0],
    )
    alerting = Alerting(app, settings)
    keys = RedisKeys(settings.key_prefix)
    # Served models (issue 23): their own agent and timers, sharing the alert engine.
    register_serving(app, settings, alerting)
    run_stage = RunStage(
        heartbeat_interval_s=settings.heartbeat_interval_s,
        hung_after_s=settings.hung_after_s,
        detector_params=settings.detector_params,
        quality_window_steps=settings.window_steps[0],
        incident_hold_s=settings.incident_hold_s,
    )

    #: The telemetry partition of each (run, rank) and the summaries partition of each run.
    series_partitions: PartitionKeys[tuple[str, int]] = PartitionKeys()
    #: The offset stage 1 read last in each telemetry partition (its read marks).
    telemetry_read = PartitionOffsets()
    telemetry_progress = ReadProgress()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    run_partitions: PartitionKeys[str] = PartitionKeys()
    seeded = SeededRuns()

    @functools.cache
    def redis() -> Any:
        # Made on first use, so building the app connects nothing.
        return async_client(settings.redis_url, settings.redis_cluster)

    async def seed(run: str, world: int) -> None:
        # A cold owner (a worker died, joined or restarted) learns the ranks the previous
        # one knew, so a rank that died before the move is still reported (see
        # LivenessDetector.seed). Redis away: liveness goes on from what it hears.
        try:
            raw = await redis().hgetall(keys.ranks(run))
            known = [
                known_rank(int(rank), StoredRank.model_validate_json(body))
                for rank, body in raw.items()
            ]
        except Exception as exc:
            log.warning("rank registry of run %s not read: %s", run, exc)
            return
        taken = run_stage.liveness.seed(run, world, known)
        if taken:
            log.warning("liveness of run %s seeded with %d rank(s) from Redis", run, taken)

    async def reject(message: Message, stage_name: str, reason: str, detail: str) -> None:
        await dead.send(message, stage=stage_name, reason=reason, detail=detail)

    def keeper(run: str) -> Callable[[Record, str], bool]:
        # Values the stage windows are capped per run; logs, heartbeats and quality
        # statistics are not windowed by name and pass as they came.
        return lambda record, metric: record.kind in CAPPED_EXEMPT or stage.admitted(run, metric)

    async def forward(sources: list[Message], key: bytes, value: bytes) -> None:
        # A forward the producer refuses costs the raw series of the messages in it, with
        # a dead letter for each saying so (their windows were updated).
        try:
            await validated.send(key=key, value=value)
        except Exception as exc:
            log.warning("forward of %d bytes to %s failed: %s", len(value), topics.validated, exc)
            detail = f"windows updated, raw series not stored: {type(exc).__name__}: {exc}"
            for source in sources:
                await reject(source, SERIES_STAGE, "forward_failed", detail)

    def series_returned(partitions: set[int]) -> None:
        gone = series_partitions.on(partitions)
        log.warning(
            "partitions %s came back: %d series restart cold", sorted(partitions), len(gone)
        )
        stage.forget(gone)

    async def series_batch(messages: list[Message]) -> None:
        batches: list[Batch] = []
        sources: list[Message] = []
        for message in messages:
            try:
                batches.append(decode_batch(message.value, settings.max_message_bytes))
                sources.append(message)
            except ContractError as err:
                stage.rejected[err.reason] = stage.rejected.get(err.reason, 0) + 1
                await reject(message, SERIES_STAGE, err.reason, err.detail)
        if not batches:
            return
        for batch, source in zip(batches, sources, strict=True):
            series_partitions.note((batch.run, batch.rank), source.partition)
        result = stage.process_many(batches)
        dropped: set[int] = set()
        partial: set[int] = set()
        for index, rejection in result.rejected:
            (partial if rejection.reason == "cardinality" else dropped).add(index)
            await reject(sources[index], SERIES_STAGE, rejection.reason, rejection.detail)
        accepted: list[Batch] = []
        origin: list[Message] = []
        for index, batch in enumerate(batches):
            if index in dropped:
                continue
            if index in partial:
                batch = strip_metrics(batch, keeper(batch.run))
            accepted.append(batch)
            origin.append(sources[index])
        for merged, indexes in merge_batches(accepted):
            for part in forward_messages(merged, forward_limit):
                await forward([origin[i] for i in indexes], merged.key, part)
        for update in result.updates:
            for part in sized_update(update, forward_limit):
                await windows.send(key=run_key(update.run), value=part)
        await alerting.on_updates(result.updates)
        # Detector findings ride in the summaries: stage 2 groups them per run.
        for summary in result.summaries:
            summary.partition = series_partitions.get((summary.run, summary.rank))
            for part in sized_summary(summary, forward_limit):
                await summaries.send(key=run_key(summary.run), value=part)

    def runs_returned(partitions: set[int]) -> None:
        gone = run_partitions.on(partitions)
        log.warning(
            "summaries partitions %s came back: %d runs restart", sorted(partitions), len(gone)
        )
        run_stage.forget(gone)

    async def run_batch(messages: list[Message]) -> None:
        now = time.time()
        for message in messages:
            if message.key == READ_MARK_KEY:
                try:
                    mark = ReadMark.model_validate_json(check_value(message.value))
                except (ContractError, ValidationError):
                    continue  # a mark says nothing of a run: nothing lost without it
                run_stage.liveness.partitions_read(mark.read, now, mark.t)
                continue
            try:
                summary = RankSummary.model_validate_json(check_value(message.value))
            except ContractError as err:
                await reject(message, RUN_STAGE, err.reason, err.detail)
                continue
            except ValidationError as exc:
                reason, detail = validation_reason(exc)
                await reject(message, RUN_STAGE, reason, detail)
                continue
            run_partitions.note(summary.run, message.partition)
            if seeded.first_sight(summary.run):
                await seed(summary.run, summary.world)
            # The run's detector alerts are this worker's now: restored at once, so those
            # held elsewhere resolve or are re-asserted though no finding comes.
            await alerting.take_over(summary.run, detectors=True)
            result = run_stage.process(summary, now)
            for update in result.crossrank:
                await crossrank.send(key=run_key(update.run), value=update.to_bytes())
            await alerting.on_findings(result.alerts)

    # Stage 2 batches as stage 1 does: the same settings, so one knob tunes both.
    batch, linger_s = settings.processor_batch, settings.processor_linger_s
    add_agents(
        app,
        dead,
        [
            Agent(
                "series-stage",
                topics.telemetry,
                SERIES_STAGE,
                series_batch,
                batch,
                linger_s,
                returned=series_returned,
                positions=telemetry_read,
            ),
            Agent(
                "run-stage",
                topics.summaries,
                RUN_STAGE,
                run_batch,
                batch,
                linger_s,
                returned=runs_returned,
            ),
        ],
    )

    @app.timer(max(0.1, settings.window_stats_interval_s / 2))
    async def flush_window_stats() -> None:
        updates = stage.flush(time.time())
        for update in updates:
            for part in sized_update(update, forward_limit):
                await windows.send(key=run_key(update.run), value=part)
        await alerting.on_updates(updates)

    # A rebalance stops every partition and restarts them one by one: liveness judges no
    # silence meanwhile, and counts silences from a grace after the new assignment.
    async def rebalancing(revoked: int) -> None:
        run_stage.liveness.pause()
        seeded.reset()  # runs may come back after another owner heard more of them

    async def assigned(count: int) -> None:
        run_stage.liveness.resume(time.time())
        stage.rebalanced()
        # Rare and consequential (runs move, state restarts cold): operators see it.
        log.warning("partitions assigned after a rebalance: %d", count)

    on_partitions_revoked(app, rebalancing)
    on_partitions_assigned(app, assigned)

    @app.timer(read_mark_interval_s(settings.heartbeat_interval_s, settings.partitions))
    async def send_read_marks() -> None:
        # Every summaries partition hears which telemetry partitions this worker has read
        # to their end: stage 2 judges a rank's silence only where its partition is read.
        now = time.time()
        read = await read_as_of(app, topics.telemetry, telemetry_read, telemetry_progress, now)
        if not read:
            return
        ages = {partition: now - at for partition, at in read.items()}
        mark = ReadMark(t=now, read=ages, worker=worker).to_bytes()
        for partition in range(settings.partitions):
            await summaries.send(key=READ_MARK_KEY, value=mark, partition=partition)

    @app.timer(TICK_S)
    async def liveness_tick() -> None:
        now = time.time()
        await alerting.on_findings(run_stage.tick(now))
        finished = run_stage.flush_steps(now)
        for update in finished.crossrank:
            await crossrank.send(key=run_key(update.run), value=update.to_bytes())
        await alerting.on_findings(finished.alerts)

    @app.timer(60.0)
    async def report_counters() -> None:
        if stage.rejected:
            log.warning("dead-lettered telemetry so far, by reason: %s", stage.rejected)

    @app.timer(min(60.0, settings.state_idle_s / 4))
    async def expire_idle() -> None:
        now = time.time()
        ranks = stage.expire(now, settings.state_idle_s)
        runs = run_stage.expire(now, settings.state_idle_s)
        series_partitions.drop(ranks)
        run_partitions.drop(runs)
        # A run that comes back is cold: its liveness is seeded again from Redis.
        seeded.drop(runs)
        alerting.forget_runs(runs)
        if ranks or runs:
            # Their state is freed: give the pages back, or RSS stays at the high-water
            # mark of the busiest span however few runs are held now.
            began = time.perf_counter()
            release_memory()
            log.info(
                "forgot %d idle ranks and %d idle runs; holding %d ranks, %d runs "
                "(memory released in %.0f ms)",
                len(ranks),
                len(runs),
                stage.held(),
                run_stage.held(),
                (time.perf_counter() - began) * 1000,
            )

    return app
