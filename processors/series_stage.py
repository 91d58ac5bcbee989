"""Stage 1, per series: validate, dedup by seq, windows per (run, rank, metric), per-series
detectors, and the compact per-step summaries stage 2 compares across ranks.

Pure logic with no faust or Kafka imports; the faust agent in ``processors.app`` feeds it
decoded batches and sends what it returns. Window statistics are computed once per touched
series per call of `process_many`, however many records of the series the call carried.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from processors.detectors import (
    DivergenceDetector,
    DivergenceParams,
    ErrorBurstDetector,
    ErrorBurstParams,
    GradientDetector,
    GradientParams,
    LeakDetector,
    LeakParams,
    NonFiniteDetector,
    OverfittingDetector,
    OverfittingParams,
    PlateauDetector,
    PlateauParams,
    ResourceDetector,
    ResourceParams,
    SpikeDetector,
    SpikeParams,
    TelemetryLossDetector,
    TelemetryLossParams,
    ThroughputDetector,
    ThroughputParams,
)
from processors.detectors.base import with_overrides
from processors.flags import Flag, RankKey, fingerprint, flag_to_alert
from processors.forward import StageUpdate, Stats, is_plain
from processors.quality_windows import QualityWindow, TaskQuality, metric_name, split_by_task
from processors.validation import (
    CardinalityGuard,
    Limits,
    Rejection,
    check_batch,
    check_seq_jump,
)
from processors.windows import RollingWindow, Summary, summarize_windows
from stepstream import vocabulary as vocab
from stepstream.contract import (
    Alert,
    Batch,
    RankSummary,
    Record,
    RecordKind,
    StepPoint,
    WindowStats,
)
from stepstream.keys import step_window_name, time_window_name

__all__ = ["SeriesStage", "StageResult", "fingerprint", "flag_to_alert"]

#: Record kinds whose values are not series to window (free-text logs, liveness pings).
UNWINDOWED_KINDS = frozenset({RecordKind.LOG, RecordKind.HEARTBEAT})


class ValueDetector(Protocol):
    """A per-series detector: sees one value at a time."""

    def wants(self, metric: str) -> bool:
        """True if the detector watches `metric`."""
        ...

    def observe(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> Sequence[Flag]:
        """Add one value; the flags of episodes it starts and (``cleared``) ends, usually
        none (an empty tuple, so the common case allocates nothing)."""
        ...

    def forget(self, ranks: Collection[RankKey]) -> None:
        """Drop what it holds of the series of `ranks` (publishers gone idle)."""
        ...

    def restated(self, run: str, rank: int) -> list[Flag]:
        """The open episodes of one rank, as flags to send again after a rebalance."""
        ...


#: The detector (and alert rule) name of refused telemetry: a seq jump, the name cap.
REJECTED = "telemetry_rejected"


class SeriesWindows:
    """The windows of one metric of one rank: one buffer per kind (steps, seconds) holding
    the largest span; smaller sizes are slices of it. `detectors` are the value detectors
    that watch this metric, resolved once per series rather than once per value."""

    __slots__ = (
        "by_step",
        "by_time",
        "canonical",
        "detectors",
        "forward",
        "held_at",
        "nonfinite",
        "rank_local",
        "stats_due",
    )

    def __init__(
        self,
        max_steps: int | None,
        max_seconds: float | None,
        detectors: Sequence[ValueDetector] = (),
        forward: bool = False,
        name: str = "",
    ) -> None:
        self.by_step = RollingWindow(max_steps) if max_steps else None
        self.by_time = RollingWindow(max_seconds) if max_seconds else None
        self.detectors = tuple(detectors)
        self.forward = forward
        #: The vocabulary name stage 2 gets the values under, and whether a non-finite
        #: value of the series can locate a fault (see `stepstream.vocabulary`).
        self.canonical = vocab.canonical(name)
        self.rank_local = vocab.is_rank_local(name)
        #: True while the series is in a non-finite episode (mirrors the detector, so the
        #: detector is only called on non-finite values and on the first finite one after).
        self.nonfinite = False
        #: Processor time before which this series' stats are not recomputed (rate limit).
        self.stats_due = 0.0
        #: When its newest value was held back by the rate limit (see `flush`).
        self.held_at = 0.0

    def add(self, step: int | None, t: float, value: float) -> None:
        """Place one value in every window it belongs to."""
        if step is not None and self.by_step is not None:
            self.by_step.add(step, value)
        if self.by_time is not None:
            self.by_time.add(t, value)


@dataclass
class RankState:
    """What stage 1 remembers of one (run, rank): dedup watermark and its series."""

    incarnation: str = ""
    #: The run's name as first parsed: the one string every structure of the rank keys
    #: by (each message parses a new copy of it, and state made from different
    #: messages would each keep their own).
    run: str = ""
    high_seq: int = -1
    duplicates: int = 0
    lost: int = 0
    last_step: int | None = None
    last_t: float = 0.0
    series: dict[str, SeriesWindows] = field(default_factory=dict)
    #: Metrics whose stats were held back by the rate limit -> their latest value.
    pending: dict[str, float] = field(default_factory=dict)
    world: int = 1
    node: str = ""
    #: Quality windows by task (sufficient statistics of kind-quality records).
    quality: dict[str, QualityWindow] = field(default_factory=dict)
    #: Tasks whose quality window got statistics since the last update.
    quality_touched: set[str] = field(default_factory=set)
    #: Lifecycle status of the newest heartbeat (None before any).
    status: str | None = None
    #: True when the status changed since the last window update (the sink stores it).
    status_changed: bool = False
    #: Processor clock when a batch of the rank last came (see `SeriesStage.expire`).
    heard: float = 0.0


@dataclass
class StageResult:
    """What processing one or more batches produced. `rejected` pairs the index of an
    input batch with why it (or part of it) goes to the dead-letter topic."""

    updates: list[StageUpdate] = field(default_factory=list)
    summaries: list[RankSummary] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    rejected: list[tuple[int, Rejection]] = field(default_factory=list)
    duplicates: int = 0
    lost: int = 0

    @property
    def update(self) -> StageUpdate | None:
        """The last window update (the only one when a single batch was processed)."""
        return self.updates[-1] if self.updates else None


def _merge(parts: Sequence[RankSummary]) -> RankSummary:
    """One summary of a rank from consecutive ones (a step in several is merged). The
    step index is built once per call, not once per part: a call carries up to
    `processor_batch` messages of one rank."""
    older = parts[0]
    if len(parts) == 1:
        return older
    steps = {p.step: p for p in older.steps}
    for newer in parts[1:]:
        for point in newer.steps:
            known = steps.get(point.step)
            if known is None:
                steps[point.step] = point
            else:
                known.values.update(point.values)
                for name, value in point.quality.items():
                    known.quality[name] = known.quality.get(name, 0.0) + value
                known.t = max(known.t, point.t)
        older.nonfinite.extend(newer.nonfinite)
        older.records += newer.records
        older.world, older.node = newer.world, newer.node
        older.last_step, older.last_t = newer.last_step, newer.last_t
        older.status = newer.status
        if newer.phase is not None:
            older.phase, older.phase_s = newer.phase, newer.phase_s
        if newer.stack is not None:
            older.stack, older.stack_t = newer.stack, newer.stack_t
        if newer.mesh is not None:
            older.mesh = newer.mesh
    older.steps = [steps[s] for s in sorted(steps)]
    return older


def _always_forwarded(metric: str) -> bool:
    """Norms stage 2 combines into the job's (`CrossRankStats.combined`): a sharded
    rank's shares, and the per-layer norms of a model held whole. They come only on the
    steps `watch()` reads (its `every`)."""
    return vocab.is_signal(metric, *_COMBINED)


_COMBINED = (vocab.GRAD_NORM_SQ, vocab.GRAD_LAYER_NORM_SQ, vocab.GRAD_LAYER_NORM, vocab.SHARD_NORM)


def heartbeat(state: RankState, record: Record, beat: RankSummary) -> None:
    """Read one heartbeat record into the rank's state (its status) and into `beat` (the
    phase it reported, a captured stack)."""
    values = record.values
    code = values.get(vocab.HEARTBEAT_STATUS)
    if code is not None:
        status = vocab.STATUS_NAMES.get(code)
        if status is not None and status != state.status:
            state.status = status
            state.status_changed = True
    phase = values.get(vocab.HEARTBEAT_PHASE)
    if phase is not None:
        beat.phase = vocab.PHASE_NAMES.get(phase)
        beat.phase_s = values.get(vocab.HEARTBEAT_PHASE_S)
    mesh = {
        name[len(vocab.MESH_PREFIX) :]: int(value)
        for name, value in values.items()
        if name.startswith(vocab.MESH_PREFIX) and math.isfinite(value)
    }
    if mesh:
        beat.mesh = mesh
    if vocab.HEARTBEAT_STACK in values and record.text:
        beat.stack, beat.stack_t = record.text, record.t


#: Window name -> metric -> stats: the windows of one rank's update.
_Windows = dict[str, dict[str, Stats]]
#: A series whose stats are due: its rank's windows, its name, its windows, open flags.
_Due = tuple[_Windows, str, "SeriesWindows", list[str] | None]


def _stats(summary: Summary, flags: list[str] | None) -> WindowStats:
    """The stats of a series that does not go out as its plain `Summary`: one with open
    flags, or a non-finite stat (`processors.forward.is_plain`). Rare, so validated."""
    return WindowStats(**msgspec.structs.asdict(summary), flags=flags)


def quality_stats(value: float, examples: float) -> WindowStats:
    """A quality metric as window stats: `count` is the examples behind it, `mean` and
    `last` its value over the window (there is one value per window, not a series)."""
    return WindowStats(count=int(examples), mean=value, last=value)


def build_value_detectors(params: Mapping[str, Mapping[str, Any]] | None) -> list[ValueDetector]:
    """The per-series detectors with their parameter overrides (by detector name)."""
    params = params or {}
    return [
        SpikeDetector(with_overrides(SpikeParams(), params.get("spike"))),
        GradientDetector(with_overrides(GradientParams(), params.get("gradients"))),
        PlateauDetector(with_overrides(PlateauParams(), params.get("plateau"))),
        DivergenceDetector(with_overrides(DivergenceParams(), params.get("divergence"))),
        OverfittingDetector(with_overrides(OverfittingParams(), params.get("overfitting"))),
        ThroughputDetector(with_overrides(ThroughputParams(), params.get("throughput_regression"))),
        ResourceDetector(with_overrides(ResourceParams(), params.get("resource_pressure"))),
        LeakDetector(with_overrides(LeakParams(), params.get("memory_leak"))),
    ]


class SeriesStage:
    """Turns telemetry batches into window updates, per-rank summaries and alerts.

    `window_steps` and `window_seconds` are the window sizes; `crossrank_metrics` the
    values forwarded per step to stage 2; `limits` bound what a batch may hold;
    `detector_params` override detector parameters by detector name; `clock` stamps
    `raised_at` on alerts and judges far-future event times (injected so tests control it).
    `stats_interval_s` > 0 rate-limits window statistics per series: a series touched again
    sooner gets only its latest value in the update; its next value computes the stats
    once due, and `flush` emits the held-back stats of series that went quiet (a flagged
    series is always computed at once). `stats_budget_per_s` > 0 stretches that interval
    when the stage holds more series than it can recompute within it: to at least the
    series held / the budget (`interval_s`), so that a worker's stats CPU stays bounded
    as ranks grow and the stats get older instead of the worker falling behind.
    `quality_window_steps` (default: the first of `window_steps`) is the size of the
    quality windows: records of kind quality carry additive sufficient statistics
    (stepstream.quality) that are summed per (run, rank, task) over that many steps and
    published as metrics ``quality/<task>/<metric>`` of that step window.
    """

    def __init__(
        self,
        window_steps: Sequence[int],
        window_seconds: Sequence[float],
        clock: Callable[[], float] = time.time,
        *,
        crossrank_metrics: Sequence[str] = (),
        limits: Limits | None = None,
        detector_params: Mapping[str, Mapping[str, Any]] | None = None,
        stats_interval_s: float = 0.0,
        stats_budget_per_s: float = 0.0,
        quality_window_steps: int | None = None,
    ) -> None:
        self.quality_window_steps = quality_window_steps or next(iter(window_steps), 50)
        self._quality_name = step_window_name(self.quality_window_steps)
        self._quality_math: dict[str, TaskQuality] = {}
        self.window_steps = sorted(set(window_steps))
        self.stats_interval_s = stats_interval_s
        self.stats_budget_per_s = stats_budget_per_s
        self._interval_s = stats_interval_s
        self._interval_at = -math.inf
        self.window_seconds = sorted(set(window_seconds))
        self._step_names = [(step_window_name(n), float(n)) for n in self.window_steps]
        self._time_names = [(time_window_name(s), float(s)) for s in self.window_seconds]
        self.window_names = [n for n, _ in self._step_names + self._time_names]
        self._clock = clock
        self._ranks: dict[tuple[str, int], RankState] = {}
        self.crossrank_metrics = frozenset(vocab.canonical(m) for m in crossrank_metrics)
        self.limits = limits or Limits()
        self._cardinality = CardinalityGuard(self.limits.max_metrics_per_run)
        params = detector_params or {}
        self._nonfinite = NonFiniteDetector()
        self._detectors = build_value_detectors(params)
        self._errors = ErrorBurstDetector(
            with_overrides(ErrorBurstParams(), params.get("error_burst"))
        )
        self._loss = TelemetryLossDetector(
            with_overrides(TelemetryLossParams(), params.get("telemetry_loss"))
        )
        #: Ranks whose open episodes were restated since the last rebalance (None: no
        #: rebalance since start; see `rebalanced`).
        self._restated: set[tuple[str, int]] | None = None
        #: Dead letters by reason since start, for the worker's log.
        self.rejected: dict[str, int] = {}
        #: (run, reason) pairs already alerted on (one alert per run and reason).
        self._rejected_runs: set[tuple[str, str]] = set()

    def _new_series(self, metric: str) -> SeriesWindows:
        return SeriesWindows(
            self.window_steps[-1] if self.window_steps else None,
            self.window_seconds[-1] if self.window_seconds else None,
            [d for d in self._detectors if d.wants(metric)],
            vocab.canonical(metric) in self.crossrank_metrics or _always_forwarded(metric),
            metric,
        )

    def _state(self, batch: Batch) -> RankState:
        state = self._ranks.get((batch.run, batch.rank))
        if state is None or state.incarnation != batch.incarnation:
            previous = state
            run = previous.run if previous is not None else batch.run
            state = RankState(incarnation=batch.incarnation, run=run)
            if previous is not None:
                # A restarted publisher starts its seq again; its history stays.
                state.series = previous.series
                state.last_step, state.last_t = previous.last_step, previous.last_t
                # Quality windows start empty: a restarted job re-sends the steps since its
                # checkpoint, and summing them again would count those examples twice.
            self._ranks[(batch.run, batch.rank)] = state
        return state

    def forget(self, series: Iterable[tuple[str, int]]) -> int:
        """Drop the state of these (run, rank) publishers: their partition was processed
        elsewhere meanwhile, so what this stage holds is stale (a seq gap that is no loss,
        windows missing what the other worker saw); they restart cold. How many dropped."""
        return sum(1 for key in series if self._ranks.pop(key, None) is not None)

    def expire(self, now: float, idle_s: float) -> list[RankKey]:
        """Forget the (run, rank) publishers no batch came from for `idle_s` (processor
        clock): their windows, dedup watermark, and every detector's state and open
        episodes of their series (ended without a cleared flag: their alerts resolve on
        the alert engine's quiet timeout). A run with no rank left loses its metric-name
        cap too. A publisher that comes back starts cold, as after a partition move.
        Without this the stage held every rank of every run it ever saw."""
        gone = [key for key, state in self._ranks.items() if now - state.heard >= idle_s]
        if not gone:
            return gone
        for key in gone:
            del self._ranks[key]
        ranks = set(gone)
        for detector in self._detectors:
            detector.forget(ranks)
        self._nonfinite.forget(ranks)
        self._errors.forget(ranks)
        self._loss.forget(ranks)
        live_runs = {run for run, _ in self._ranks}
        for run in {run for run, _ in gone} - live_runs:
            self._cardinality.names.pop(run, None)
        self._rejected_runs = {k for k in self._rejected_runs if k[0] in live_runs}
        return gone

    def interval_s(self, now: float) -> float:
        """The stats interval in force: `stats_interval_s`, or the series held over the
        budget where that is longer (the count is refreshed once a second)."""
        if self.stats_budget_per_s <= 0:
            return self.stats_interval_s
        if now - self._interval_at >= 1.0 or now < self._interval_at:
            self._interval_at = now
            held = sum(len(state.series) for state in self._ranks.values())
            self._interval_s = max(self.stats_interval_s, held / self.stats_budget_per_s)
        return self._interval_s

    def held(self) -> int:
        """How many (run, rank) publishers the stage holds state for."""
        return len(self._ranks)

    def process(self, batch: Batch) -> StageResult:
        """Apply one batch; return the fresh stats of the series it touched and any alerts."""
        return self.process_many([batch])

    def process_many(self, batches: Sequence[Batch]) -> StageResult:
        """Apply batches in order; window stats are computed once per touched series."""
        result = StageResult()
        now = self._clock()
        flags: list[Flag] = []
        touched: dict[tuple[str, int], tuple[Batch, RankState, dict[str, float]]] = {}
        flagged: dict[tuple[str, int, str], list[str]] = {}
        # One summary per rank per call: stage 2 pays a message per summary.
        parts: dict[tuple[str, int], list[RankSummary]] = {}
        for index, batch in enumerate(batches):
            rejection = check_batch(batch, now, self.limits)
            if rejection is not None:
                self._reject(result, index, rejection)
                continue
            state = self._state(batch)
            jump = check_seq_jump(batch, state.high_seq, self.limits)
            if jump is not None:
                self._reject(result, index, jump)
                self._rejected_flag(batch.run, batch.rank, jump, now, flags)
                continue
            state.heard = now
            latest = touched.get((batch.run, batch.rank))
            values = latest[2] if latest else {}
            summary = self._apply(batch, state, values, flags, result, index)
            touched[(batch.run, batch.rank)] = (batch, state, values)
            parts.setdefault((batch.run, batch.rank), []).append(summary)
        if self._restated is not None:
            for run, rank in touched:
                if (run, rank) not in self._restated:
                    self._restated.add((run, rank))
                    flags.extend(self._restate(run, rank))
        summaries = {key: _merge(found) for key, found in parts.items()}
        result.summaries = list(summaries.values())
        result.alerts = [flag_to_alert(flag, now) for flag in flags]
        for flag, alert in zip(flags, result.alerts, strict=True):
            if flag.rank is None:
                continue
            # Stage 1's findings go to stage 2, where every rank of the run meets, to be
            # grouped into incidents (`processors.incidents`).
            target = summaries.get((flag.run, flag.rank))
            if target is None:
                # A finding on a batch the stage refused whole (a seq jump): a summary of
                # what the stage already knew of the rank carries it to stage 2.
                known = self._ranks.get((flag.run, flag.rank))
                target = summaries[(flag.run, flag.rank)] = RankSummary(
                    run=flag.run,
                    rank=flag.rank,
                    last_step=known.last_step if known else None,
                    last_t=known.last_t if known else 0.0,
                    status=known.status if known else None,
                )
                result.summaries.append(target)
            target.flags.append(alert)
            # A cleared flag reports an end, not a finding on this window.
            if flag.metric is not None and not flag.cleared:
                flagged.setdefault((flag.run, flag.rank, flag.metric), []).append(flag.detector)
        pending: list[tuple[Batch, RankState, dict[str, float], _Windows]] = []
        due: list[_Due] = []
        for (_run, _rank), (batch, state, values) in touched.items():
            if values or state.quality_touched or state.status_changed:
                windows = self._due(batch, state, values, flagged, now, due)
                pending.append((batch, state, values, windows))
        self._fill(due, now)
        for batch, state, values, windows in pending:
            if state.quality_touched:
                values.update(self._quality_metrics(batch.run, state, windows))
            result.updates.append(
                self._window_update(batch.run, batch.rank, state, values, windows)
            )
        return result

    def rebalanced(self) -> None:
        """The worker's partitions were reassigned: restate each rank's open episodes at
        its next batch. Its run's summaries may now go to another worker, whose alert
        engine took the run's alerts over from Redis and waits for them to be re-asserted
        (`AlertEngine.restore`); an episode still open here would not start again."""
        self._restated = set()

    def _restate(self, run: str, rank: int) -> list[Flag]:
        detectors: list[ValueDetector] = [self._nonfinite, *self._detectors]
        out = [f for d in detectors for f in d.restated(run, rank)]
        return out + self._errors.restated(run, rank) + self._loss.restated(run, rank)

    def admitted(self, run: str, metric: str) -> bool:
        """True if `metric` of `run` got past the cardinality cap (what may be forwarded)."""
        return metric in self._cardinality.names.get(run, ())

    def _rejected_flag(
        self, run: str, rank: int, rejection: Rejection, t: float, flags: list[Flag]
    ) -> None:
        """One alert per run and reason for telemetry the stage refuses on purpose (a seq
        jump, the metric-name cap): the dead letters carry each case, the alert says it
        happens. It stays open while the run is held (`forget`/`expire` end it)."""
        key = (run, rejection.reason)
        if key in self._rejected_runs:
            return
        self._rejected_runs.add(key)
        flags.append(
            Flag(
                detector=REJECTED,
                run=run,
                rank=rank,
                metric=None,
                step=None,
                t=t,
                severity="warning",
                summary=f"telemetry of run {run} refused ({rejection.reason}): {rejection.detail}",
                labels={"reason": rejection.reason},
            )
        )

    def _reject(self, result: StageResult, index: int, rejection: Rejection) -> None:
        result.rejected.append((index, rejection))
        self.rejected[rejection.reason] = self.rejected.get(rejection.reason, 0) + 1

    def _apply(
        self,
        batch: Batch,
        state: RankState,
        touched: dict[str, float],
        flags: list[Flag],
        result: StageResult,
        index: int,
    ) -> RankSummary:
        run, rank = state.run, batch.rank
        steps: dict[int, StepPoint] = {}
        nonfinite: dict[int, StepPoint] = {}
        refused: set[str] = set()
        # What the heartbeats of this batch said; made only when one comes (a model per
        # batch was 2 % of the stage).
        beat: RankSummary | None = None
        duplicates = lost = received = 0
        series_of = state.series
        isfinite = math.isfinite
        for record in batch.records:
            if record.seq <= state.high_seq:
                duplicates += 1
                continue
            if record.seq > state.high_seq + 1 and state.high_seq >= 0:
                lost += record.seq - state.high_seq - 1
            received += 1
            state.high_seq = record.seq
            step, t = record.step, record.t
            if step is not None and (state.last_step is None or step > state.last_step):
                state.last_step = step
            if t > state.last_t:
                state.last_t = t
            if record.kind in UNWINDOWED_KINDS:
                if record.kind == RecordKind.HEARTBEAT:
                    if beat is None:
                        beat = RankSummary(run=run, rank=rank)
                    heartbeat(state, record, beat)
                    continue
                if record.kind == RecordKind.LOG:
                    flag = self._errors.observe_log(run, rank, step, t, record.values, record.text)
                    if flag is not None:
                        flags.append(flag)
                continue
            if record.kind == RecordKind.QUALITY:
                if step is not None:
                    self._add_quality(state, step, t, record.values, steps)
                continue
            point = None
            for metric, value in record.values.items():
                series = series_of.get(metric)
                if series is None:
                    if not self._cardinality.admit(run, metric):
                        refused.add(metric)
                        continue
                    # One string per name across ranks: the detectors' state made now
                    # keys by it (each message parses its own copy).
                    metric = sys.intern(metric)
                    series = series_of[metric] = self._new_series(metric)
                # `RollingWindow.add`, its in-order case inlined (it runs once per value).
                window = series.by_step
                if step is not None and window is not None:
                    held = window.positions
                    if held and step > held[-1] and held[0] > step - window.evict_gap:
                        held.append(step)
                        window.buf.append(value)
                    else:
                        window.add(step, value)
                window = series.by_time
                if window is not None:
                    held = window.positions
                    if held and t > held[-1] and held[0] > t - window.evict_gap:
                        held.append(t)
                        window.buf.append(value)
                    else:
                        window.add(t, value)
                touched[metric] = value
                if not isfinite(value) or series.nonfinite:
                    series.nonfinite = not isfinite(value)
                    flags.extend(self._nonfinite.observe(run, rank, metric, step, t, value))
                    if series.nonfinite and series.rank_local and step is not None:
                        # Every step it lasts: stage 2 keeps the origin incident open
                        # while any rank-local value is still non-finite.
                        bad = nonfinite.get(step)
                        if bad is None:
                            bad = nonfinite[step] = StepPoint(step=step, t=t)
                        bad.values[metric] = value
                for detector in series.detectors:
                    found = detector.observe(run, rank, metric, step, t, value)
                    if found:
                        flags.extend(found)
                if series.forward and step is not None:
                    if point is None:
                        point = steps.get(step)
                        if point is None:
                            point = steps[step] = StepPoint(step=step, t=t)
                    point.values[series.canonical] = value
        state.duplicates += duplicates
        state.lost += lost
        result.duplicates += duplicates
        result.lost += lost
        if lost or received:
            flag = self._loss.observe_batch(
                run, rank, state.last_step, state.last_t, lost, received
            )
            if flag is not None:
                flags.append(flag)
            flag = self._errors.advance(run, rank, state.last_step, state.last_t)
            if flag is not None:
                flags.append(flag)
        if refused:
            names = sorted(refused)
            rejection = Rejection(
                "cardinality",
                f"run {run} is at its cap of {self.limits.max_metrics_per_run} metric names; "
                f"dropped {len(names)}: {', '.join(names[:10])}",
            )
            self._reject(result, index, rejection)
            self._rejected_flag(run, rank, rejection, state.last_t or self._clock(), flags)
        return RankSummary(
            run=run,
            rank=rank,
            world=batch.world,
            node=batch.node,
            last_step=state.last_step,
            last_t=state.last_t,
            records=received,
            steps=[steps[s] for s in sorted(steps)],
            nonfinite=[nonfinite[s] for s in sorted(nonfinite)],
            status=state.status,
            incarnation=state.incarnation,
            phase=beat.phase if beat else None,
            phase_s=beat.phase_s if beat else None,
            stack=beat.stack if beat else None,
            stack_t=beat.stack_t if beat else None,
            mesh=beat.mesh if beat else None,
        )

    def _add_quality(
        self,
        state: RankState,
        step: int,
        t: float,
        values: Mapping[str, float],
        steps: dict[int, StepPoint],
    ) -> None:
        """Feed one quality record to the rank's windows (by task) and to its step point
        for stage 2. Distinct records of one step add up (e.g. one per micro-batch)."""
        for task, stats in split_by_task(values).items():
            window = state.quality.get(task)
            if window is None:
                window = state.quality[task] = QualityWindow(
                    self.quality_window_steps, self._math(task)
                )
            window.add(step, stats, accumulate=True)
            state.quality_touched.add(task)
            point = steps.get(step)
            if point is None:
                point = steps[step] = StepPoint(step=step, t=t)
            for name, value in stats.items():
                if math.isfinite(value):
                    point.quality[name] = point.quality.get(name, 0.0) + value

    def _math(self, task: str) -> TaskQuality:
        math_ = self._quality_math.get(task)
        if math_ is None:
            math_ = self._quality_math[task] = TaskQuality(task)
        return math_

    def _quality_metrics(self, run: str, state: RankState, windows: _Windows) -> dict[str, float]:
        """Metrics of the touched quality windows into `windows`; their values."""
        out: dict[str, float] = {}
        target = windows.setdefault(self._quality_name, {})
        for task in sorted(state.quality_touched):
            window = state.quality[task]
            for short, (value, examples) in self._math(task).counted(window.sums()).items():
                name = metric_name(task, short)
                if not self._cardinality.admit(run, name):
                    self.rejected["cardinality"] = self.rejected.get("cardinality", 0) + 1
                    continue
                target[name] = quality_stats(value, examples)
                out[name] = value
        state.quality_touched.clear()
        return out

    def _due(
        self,
        batch: Batch,
        state: RankState,
        touched: dict[str, float],
        flagged: dict[tuple[str, int, str], list[str]],
        now: float,
        due: list[_Due],
    ) -> _Windows:
        """The rank's window stats to fill: its series whose stats are due go to `due`
        (filled later with every rank's, see `_fill`), the others wait in `pending`."""
        state.world, state.node = batch.world, batch.node
        windows: _Windows = {name: {} for name in self.window_names}
        for metric, value in touched.items():
            series = state.series[metric]
            marks = flagged.get((batch.run, batch.rank, metric))
            if series.stats_due > now and marks is None:
                state.pending[metric] = value
                series.held_at = now
                continue
            state.pending.pop(metric, None)
            due.append((windows, metric, series, marks))
        return windows

    def _fill(self, due: list[_Due], now: float) -> None:
        """The window stats of every due series, of every rank of a call, into its rank's
        windows: each window size summarized for all of them at once.

        `summarize_windows` stacks the windows of equal length into 2-D numpy reductions,
        whose cost is per call, not per row: one rank's few dozen series paid it for a
        handful of rows (3 ms a message of 65 values, most of a worker's CPU at 256 ranks
        sending once a second), every rank of a batch together spreads it over thousands.
        """
        due_at = now + self.interval_s(now)
        by_step: list[tuple[_Windows, str, RollingWindow, list[str] | None]] = []
        by_time: list[tuple[_Windows, str, RollingWindow, list[str] | None]] = []
        for windows, metric, series, marks in due:
            series.stats_due = due_at
            if series.by_step is not None and series.by_step.newest is not None:
                by_step.append((windows, metric, series.by_step, marks))
            if series.by_time is not None:
                by_time.append((windows, metric, series.by_time, marks))
        for names, held in ((self._step_names, by_step), (self._time_names, by_time)):
            if not held:
                continue
            for name, span in names:
                found = summarize_windows([window for _, _, window, _ in held], span)
                for (windows, metric, _, marks), summary in zip(held, found, strict=True):
                    plain = marks is None and is_plain(summary)
                    windows[name][metric] = summary if plain else _stats(summary, marks)

    def _window_update(
        self,
        run: str,
        rank: int,
        state: RankState,
        latest: dict[str, float],
        windows: _Windows,
    ) -> StageUpdate:
        state.status_changed = False
        return StageUpdate(
            run=run,
            rank=rank,
            world=state.world,
            node=state.node,
            step=state.last_step,
            t=state.last_t,
            latest=latest,
            windows=windows,
            status=state.status,
        )

    def flush(self, now: float | None = None) -> list[StageUpdate]:
        """Window updates with the stats the rate limit held back and that are now due."""
        now = self._clock() if now is None else now
        interval = self.interval_s(now)
        found: list[tuple[str, int, RankState, dict[str, float], _Windows]] = []
        due: list[_Due] = []
        for (run, rank), state in self._ranks.items():
            if not state.pending:
                continue
            windows: _Windows = {n: {} for n in self.window_names}
            latest: dict[str, float] = {}
            for metric, value in list(state.pending.items()):
                series = state.series[metric]
                # A series held back within the interval is still arriving: its next
                # value computes the stats, spread over the arrivals. Flushing every due
                # series at once made a burst of all ranks' stats each tick, and the p99
                # lag with it; the flush is for series that went quiet.
                if series.stats_due > now or now - series.held_at < interval:
                    continue
                del state.pending[metric]
                latest[metric] = value
                due.append((windows, metric, series, None))
            if latest:
                found.append((run, rank, state, latest, windows))
        self._fill(due, now)
        return [
            self._window_update(run, rank, state, latest, windows)
            for run, rank, state, latest, windows in found
        ]
