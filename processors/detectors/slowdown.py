"""Job slowdown (stage 2, per run): the whole job's step rate dropped against its own
baseline for a sustained stretch (thermal throttling, a shared file system, a slower data
pipeline, a fail-slow rank that drags every collective).

- The job's step time at a finished step is the median of its ranks' step times, less the
  longest declared eval/checkpoint time a rank spent in it (the peers wait for that rank
  in the next collective, so every rank's step carries it): declared work is not slowness.
- The baseline comes from the `baseline_steps` steps after `warmup_steps` (start-up,
  compilation, allocator and data-loader warm-up are not the baseline): the lowest median
  of `window` consecutive steps among them, frozen once taken: a slow drift must not become
  the new normal, and a slowdown that starts inside the baseline steps (after 50 of them)
  must not either (their median would be the slow rate once half of them were slow).
- Slow when the median of the last `window` step times is at least `ratio` x the baseline
  (step rate down by 1 - 1/ratio), and that held for `sustain_steps` steps and
  `sustain_s` seconds of event time: one incident, cleared when the window's median is
  back under `clear_ratio` x the baseline.
- The flag names the phase that grew and who changed: per rank, the growth of its
  rank-local phases (data wait less declared time, forward) against the rank's own
  baseline. Ranks whose rank-local growth covers at least half of the step's growth
  changed; every rank, one rank (named: the flag carries its rank), or none, in which
  case the time went into backward, the collectives or the optimizer (``compute``) on
  every rank.

Pure logic: no faust, Kafka or Redis.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from processors.detectors.base import median
from processors.detectors.failslow import PHASE_DATA, PHASE_FORWARD, phase_times
from processors.flags import Episodes, Flag, evidence
from stepstream import vocabulary as vocab

#: The phase of a step that is neither data wait nor forward: backward, the collectives
#: and the optimizer step (what `perf/compute_s` holds besides the forward).
PHASE_COMPUTE = "compute"


@dataclass(frozen=True)
class SlowdownParams:
    """Parameters of `SlowdownDetector` (see the module docstring).

    warmup_steps: finished steps before the baseline starts.
    baseline_steps: steps after the warm-up among whose `window`-step medians the lowest
        is the baseline (the fastest sustained rate the job showed once warm: at most a
        few % under their median on the jittery jobs measured, far inside `ratio`).
    window: steps whose median is compared with the baseline.
    ratio: slow at this step time over the baseline: 1.33 is a 25 % lower step rate, so a
        30 % drop is named even when the window's median comes out a little low; healthy
        jobs measured here varied by at most the figure in docs/detectors.md.
    clear_ratio: back to normal under this.
    sustain_steps / sustain_s: how long the window must stay slow before one incident.
    """

    warmup_steps: int = 50
    baseline_steps: int = 100
    window: int = 50
    ratio: float = 1.33
    clear_ratio: float = 1.15
    sustain_steps: int = 25
    sustain_s: float = 2.0


@dataclass
class _Run:
    finished: int = 0
    baseline: float | None = None
    #: Per rank and phase: the baseline's median seconds.
    base_phases: dict[int, dict[str, float]] = field(default_factory=dict)
    #: While the baseline is taken: the lowest window median so far (see the module).
    lowest: float | None = None
    steps: deque[float] = field(default_factory=deque)
    phases: dict[int, dict[str, deque[float]]] = field(default_factory=dict)
    #: (step, event time) the window first read slow; None while it does not.
    slow_since: tuple[int, float] | None = None


def _job_step(ranks: Mapping[int, Mapping[str, float]]) -> float | None:
    """The job's step time at one finished step, less its declared work."""
    steps = [
        v[vocab.STEP_TIME.name]
        for v in ranks.values()
        if vocab.STEP_TIME.name in v and math.isfinite(v[vocab.STEP_TIME.name])
    ]
    if not steps:
        return None
    declared = 0.0
    for values in ranks.values():
        spent = 0.0
        for signal in vocab.DECLARED_TIME.values():
            v = values.get(signal.name)
            if v is not None and math.isfinite(v):
                spent += v
        declared = max(declared, spent)
    return max(0.0, median(steps) - declared)


class SlowdownDetector:
    """One incident per sustained drop of a run's step rate (see the module docstring).
    Fed one finished step at a time. Delay: about window / 2 + sustain_steps steps, and
    at least `sustain_s` seconds, after the onset."""

    name = "job_slowdown"

    def __init__(self, params: SlowdownParams | None = None) -> None:
        self.params = params or SlowdownParams()
        self._runs: dict[str, _Run] = {}
        self._episodes = Episodes()

    def forget(self, run: str) -> None:
        """Drop what it holds of `run` (gone idle), open episodes without a clear."""
        self._runs.pop(run, None)
        self._episodes.forget_run(run)

    def baseline(self, run: str) -> float | None:
        """The run's baseline step time, once taken."""
        state = self._runs.get(run)
        return state.baseline if state is not None else None

    def observe_step(
        self,
        run: str,
        step: int,
        t: float,
        ranks: Mapping[int, Mapping[str, float]],
        sharded: bool = False,
    ) -> list[Flag]:
        """Add one finished step of every rank of `run`; a flag when a slowdown starts,
        a cleared flag when it ends."""
        p = self.params
        state = self._runs.get(run)
        if state is None:
            state = self._runs[run] = _Run()
        job = _job_step(ranks)
        if job is None:
            return []
        state.finished += 1
        if state.finished <= p.warmup_steps:
            return []
        size = p.baseline_steps if state.baseline is None else p.window
        state.steps.append(job)
        if len(state.steps) > size:
            state.steps.popleft()
        for rank, values in ranks.items():
            times = phase_times(values, sharded)
            compute = values.get(vocab.COMPUTE.name)
            if compute is not None and math.isfinite(compute):
                times[PHASE_COMPUTE] = max(0.0, compute - times.get(PHASE_FORWARD, 0.0))
            per = state.phases.setdefault(rank, {})
            for phase, seconds in times.items():
                kept = per.setdefault(phase, deque())
                kept.append(seconds)
                if len(kept) > size:
                    kept.popleft()
        if state.baseline is None:
            if len(state.steps) >= p.window:
                recent = median(list(state.steps)[-p.window :])
                if state.lowest is None or recent < state.lowest:
                    # The fastest stretch so far, and what each rank's phases took in it.
                    state.lowest = recent
                    state.base_phases = {
                        rank: {ph: median(list(kept)[-p.window :]) for ph, kept in per.items()}
                        for rank, per in state.phases.items()
                    }
            if len(state.steps) >= p.baseline_steps:
                self._take_baseline(state)
            return []
        if len(state.steps) < p.window:
            return []
        current = median(state.steps)
        slow = current >= state.baseline * p.ratio
        episode = run
        if self._episodes.is_open(episode):
            if current >= state.baseline * p.clear_ratio:
                return []
            state.slow_since = None
            return [
                self._episodes.close(
                    episode,
                    step,
                    t,
                    f"job slowdown of run {run} cleared at step {step}: step time "
                    f"{current * 1000:.1f} ms against a {state.baseline * 1000:.1f} ms baseline",
                    evidence(current, state.baseline, state.baseline * p.ratio, float(p.window)),
                )
            ]
        if not slow:
            state.slow_since = None
            return []
        if state.slow_since is None:
            state.slow_since = (step, t)
        since_step, since_t = state.slow_since
        if step - since_step < p.sustain_steps or t - since_t < p.sustain_s:
            return []
        return [self._episodes.start(episode, self._flag(run, state, step, t, current))]

    def _take_baseline(self, state: _Run) -> None:
        state.baseline = state.lowest if state.lowest is not None else median(state.steps)
        # From now on the deques hold the comparison window only.
        state.steps = deque(list(state.steps)[-self.params.window :])
        for per in state.phases.values():
            for phase, kept in per.items():
                per[phase] = deque(list(kept)[-self.params.window :])

    def _flag(self, run: str, state: _Run, step: int, t: float, current: float) -> Flag:
        p = self.params
        base = state.baseline or 0.0
        grown = current - base
        growth: dict[int, dict[str, float]] = {}
        for r, per in state.phases.items():
            before = state.base_phases.get(r, {})
            growth[r] = {
                phase: median(kept) - before[phase]
                for phase, kept in per.items()
                if kept and phase in before
            }
        local = (PHASE_DATA, PHASE_FORWARD)
        changed = sorted(
            r for r, g in growth.items() if sum(g.get(ph, 0.0) for ph in local) >= 0.5 * grown
        )
        if changed:
            pool = {ph: median(growth[r].get(ph, 0.0) for r in changed) for ph in local}
            phase = max(pool, key=lambda ph: pool[ph])
        else:
            phase = PHASE_COMPUTE
        everyone = not changed or len(changed) == len(growth)
        rank = changed[0] if len(changed) == 1 and len(growth) > 1 else None
        if everyone:
            who = "every rank"
        elif rank is not None:
            who = f"rank {rank} only"
        else:
            who = "ranks " + ", ".join(str(r) for r in changed)
        drop = (1 - base / current) * 100 if current > 0 else 0.0
        return Flag(
            detector=self.name,
            run=run,
            rank=rank,
            metric=phase,
            step=step,
            t=t,
            severity="warning",
            summary=(
                f"run {run} slowed down: step time {current * 1000:.1f} ms against a "
                f"{base * 1000:.1f} ms baseline ({drop:.0f} % lower step rate); {phase} "
                f"grew, on {who}"
            ),
            evidence=evidence(
                current,
                base,
                base * p.ratio,
                float(p.window),
                rate_drop_pct=drop,
                ranks_changed=float(len(changed) if changed else len(growth)),
                every_rank=1.0 if everyone else 0.0,
            ),
            labels={
                "phase": phase,
                "scope": "every rank" if everyone else "one rank" if rank is not None else "ranks",
            },
        )
