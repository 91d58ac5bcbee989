"""Stage 2, per run: per-step statistics across ranks and the cross-rank detectors.

Fed the compact per-rank summaries stage 1 writes to the summaries topic (key = run, so
one run's ranks meet in one partition and one process). A step is finished when every rank
of the run reported a later step, or when it has waited `lag_s` seconds (a dead or slow rank
must not hold the others' stats back). Pure logic; `processors.app` wires it to faust and
calls `tick` from a timer for the time-based detectors.

Quality: the quality sufficient statistics a summary carries per step (`StepPoint.quality`)
are summed across the ranks of a finished step and fed to one `QualityWindow` per (run,
task); each `CrossRankUpdate` of a step that had any carries the run-level quality metrics
of the window (`CrossRankUpdate.quality`), exactly as if one process had seen every example.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from processors.detectors import (
    DesyncDetector,
    DesyncParams,
    DPMismatchDetector,
    DPMismatchParams,
    GradientDetector,
    GradientParams,
    LivenessDetector,
    LivenessParams,
    NonFiniteOrigin,
    NonFiniteOriginParams,
    StragglerDetector,
    StragglerParams,
)
from processors.detectors.base import median, with_overrides
from processors.detectors.failslow import FailSlowDetector, FailSlowParams
from processors.detectors.slowdown import SlowdownDetector, SlowdownParams
from processors.flags import Flag, flag_to_alert
from processors.goodput import GoodputMeter
from processors.incidents import Incidents
from processors.quality_windows import QualityWindow, TaskQuality, metric_name, split_by_task
from processors.windows import finite_mean, population_std
from stepstream import vocabulary as vocab
from stepstream.contract import Alert, CrossRankStats, CrossRankUpdate, RankSummary, WindowStats
from stepstream.keys import step_window_name
from stepstream.vocabulary import canonical

#: The label naming the mesh coordinates of the rank a flag names (``dp=0 pp=1 tp=0``).
MESH_LABEL = "mesh"

#: Every norm stage 2 combines is a gradient's (canonical names: ``grad/...``).
_GRAD = "grad/"
_STEP_TIME = vocab.STEP_TIME.name

#: The rank key under which stage 2's detectors keep a run's job-level series.
_JOB = -1

#: The least quiet after a run finished before its incidents end (see
#: RunStage._end_finished): stage-1 partitions lag one another by seconds under load.
FINISHED_QUIET_S = 10.0

#: Detectors whose episodes the liveness detector ends silently when it forgets a run.
LIVENESS_DETECTORS = (vocab.DEAD_RANK, vocab.HUNG_RANK, vocab.RANK_EXITED, vocab.NODE_LOST)


@dataclass
class _PendingStep:
    t: float
    #: Processor time the step was first reported by any rank.
    seen: float = 0.0
    ranks: dict[int, dict[str, float]] = field(default_factory=dict)
    #: Quality statistics of the step summed over the ranks that reported it.
    quality: dict[str, float] = field(default_factory=dict)


@dataclass
class _RunState:
    world: int = 1
    newest: int = -1
    #: Highest step finished: data for it that comes later is left out.
    finished: int = -1
    steps: dict[int, _PendingStep] = field(default_factory=dict)
    latest: dict[int, int] = field(default_factory=dict)
    quality: dict[str, QualityWindow] = field(default_factory=dict)
    #: Processor clock when a summary of the run last came (see `RunStage.expire`).
    heard: float = 0.0
    #: Each rank's device-mesh coordinates (role -> index), from its heartbeats.
    mesh: dict[int, dict[str, int]] = field(default_factory=dict)
    #: The run's live goodput, and each rank's publisher incarnation: a rank that comes
    #: back as a new one makes the gap before the next finished step a restart gap.
    goodput: GoodputMeter = field(default_factory=GoodputMeter)
    incarnations: dict[int, str] = field(default_factory=dict)
    restarted: bool = False
    #: The newest event time any rank said (heartbeats included), and the one the last
    #: goodput sent covered: a hang in progress is shown while no step finishes.
    said: float = 0.0
    goodput_said: float = 0.0
    #: Its incidents were ended because every rank closed (see `RunStage._end_finished`);
    #: a summary after that (a rank back) lets a later finish end them again.
    ended: bool = False

    def roles(self) -> dict[int, tuple[int, int]]:
        """A rank's part of the model: (pipeline stage, tensor-parallel index)."""
        return {r: (c.get(vocab.MESH_PP, 0), c.get(vocab.MESH_TP, 0)) for r, c in self.mesh.items()}

    def sharded_forward(self) -> bool:
        """True when the forward holds collectives (FSDP2 all-gathers, tensor-parallel
        exchanges): a rank's forward time then includes waiting for its peers."""
        return any(vocab.MESH_FSDP in c or vocab.MESH_TP in c for c in self.mesh.values())

    def replicas(self) -> dict[int, tuple[int, int, int]]:
        """A rank's replica group: ranks equal on every coordinate but ``dp`` hold the same
        shard."""
        return {
            r: (c.get(vocab.MESH_PP, 0), c.get(vocab.MESH_TP, 0), c.get(vocab.MESH_FSDP, 0))
            for r, c in self.mesh.items()
        }


@dataclass
class RunResult:
    """What one summary (or one tick) produced."""

    crossrank: list[CrossRankUpdate] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)


def combine_norms(
    ranks: Mapping[int, Mapping[str, float]], stats: dict[str, CrossRankStats]
) -> dict[str, float]:
    """Set `CrossRankStats.combined` on the norms of one complete step: the root of the
    ranks' summed squared shares for a sharded model (the shares' own entries leave
    `stats`: no rank's share means anything alone), the replicas' median for a model every
    rank holds whole. Returns the combined norms of the sharded model (for its gradient
    detectors)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for values in ranks.values():
        for metric, value in values.items():
            # Stage 2 holds canonical names: only gradient norms can combine (a string
            # test per value on this per-step loop, not a vocabulary lookup).
            if not metric.startswith(_GRAD):
                continue
            target = vocab.combined_name(metric)
            if target is not None:
                sums[target] = sums.get(target, 0.0) + value
                counts[target] = counts.get(target, 0) + 1
    for metric in [m for m in stats if m.startswith(_GRAD) and vocab.is_sharded(m)]:
        del stats[metric]
    sharded: dict[str, float] = {}
    for target, total in sums.items():
        norm = math.sqrt(total) if total >= 0 else math.nan  # NaN stays NaN
        sharded[target] = norm
        known = stats.get(target)
        if known is None:
            stats[target] = CrossRankStats(ranks=counts[target], combined=norm)
        else:
            known.combined = norm
    for metric, entry in stats.items():
        if not metric.startswith(_GRAD) or metric in sharded:
            continue
        if not vocab.is_signal(metric, vocab.GRAD_NORM, vocab.GRAD_LAYER_NORM):
            continue
        replicas = [v[metric] for v in ranks.values() if metric in v and math.isfinite(v[metric])]
        if replicas:
            entry.combined = median(replicas)
    return sharded


def crossrank_stats(ranks: Mapping[int, Mapping[str, float]]) -> dict[str, CrossRankStats]:
    """Mean, min, max, population std and the arg-min/max rank of each metric across ranks;
    non-finite values are left out (the non-finite detectors report them)."""
    by_metric: dict[str, list[tuple[float, int]]] = {}
    for rank, values in ranks.items():
        for metric, value in values.items():
            if math.isfinite(value):
                by_metric.setdefault(metric, []).append((value, rank))
    out: dict[str, CrossRankStats] = {}
    for metric, pairs in by_metric.items():
        vals = [v for v, _ in pairs]
        mean = finite_mean(vals)
        low, high = min(pairs), max(pairs)
        out[metric] = CrossRankStats(
            ranks=len(vals),
            mean=mean,
            min=low[0],
            max=high[0],
            std=population_std(vals, mean),
            argmin=low[1],
            argmax=high[1],
        )
    return out


class RunStage:
    """Aggregates rank summaries per run and step; runs the cross-rank detectors.

    `lag_s`: a step not every rank has moved past is finished after waiting this long (a
    dead or stalled rank must not hold the others' stats back; the ranks of a run live in
    different partitions, so their data can arrive hundreds of fast steps apart).
    `max_pending_steps`: beyond this many waiting steps of a run, the oldest are finished.
    `heartbeat_interval_s` / `hung_after_s`: liveness parameters (see LivenessParams).
    `detector_params`: overrides by detector name (straggler, fail_slow, job_slowdown,
    dp_mismatch, rank_desync, liveness, nonfinite_origin). `clock` stamps `raised_at`.
    `quality_window_steps`: size of the run-level quality windows (finished steps).
    `incident_hold_s`: an incident whose series all cleared ends after this long without a
    new flag (see `processors.incidents`); 0 ends it at once.
    `goodput_refresh_s`: while no step of a run finishes, its goodput (the wait so far as
    hang/stall) is sent again each time its ranks' event time moved this far (the timer's
    `flush_steps`): the goodput a reader sees is never older than that plus the pipeline.
    """

    def __init__(
        self,
        *,
        lag_s: float = 5.0,
        max_pending_steps: int = 20_000,
        heartbeat_interval_s: float = 1.0,
        hung_after_s: float = 120.0,
        detector_params: Mapping[str, Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
        quality_window_steps: int = 50,
        incident_hold_s: float = 0.0,
        goodput_refresh_s: float = 5.0,
    ) -> None:
        self.goodput_refresh_s = goodput_refresh_s
        #: A finished run's incidents end once nothing of it came this long: the hold,
        #: and at least the seconds one partition may lag another (see _end_finished).
        self.finished_quiet_s = max(incident_hold_s, FINISHED_QUIET_S)
        self.quality_window_steps = quality_window_steps
        self._quality_name = step_window_name(quality_window_steps)
        params = detector_params or {}
        self.lag_s = lag_s
        self.max_pending_steps = max_pending_steps
        self._clock = clock
        self._runs: dict[str, _RunState] = {}
        self.straggler = StragglerDetector(
            with_overrides(StragglerParams(), params.get("straggler"))
        )
        self.failslow = FailSlowDetector(with_overrides(FailSlowParams(), params.get("fail_slow")))
        self.slowdown = SlowdownDetector(
            with_overrides(SlowdownParams(), params.get("job_slowdown"))
        )
        self.dp = DPMismatchDetector(with_overrides(DPMismatchParams(), params.get("dp_mismatch")))
        self.desync = DesyncDetector(with_overrides(DesyncParams(), params.get("rank_desync")))
        liveness = LivenessParams(
            heartbeat_interval_s=heartbeat_interval_s, hung_after_s=hung_after_s
        )
        self.liveness = LivenessDetector(with_overrides(liveness, params.get("liveness")))
        self.origin = NonFiniteOrigin(
            with_overrides(NonFiniteOriginParams(), params.get("nonfinite_origin"))
        )
        self.incidents = Incidents(hold_s=incident_hold_s)
        # A sharded model's gradient norms exist only once stage 2 combined the shares:
        # the same detector stage 1 runs per rank judges them here, per run.
        self.gradients = GradientDetector(with_overrides(GradientParams(), params.get("gradients")))

    def process(self, summary: RankSummary, now: float) -> RunResult:
        """Apply one rank summary received at `now` (processor clock)."""
        run, rank = summary.run, summary.rank
        state = self._runs.setdefault(run, _RunState())
        state.heard = now
        state.ended = False
        state.world = max(state.world, summary.world)
        if summary.mesh is not None:
            state.mesh[rank] = summary.mesh
        if summary.last_t > state.said:
            state.said = summary.last_t
        if summary.incarnation:
            known = state.incarnations.get(rank)
            if known is not None and known != summary.incarnation:
                state.restarted = True
            state.incarnations[rank] = summary.incarnation
        # Hearing from a rank ends its dead (and, if its step moved, hung) episode.
        flags: list[Flag] = self.liveness.seen(
            run,
            rank,
            summary.world,
            summary.last_step,
            now,
            status=summary.status,
            phase=summary.phase,
            phase_s=summary.phase_s,
            stack=summary.stack,
            node=summary.node,
            said=summary.last_t or None,
            partition=summary.partition,
        )
        for point in summary.nonfinite:
            for metric, value in point.values.items():
                flag = self.origin.nonfinite(
                    run, rank, summary.world, metric, point.step, point.t, value, now
                )
                if flag is not None:
                    flags.append(flag)
        if summary.last_step is not None:
            if summary.last_step > state.latest.get(rank, -1):
                state.latest[rank] = summary.last_step
            flag = self.origin.progress(run, rank, summary.last_step, now, summary.last_t)
            if flag is not None:
                flags.append(flag)
            flag = self.desync.observe(run, rank, summary.last_step, summary.last_t)
            if flag is not None:
                flags.append(flag)
        for point in summary.steps:
            pending = state.steps.get(point.step)
            if pending is None:
                if point.step <= state.finished:
                    continue  # already finished without this rank
                pending = state.steps[point.step] = _PendingStep(t=point.t, seen=now)
            pending.t = max(pending.t, point.t)
            # Cross-rank analysis speaks the vocabulary: an alias logged by hand
            # (``data_time``) meets the SDK's name (``perf/data_wait_s``).
            values = pending.ranks.setdefault(rank, {})
            for name, value in point.values.items():
                values[canonical(name)] = value
            for name, value in point.quality.items():
                pending.quality[name] = pending.quality.get(name, 0.0) + value
            state.newest = max(state.newest, point.step)
        result = RunResult()
        self._finish(run, state, now, result, flags)
        # Stage 1's findings (its flags as alerts, in the summary) come first.
        result.alerts = self._raise(flags, now, found=summary.flags)
        return result

    def _finish(
        self, run: str, state: _RunState, now: float, result: RunResult, flags: list[Flag]
    ) -> None:
        """Finish the steps of `run` that are complete or waited long enough: their
        cross-rank stats into `result`, the step detectors' flags into `flags`."""
        # Not finished early when every rank closed: stage 1 holds a rank's step values
        # up to its summary interval while its closing heartbeat goes at once, so the
        # close can arrive first (a last step of one rank, seen in test_pipeline). The
        # last steps wait `lag_s` like any other.
        for step in sorted(state.steps):
            pending = state.steps[step]
            # Finished once every rank has moved past it: a rank's records of one step can
            # be split over two messages (the publisher flushes on a timer), and a rank's
            # summaries arrive in order, so a later step means its step is complete.
            done = all(state.latest.get(r, -1) > step for r in range(state.world))
            waited = now - pending.seen >= self.lag_s
            if not (done or waited or len(state.steps) > self.max_pending_steps):
                break  # later steps wait too: nobody is past them if nobody is past this
            del state.steps[step]
            state.finished = max(state.finished, step)
            stats = crossrank_stats(pending.ranks)
            goodput = None
            times = [
                v[_STEP_TIME]
                for v in pending.ranks.values()
                if _STEP_TIME in v and math.isfinite(v[_STEP_TIME])
            ]
            if times:
                self.liveness.step_time(run, median(times))
            if len(pending.ranks) >= state.world:
                # Only a step every rank reported adds up to the job's norms.
                combined = combine_norms(pending.ranks, stats)
                flags.extend(self._judge_combined(run, step, pending.t, combined))
                if state.goodput.add_step(step, pending.t, pending.ranks, state.restarted):
                    state.restarted = False
                    goodput = state.goodput.snapshot(run)
                    state.goodput_said = max(state.goodput_said, pending.t)
            else:
                for metric in [m for m in stats if m.startswith(_GRAD) and vocab.is_sharded(m)]:
                    del stats[metric]
            result.crossrank.append(
                CrossRankUpdate(
                    run=run,
                    step=step,
                    t=pending.t,
                    world=state.world,
                    stats=stats,
                    quality=self._quality(state, step, pending.quality),
                    goodput=goodput,
                )
            )
            mesh = state.mesh or None
            flags.extend(
                self.straggler.observe_step(
                    run,
                    step,
                    pending.t,
                    pending.ranks,
                    state.roles() if mesh else None,
                    sharded=state.sharded_forward(),
                )
            )
            roles = state.roles() if mesh else None
            sharded = state.sharded_forward()
            flags.extend(
                self.failslow.observe_step(
                    run, step, pending.t, pending.ranks, roles, sharded=sharded
                )
            )
            if len(pending.ranks) >= state.world:
                # A step some rank never reported says nothing about the job's rate.
                flags.extend(
                    self.slowdown.observe_step(run, step, pending.t, pending.ranks, sharded)
                )
            flags.extend(
                self.dp.observe_step(
                    run, step, pending.t, pending.ranks, state.replicas() if mesh else None
                )
            )

    def _judge_combined(
        self, run: str, step: int, t: float, norms: Mapping[str, float]
    ) -> list[Flag]:
        """The gradient detectors' verdicts on a sharded model's combined norms: findings
        of the job, so of no rank."""
        flags: list[Flag] = []
        for metric, value in norms.items():
            if self.gradients.wants(metric):
                for flag in self.gradients.observe(run, _JOB, metric, step, t, value):
                    flags.append(dataclasses.replace(flag, rank=None))
        return flags

    def flush_steps(self, now: float) -> RunResult:
        """Finish the steps that waited `lag_s` with no summary coming (the last steps of a
        run that ended, the steps a dead rank never reported), and the goodput of runs
        whose steps stopped finishing while their ranks still speak: called from a timer."""
        result = RunResult()
        flags: list[Flag] = []
        for run, state in self._runs.items():
            if state.steps:
                self._finish(run, state, now, result, flags)
            self._goodput_in_between(run, state, result)
        result.alerts = self._raise(flags, now)
        result.alerts += _stamped(self._end_finished(now), self._clock())
        return result

    def _end_finished(self, now: float) -> list[Alert]:
        """End the incidents of runs whose ranks all closed, whose steps are all finished
        and of which nothing was heard for `finished_quiet_s`: their ends. Nothing
        can clear them later (a NaN that ended the run, a non-finite origin waiting for
        `rearm_steps` more steps, a straggler at the last step), and left open they kept a
        finished run's alerts firing until the resolve timeout (300 s). The run-level
        detectors forget the run's episodes with them, so a run that comes back opens
        fresh ones; its steps, goodput and liveness stay until the run goes idle
        (`expire`).

        Not at the summary that closed the last rank: its ranks' summaries travel through
        different partitions, and one rank's last flags can arrive seconds after another
        rank's close. Ended then, the run's incidents reopened for those flags and paged
        again (three pages for one NaN, ranks publishing one after another)."""
        out: list[Alert] = []
        for run, state in self._runs.items():
            if state.ended or state.steps or now - state.heard < self.finished_quiet_s:
                continue
            if not self.liveness.finished(run):
                continue
            state.ended = True
            for detector in (
                self.straggler,
                self.failslow,
                self.slowdown,
                self.desync,
                self.dp,
                self.origin,
            ):
                detector.forget(run)
            self.gradients.forget([(run, _JOB)])
            t = state.said or self._clock()
            out += self.incidents.end_run(run, t, f"run {run} finished: every rank closed")
        return out

    def _goodput_in_between(self, run: str, state: _RunState, result: RunResult) -> None:
        """While no step of a counted run finishes but its ranks still speak (a hang, a
        stall, a long declared phase), its goodput with the time so far as ``hang_stall``,
        once `goodput_refresh_s` of event time passed since the last one sent."""
        meter = state.goodput
        if meter.last_t is None or state.said - state.goodput_said < self.goodput_refresh_s:
            return
        state.goodput_said = state.said
        result.crossrank.append(
            CrossRankUpdate(
                run=run,
                step=meter.last_step if meter.last_step is not None else 0,
                t=state.said,
                world=state.world,
                goodput=meter.snapshot(run, until=state.said),
            )
        )

    def _raise(self, flags: list[Flag], now: float, found: Iterable[Alert] = ()) -> list[Alert]:
        """The alerts of stage 1's findings `found` and of this stage's `flags`, grouped
        into one incident per run and detector; a finding naming a rank of a sharded job
        carries the rank's mesh coordinates (label ``mesh``: its role)."""
        raised = self._clock()
        findings = [*found, *(flag_to_alert(f, raised) for f in flags)]
        findings = [self._with_role(f) for f in findings]
        return _stamped(self.incidents.apply_all(findings, now), raised)

    def _with_role(self, finding: Alert) -> Alert:
        state = self._runs.get(finding.run) if finding.rank is not None else None
        coords = (
            state.mesh.get(finding.rank) if state is not None and finding.rank is not None else None
        )
        if not coords or MESH_LABEL in finding.labels:
            return finding
        role = " ".join(f"{name}={index}" for name, index in sorted(coords.items()))
        return finding.model_copy(update={"labels": {**finding.labels, MESH_LABEL: role}})

    def _quality(
        self, state: _RunState, step: int, sums: Mapping[str, float]
    ) -> dict[str, dict[str, WindowStats]]:
        """Add a finished step's run-level statistics; the metrics of the tasks it had."""
        if not sums:
            return {}
        out: dict[str, WindowStats] = {}
        for task, stats in split_by_task(sums).items():
            window = state.quality.get(task)
            if window is None:
                window = state.quality[task] = QualityWindow(
                    self.quality_window_steps, TaskQuality(task)
                )
            window.add(step, stats, accumulate=True)
            for short, (value, n) in TaskQuality(task).counted(window.sums()).items():
                out[metric_name(task, short)] = WindowStats(count=int(n), mean=value, last=value)
        return {self._quality_name: out}

    def forget(self, runs: list[str]) -> None:
        """Drop the state of `runs`: their partition was processed by another worker
        meanwhile (this one was cut off), so what it holds is stale: ranks it last heard
        long ago would read as dead, and incidents it holds open would swallow new flags.
        They start afresh, as on a worker that takes a partition over."""
        for run in runs:
            self._runs.pop(run, None)
            self.liveness.forget(run)
            self.liveness.take_forgotten()
            self.incidents.forget(run)
            self.straggler.forget(run)
            self.failslow.forget(run)
            self.slowdown.forget(run)
            self.desync.forget(run)
            self.dp.forget(run)
            self.origin.forget(run)
            self.gradients.forget([(run, _JOB)])

    def expire(self, now: float, idle_s: float) -> list[str]:
        """Forget the runs no summary came for in `idle_s` (processor clock), as `forget`
        does: their alerts resolve on the alert engine's quiet timeout, and a run that
        comes back starts afresh. Without this the stage held every run it ever saw."""
        gone = [run for run, state in self._runs.items() if now - state.heard >= idle_s]
        self.forget(gone)
        return gone

    def held(self) -> int:
        """How many runs the stage holds state for."""
        return len(self._runs)

    def tick(self, now: float) -> list[Alert]:
        """Time-based verdicts at `now`: dead and hung ranks, settled non-finite origins.
        A dead or hung rank's end comes with its next summary instead: see `process`."""
        flags = self.liveness.tick(now)
        for run in self.liveness.take_forgotten():  # their episodes ended without a clear
            self.incidents.forget(run, LIVENESS_DETECTORS)
        alerts = self._raise(flags + self.origin.tick(now), now)
        return alerts + _stamped(self.incidents.tick(now), self._clock())


def _stamped(alerts: list[Alert], raised: float) -> list[Alert]:
    """`alerts` raised at `raised` (processor clock), as copies: the incidents' findings
    carry the time of the findings they were made of (stage 1's, or an opening raised
    earlier), and an incident keeps its opening to raise again."""
    return [a.model_copy(update={"raised_at": raised}) for a in alerts]
