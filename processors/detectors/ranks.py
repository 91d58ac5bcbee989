"""Cross-rank detectors (stage 2, per run): stragglers, step desync, dead and hung ranks,
and data-parallel gradient-norm mismatch."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from processors.detectors.base import median
from processors.flags import Episodes, Flag, cleared_flag, evidence


@dataclass(frozen=True)
class StragglerParams:
    """Parameters of `StragglerDetector`.

    metrics: per-step times spent outside collectives; a rank's work time is their sum.
        (Total step time cannot name the slow rank: every rank waits for it in the
        all-reduce, so all step times grow together.)
    window: steps per rank whose median is compared.
    min_points: steps a rank needs before it is judged (first steps are noisy: process
        start, allocator and data-loader warm-up).
    ratio: straggler when its median exceeds the median of the other ranks times this...
    min_excess_s: ...and by at least this many seconds.
    """

    metrics: tuple[str, ...] = ("data_time", "compute_time")
    window: int = 20
    min_points: int = 10
    ratio: float = 1.5
    min_excess_s: float = 0.02


class StragglerDetector:
    """Flags a rank whose work time is well above the other ranks'; it clears when the rank's
    median is back at or under the threshold. Fed one finished step at a time (every rank's
    values at that step). Delay: about min_points..window/2 steps."""

    name = "straggler"

    def __init__(self, params: StragglerParams | None = None) -> None:
        self.params = params or StragglerParams()
        self._times: dict[tuple[str, int], deque[float]] = {}
        self._episodes = Episodes()

    def observe_step(
        self, run: str, step: int, t: float, ranks: dict[int, dict[str, float]]
    ) -> list[Flag]:
        """Add one step of every rank; flags of ranks that start straggling and cleared flags
        of ranks that stop."""
        p = self.params
        for rank, values in ranks.items():
            parts = [values[m] for m in p.metrics if m in values and math.isfinite(values[m])]
            if parts:
                times = self._times.setdefault((run, rank), deque(maxlen=p.window))
                times.append(sum(parts))
        medians = {
            rank: median(times)
            for (r_run, rank), times in self._times.items()
            if r_run == run and len(times) >= p.min_points
        }
        flags: list[Flag] = []
        if len(medians) < 2:
            return flags
        for rank, own in medians.items():
            others = median(v for r, v in medians.items() if r != rank)
            threshold = max(others * p.ratio, others + p.min_excess_s)
            key = (run, rank)
            if own <= threshold:
                opening = self._episodes.end(key)
                if opening is not None:
                    flags.append(
                        cleared_flag(
                            opening,
                            step,
                            t,
                            f"rank {rank} straggler cleared at step {step}: {own * 1000:.0f} ms "
                            f"of work per step against {others * 1000:.0f} ms on the other ranks",
                            evidence(own, others, threshold, float(p.window)),
                        )
                    )
                continue
            if not self._episodes.is_open(key):
                flag = Flag(
                    detector=self.name,
                    run=run,
                    rank=rank,
                    metric="+".join(p.metrics),
                    step=step,
                    t=t,
                    severity="warning",
                    summary=f"rank {rank} is a straggler: {own * 1000:.0f} ms of work per step "
                    f"against {others * 1000:.0f} ms on the other ranks",
                    evidence=evidence(own, others, threshold, float(p.window)),
                )
                flags.append(self._episodes.start(key, flag))
        return flags


@dataclass(frozen=True)
class DesyncParams:
    """Parameters of `DesyncDetector`.

    max_spread: flag when the newest steps of a run's ranks differ by more than this.
    """

    max_spread: int = 50


class DesyncDetector:
    """Flags the laggard rank when the spread of the ranks' newest steps exceeds
    `max_spread`; it clears (naming the rank it flagged) when the spread is back within.
    Delay: the summary that makes the spread too large."""

    name = "rank_desync"

    def __init__(self, params: DesyncParams | None = None) -> None:
        self.params = params or DesyncParams()
        self._episodes = Episodes()

    def observe(self, run: str, t: float, steps: dict[int, int]) -> Flag | None:
        """Judge the newest step of each rank of `run`: a flag when a desync episode starts,
        a cleared flag when one ends."""
        if len(steps) < 2:
            return None
        lead = max(steps.values())
        laggard, low = min(steps.items(), key=lambda kv: (kv[1], kv[0]))
        spread = lead - low
        if spread <= self.params.max_spread:
            opening = self._episodes.end(run)
            if opening is None:
                return None
            # The flagged rank may no longer be the laggard: report where it is now.
            at = steps.get(opening.rank, low) if opening.rank is not None else low
            return cleared_flag(
                opening,
                at,
                t,
                f"rank desync of run {run} cleared: ranks {spread} steps apart (at most "
                f"{self.params.max_spread}), rank {opening.rank} at step {at}, lead at step {lead}",
                evidence(
                    float(spread),
                    None,
                    float(self.params.max_spread),
                    None,
                    lead=float(lead),
                    laggard_step=float(low),
                ),
            )
        if self._episodes.is_open(run):
            return None
        flag = Flag(
            detector=self.name,
            run=run,
            rank=laggard,
            metric=None,
            step=low,
            t=t,
            severity="warning",
            summary=f"ranks of run {run} are {spread} steps apart: rank {laggard} at step {low}, "
            f"lead at step {lead}",
            evidence=evidence(
                float(spread),
                None,
                float(self.params.max_spread),
                None,
                lead=float(lead),
                laggard_step=float(low),
            ),
        )
        return self._episodes.start(run, flag)


@dataclass(frozen=True)
class LivenessParams:
    """Parameters of `LivenessDetector`.

    heartbeat_interval_s: how often a rank sends something (a heartbeat at least).
    dead_after: a rank silent this many intervals is dead. 2.5 keeps the alert within 3
        intervals of the death (the timer and the pipeline add about 0.3 interval) while a
        live rank, whose apparent silence is at most about one interval plus its delivery
        jitter, stays 1.5 intervals clear of it.
    hung_after_s: a rank that is heard from but whose step has not moved this long is hung.
    """

    heartbeat_interval_s: float = 2.0
    dead_after: float = 2.5
    hung_after_s: float = 120.0


@dataclass
class _Rank:
    seen: float
    step: int | None = None
    step_moved: float = 0.0


@dataclass
class _Run:
    world: int = 1
    ranks: dict[int, _Rank] = field(default_factory=dict)


class LivenessDetector:
    """Flags ``dead_rank`` (silent for dead_after × heartbeat_interval_s while another rank
    of its run is still heard from: when every rank goes quiet the run has ended) and
    ``hung_rank`` (heard from, step unchanged for hung_after_s). A dead rank clears when it
    is heard from again, a hung one when its step moves: `seen` returns those cleared flags.
    Time is the processor's arrival clock, passed in as `now`, so skewed clocks on training
    nodes do not matter. Delay: dead_after × heartbeat_interval_s plus the timer period.
    """

    DEAD = "dead_rank"
    HUNG = "hung_rank"

    def __init__(self, params: LivenessParams | None = None) -> None:
        self.params = params or LivenessParams()
        self._runs: dict[str, _Run] = {}
        self._episodes = Episodes()

    def seen(self, run: str, rank: int, world: int, step: int | None, now: float) -> list[Flag]:
        """Record that `rank` was heard from at `now`, at `step` (None if no step); cleared
        flags of its dead (heard from again) and hung (step moved) episodes."""
        p = self.params
        state = self._runs.setdefault(run, _Run())
        state.world = max(state.world, world)
        rank_state = state.ranks.get(rank)
        if rank_state is None:
            rank_state = state.ranks[rank] = _Rank(seen=now, step=step, step_moved=now)
        silent = now - rank_state.seen
        rank_state.seen = max(rank_state.seen, now)
        flags: list[Flag] = []
        if step is not None and (rank_state.step is None or step > rank_state.step):
            stuck = now - rank_state.step_moved
            rank_state.step = step
            rank_state.step_moved = now
            opening = self._episodes.end((self.HUNG, run, rank))
            if opening is not None:
                flags.append(
                    cleared_flag(
                        opening,
                        step,
                        now,
                        f"rank {rank} of run {run} moving again: step {step} after {stuck:.0f}s",
                        evidence(stuck, None, p.hung_after_s, None),
                    )
                )
        opening = self._episodes.end((self.DEAD, run, rank))
        if opening is not None:
            flags.append(
                cleared_flag(
                    opening,
                    rank_state.step,
                    now,
                    f"rank {rank} of run {run} heard from again after {silent:.1f}s "
                    f"(step {rank_state.step})",
                    evidence(
                        silent,
                        None,
                        p.dead_after * p.heartbeat_interval_s,
                        p.heartbeat_interval_s,
                    ),
                )
            )
        return flags

    def tick(self, now: float) -> list[Flag]:
        """Judge every known rank at `now`."""
        p = self.params
        dead_s = p.dead_after * p.heartbeat_interval_s
        flags: list[Flag] = []
        for run, state in list(self._runs.items()):
            alive = [r for r, s in state.ranks.items() if now - s.seen < dead_s]
            if not alive:
                if all(now - s.seen > 10 * dead_s for s in state.ranks.values()):
                    del self._runs[run]  # ended long ago: forget it
                    for rank in state.ranks:
                        # Forgotten, not cleared: no cleared flag (their alerts resolve on
                        # the engine's timeout), and a return of the run starts afresh.
                        self._episodes.end((self.DEAD, run, rank))
                        self._episodes.end((self.HUNG, run, rank))
                continue
            for rank, s in state.ranks.items():
                silent = now - s.seen
                if silent >= dead_s:
                    key = (self.DEAD, run, rank)
                    if not self._episodes.is_open(key):
                        flag = Flag(
                            detector=self.DEAD,
                            run=run,
                            rank=rank,
                            metric=None,
                            step=s.step,
                            t=s.seen,
                            severity="critical",
                            summary=f"rank {rank} of run {run} silent for {silent:.1f}s "
                            f"(last step {s.step}) while {len(alive)} rank(s) still report",
                            evidence=evidence(silent, None, dead_s, p.heartbeat_interval_s),
                        )
                        flags.append(self._episodes.start(key, flag))
                    continue
                stuck = now - s.step_moved
                hung = s.step is not None and stuck >= p.hung_after_s
                key = (self.HUNG, run, rank)
                if hung and not self._episodes.is_open(key):
                    flag = Flag(
                        detector=self.HUNG,
                        run=run,
                        rank=rank,
                        metric=None,
                        step=s.step,
                        t=s.seen,
                        severity="critical",
                        summary=f"rank {rank} of run {run} alive but stuck at step "
                        f"{s.step} for {stuck:.0f}s",
                        evidence=evidence(stuck, None, p.hung_after_s, None),
                    )
                    flags.append(self._episodes.start(key, flag))
        return flags


@dataclass(frozen=True)
class DPMismatchParams:
    """Parameters of `DPMismatchDetector`.

    metric: the global gradient norm after the all-reduce (identical on every DP rank).
    rel_tol: ranks disagree when |value - median| / |median| exceeds this.
    """

    metric: str = "grad_norm"
    rel_tol: float = 1e-3


class DPMismatchDetector:
    """Flags data-parallel ranks whose post-all-reduce gradient norm differs from the
    others': a sign of silent data corruption (a bad GPU or link). With two ranks the
    culprit cannot be told apart, so the flag names no rank. It clears at the first finished
    step where the norms agree again. Delay: the finished step."""

    name = "dp_mismatch"

    def __init__(self, params: DPMismatchParams | None = None) -> None:
        self.params = params or DPMismatchParams()
        self._episodes = Episodes()

    def observe_step(
        self, run: str, step: int, t: float, ranks: dict[int, dict[str, float]]
    ) -> Flag | None:
        """Judge one finished step of every rank of `run`: a flag when a mismatch episode
        starts, a cleared flag when the norms agree again during one."""
        m = self.params.metric
        norms = {r: v[m] for r, v in ranks.items() if m in v and math.isfinite(v[m])}
        if len(norms) < 2:
            return None
        med = median(norms.values())
        scale = max(abs(med), 1e-12)
        rank, value = max(norms.items(), key=lambda kv: (abs(kv[1] - med), -kv[0]))
        deviation = abs(value - med) / scale
        if deviation <= self.params.rel_tol:
            opening = self._episodes.end(run)
            if opening is None:
                return None
            return cleared_flag(
                opening,
                step,
                t,
                f"{m} mismatch across data-parallel ranks of run {run} cleared at step {step}: "
                f"{len(norms)} ranks agree within {self.params.rel_tol:g}",
                evidence(value, med, self.params.rel_tol, None, rel_deviation=deviation),
            )
        if self._episodes.is_open(run):
            return None
        culprit = rank if len(norms) > 2 else None
        listing = ", ".join(f"rank {r}: {v:.6g}" for r, v in sorted(norms.items()))
        flag = Flag(
            detector=self.name,
            run=run,
            rank=culprit,
            metric=m,
            step=step,
            t=t,
            severity="critical",
            summary=f"{m} disagrees across data-parallel ranks at step {step} ({listing}): "
            "possible silent data corruption",
            evidence=evidence(value, med, self.params.rel_tol, None, rel_deviation=deviation),
        )
        return self._episodes.start(run, flag)
