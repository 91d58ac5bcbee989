"""Cross-rank detectors (stage 2, per run): stragglers, step desync, dead and hung ranks
(`processors.detectors.liveness`), and data-parallel gradient-norm mismatch."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from itertools import pairwise

from processors.detectors.base import MAD_SCALE, median
from processors.detectors.liveness import LivenessDetector, LivenessParams
from processors.flags import Episodes, Flag, cleared_flag, evidence
from stepstream import vocabulary as vocab

__all__ = [
    "DPMismatchDetector",
    "DPMismatchParams",
    "DesyncDetector",
    "DesyncParams",
    "LivenessDetector",
    "LivenessParams",
    "StragglerDetector",
    "StragglerParams",
]


@dataclass(frozen=True)
class StragglerParams:
    """Parameters of `StragglerDetector`.

    metrics: the rank-local times a rank spends before it enters its first collective;
        its pre-collective time is their sum. (Step time and compute time cannot name the
        slow rank: every rank waits for it in the all-reduce, so they grow together.)
    alone: of those, the ones also judged on their own: a model with buffers broadcasts
        them at the start of DDP's forward, so the other ranks' forward then includes
        waiting for the slow one, and only its data wait stands out.
    window: steps per rank whose median is compared.
    min_points: steps a rank needs before it is judged (first steps are noisy: process
        start, allocator and data-loader warm-up).
    ratio: straggler when its median exceeds the median of the other ranks times this...
    min_excess_s: ...and by at least this many seconds. 3 ms: the slow input pipelines to
        catch add 5-20 ms per step, while healthy ranks' 20-step medians of data wait +
        forward differed by at most 0.29 ms (ratio up to 1.77, hence both tests) in
        healthy 2-4 rank jobs at 2-200 ms steps on 2 shared cores (bench/detection.py).
    z_noise: ...and by this many standard errors of the difference of the two medians
        (each 1.25 sigma / sqrt(n), sigma from the median absolute difference of
        consecutive times over `noise_window` steps): a job whose per-step compute
        varies 0.25-1.75x (variable sequence lengths) had 20-step medians 30 % and 3 ms
        apart with equal means (bench/detection.py `jitter-3r`), a false straggler.
    noise_window: steps per rank whose MAD gives that noise.
    confirm_steps: consecutive finished steps a rank must be judged slow before it is
        named: a median that crosses the threshold for one step (a loaded machine
        descheduling one rank for a few steps: seen live, fired and cleared one step
        later) is not a straggler.
    """

    metrics: tuple[str, ...] = (vocab.DATA_WAIT.name, vocab.FORWARD.name)
    alone: tuple[str, ...] = (vocab.DATA_WAIT.name,)
    window: int = 20
    min_points: int = 10
    ratio: float = 1.5
    min_excess_s: float = 0.003
    z_noise: float = 4.0
    noise_window: int = 200
    confirm_steps: int = 3


class StragglerDetector:
    """Flags a rank whose work time is well above the other ranks'; it clears when the rank's
    median is back at or under the threshold. Fed one finished step at a time (every rank's
    values at that step). Delay: about min_points..window/2 steps."""

    name = "straggler"

    def __init__(self, params: StragglerParams | None = None) -> None:
        self.params = params or StragglerParams()
        #: (run, measure) -> rank -> its latest step times. Indexed by run so that a step
        #: reads its own run's ranks, not a scan over every run's.
        self._times: dict[tuple[str, str], dict[int, deque[float]]] = {}
        #: (run, rank) -> consecutive steps judged slow while no episode is open.
        self._streak: dict[tuple[str, int], int] = {}
        self._episodes = Episodes()

    def forget(self, run: str) -> None:
        """Drop what it holds of `run` (gone idle), open episodes without a clear."""
        for key in [k for k in self._times if k[0] == run]:
            del self._times[key]
        for streak in [k for k in self._streak if k[0] == run]:
            del self._streak[streak]
        self._episodes.forget_run(run)

    def observe_step(
        self,
        run: str,
        step: int,
        t: float,
        ranks: dict[int, dict[str, float]],
        roles: Mapping[int, Hashable] | None = None,
        sharded: bool = False,
    ) -> list[Flag]:
        """Add one step of every rank; flags of ranks that start straggling and cleared flags
        of ranks that stop. `roles`: a rank's part of the model (pipeline stage and
        tensor-parallel index): a rank is compared only with ranks of its role, since a
        pipeline's first and last stages differ by design. Absent: one role. `sharded`:
        the forward all-gathers parameters (FSDP2) or activations (tensor parallel), so it
        holds waiting for the slowest peer: only the `alone` measures can name a rank."""
        p = self.params
        role_of = roles or {}
        measures = {} if sharded else {"+".join(p.metrics): p.metrics}
        for name in p.alone:
            measures.setdefault(name, (name,))
        for label, names in measures.items():
            by_rank = self._times.get((run, label))
            if by_rank is None:
                by_rank = self._times[(run, label)] = {}
            for rank, values in ranks.items():
                parts = [values[m] for m in names if m in values and math.isfinite(values[m])]
                if len(parts) == len(names):
                    times = by_rank.get(rank)
                    if times is None:
                        times = by_rank[rank] = deque(maxlen=max(p.window, p.noise_window))
                    times.append(sum(parts))
        flags: list[Flag] = []
        verdicts: dict[int, tuple[bool, str, float, float, float]] = {}
        for label in measures:
            medians: dict[int, float] = {}
            errors: dict[int, float] = {}
            for rank, kept in self._times[(run, label)].items():
                recent = list(kept)[-p.window :]
                if len(recent) >= p.min_points:
                    medians[rank] = median(recent)
                    # The noise from the longer history (a 20-point spread is itself noisy),
                    # from consecutive differences: a level shift (the straggling itself)
                    # moves one of them, not the scale.
                    diffs = [abs(b - a) for a, b in pairwise(kept)]
                    sigma = MAD_SCALE * median(diffs) / math.sqrt(2.0) if diffs else 0.0
                    errors[rank] = 1.2533 * sigma / math.sqrt(len(recent))
            if len(medians) < 2:
                continue
            for rank, own in medians.items():
                role = role_of.get(rank)
                same = [r for r in medians if r != rank and role_of.get(r) == role]
                if not same:
                    continue  # alone in its role: nobody does the same work
                others = median(medians[r] for r in same)
                noise = math.hypot(errors[rank], median(errors[r] for r in same))
                threshold = max(
                    others * p.ratio, others + p.min_excess_s, others + p.z_noise * noise
                )
                slow = own > threshold
                known = verdicts.get(rank)
                if known is None or (slow and not known[0]):
                    verdicts[rank] = (slow, label, own, others, threshold)
        for rank, (slow, label, own, others, threshold) in sorted(verdicts.items()):
            episode = (run, rank)
            what = "of data wait" if label == vocab.DATA_WAIT.name else "before the collective"
            if not slow:
                self._streak.pop(episode, None)
                if self._episodes.is_open(episode):
                    flags.append(
                        self._episodes.close(
                            episode,
                            step,
                            t,
                            f"rank {rank} straggler cleared at step {step}: {own * 1000:.1f} ms "
                            f"{what} per step against {others * 1000:.1f} ms on the other ranks",
                            evidence(own, others, threshold, float(p.window)),
                        )
                    )
                continue
            if not self._episodes.is_open(episode):
                streak = self._streak[episode] = self._streak.get(episode, 0) + 1
                if streak < p.confirm_steps:
                    continue
                del self._streak[episode]
                flag = Flag(
                    detector=self.name,
                    run=run,
                    rank=rank,
                    metric=label,
                    step=step,
                    t=t,
                    severity="warning",
                    summary=f"rank {rank} is a straggler: {own * 1000:.1f} ms {what} per step "
                    f"against {others * 1000:.1f} ms on the other ranks",
                    evidence=evidence(own, others, threshold, float(p.window)),
                )
                flags.append(self._episodes.start(episode, flag))
        return flags


@dataclass(frozen=True)
class DesyncParams:
    """Parameters of `DesyncDetector`.

    max_spread: flag when a rank is more than this many steps behind the lead rank...
    max_lag_s: ...and the lead passed the laggard's step more than this many seconds of
        event time before the laggard got there. Both are judged at the same event time,
        so ranks whose newest reports come from different flushes (a publisher sends
        every 0.2 s: 100 steps of a 2 ms job) are not taken for desynchronised; the
        seconds margin covers clock skew between nodes.
    history: (event time, step) points kept per rank to look the lead's past up in.
    """

    max_spread: int = 50
    max_lag_s: float = 5.0
    history: int = 1024


class DesyncDetector:
    """Flags a rank that is behind the lead rank at the same event time, by more than
    `max_spread` steps and `max_lag_s` seconds; it clears (naming the rank it flagged) when
    that no longer holds. In lockstep data parallelism this never fires; it catches ranks
    that run on their own (a restarted rank replaying, pipeline or async setups gone wrong).
    A rank that stops (dead, hung) is the liveness detector's: its last report is in step
    with the lead at its own time. Delay: the summary that makes the lag too large."""

    name = "rank_desync"

    def __init__(self, params: DesyncParams | None = None) -> None:
        self.params = params or DesyncParams()
        self._episodes = Episodes()
        self._runs: dict[str, dict[int, deque[tuple[float, int]]]] = {}

    def forget(self, run: str) -> None:
        """Drop what it holds of `run` (gone idle), open episodes without a clear."""
        self._runs.pop(run, None)
        self._episodes.forget_run(run)

    def observe(self, run: str, rank: int, step: int, t: float) -> Flag | None:
        """Record that `rank` of `run` was at `step` at event time `t`, then judge the run's
        laggard: a flag when a desync episode starts, a cleared flag when one ends."""
        p = self.params
        ranks = self._runs.setdefault(run, {})
        points = ranks.get(rank)
        if points is None:
            points = ranks[rank] = deque(maxlen=p.history)
        if not points or (step > points[-1][1] and t >= points[-1][0]):
            points.append((t, step))
        if len(ranks) < 2:
            return None
        laggard, (t_low, low) = min(
            ((r, pts[-1]) for r, pts in ranks.items()), key=lambda kv: (kv[1][1], kv[0])
        )
        spread, lag, lead = 0, 0.0, low
        for r, pts in ranks.items():
            if r == laggard:
                continue
            ahead = _step_at(pts, t_low)  # where this rank was when the laggard was at `low`
            passed = _time_at(pts, low)  # when this rank got past `low`
            if ahead is not None and ahead - low > spread:
                spread, lead = ahead - low, ahead
                lag = t_low - passed if passed is not None else 0.0
        behind = spread > p.max_spread and lag > p.max_lag_s
        ev = evidence(
            float(spread),
            None,
            float(p.max_spread),
            None,
            lag_s=lag,
            max_lag_s=p.max_lag_s,
            lead=float(lead),
            laggard_step=float(low),
        )
        if not behind:
            opening = self._episodes.end(run)
            if opening is None:
                return None
            at = ranks[opening.rank][-1][1] if opening.rank in ranks else low
            return cleared_flag(
                opening,
                at,
                t,
                f"rank desync of run {run} cleared: rank {opening.rank} at step {at}, "
                f"{spread} steps and {lag:.1f}s behind the lead at most",
                ev,
            )
        if self._episodes.is_open(run):
            return None
        flag = Flag(
            detector=self.name,
            run=run,
            rank=laggard,
            metric=None,
            step=low,
            t=t_low,
            severity="warning",
            summary=f"rank {laggard} of run {run} is {spread} steps ({lag:.1f}s) behind: at step "
            f"{low} while the lead was at step {lead} at the same time",
            evidence=ev,
        )
        return self._episodes.start(run, flag)


def _step_at(points: deque[tuple[float, int]], t: float) -> int | None:
    """The newest step of a rank at event time `t` (None if its history starts later)."""
    found = None
    for when, step in reversed(points):
        if when <= t:
            found = step
            break
    return found


def _time_at(points: deque[tuple[float, int]], step: int) -> float | None:
    """The event time a rank first reported a step at or past `step` (the oldest point
    known when its history starts past it)."""
    found = None
    for when, s in reversed(points):
        if s < step:
            break
        found = when
    return found


@dataclass(frozen=True)
class DPMismatchParams:
    """Parameters of `DPMismatchDetector`.

    metric: a synchronised signal (vocabulary name): the global gradient norm, read after
        the all-reduce, is bit-identical on every data-parallel rank.
    shard_metric: its counterpart for a sharded model (FSDP2, HSDP, tensor parallel): the
        norm of the rank's local gradient shard, identical only on ranks holding the same
        shard (HSDP's replicate dimension), which is what the detector then compares.
    rel_tol: ranks disagree when |value - median| / |median| exceeds this.
    history: agreed values of the run remembered to name the culprit between two ranks.
    """

    metric: str = vocab.GRAD_NORM.name
    shard_metric: str = vocab.SHARD_NORM.name
    rel_tol: float = 1e-3
    history: int = 8


class DPMismatchDetector:
    """Flags data-parallel ranks whose post-all-reduce gradient norm differs from the
    others': silent data corruption (a bad GPU, link or kernel) or ranks that stopped
    training the same model. With three or more ranks the culprit is the one off the
    majority; with two, the one further (in ratio) from the norms the ranks last agreed on,
    which is right when the corruption moves the norm more than a step's own change
    (evidence ``named_by``: 1 majority, 2 history, 0 no culprit). It clears at the first
    finished step where the norms agree again. Delay: the finished step."""

    name = "dp_mismatch"

    def __init__(self, params: DPMismatchParams | None = None) -> None:
        self.params = params or DPMismatchParams()
        self._episodes = Episodes()
        self._agreed: dict[Hashable, deque[float]] = {}

    def forget(self, run: str) -> None:
        """Drop what it holds of `run` (gone idle), open episodes without a clear."""
        for key in [k for k in self._agreed if k == run or (isinstance(k, tuple) and k[0] == run)]:
            del self._agreed[key]
        self._episodes.forget_run(run)

    def observe_step(
        self,
        run: str,
        step: int,
        t: float,
        ranks: dict[int, dict[str, float]],
        replicas: Mapping[int, Hashable] | None = None,
    ) -> list[Flag]:
        """Judge one finished step of every rank of `run`: a flag when a mismatch episode
        starts, a cleared flag when the norms agree again during one. `replicas`: a rank's
        replica group (ranks that hold the same shard); only ranks of one group are
        compared, never shards with each other. Absent: every rank holds the whole model."""
        groups: dict[Hashable, dict[int, dict[str, float]]] = {}
        for rank, values in ranks.items():
            groups.setdefault((replicas or {}).get(rank), {})[rank] = values
        flags: list[Flag] = []
        for group, members in groups.items():
            flag = self._observe_group(run, group, step, t, members)
            if flag is not None:
                flags.append(flag)
        return flags

    def _observe_group(
        self,
        run: str,
        group: Hashable,
        step: int,
        t: float,
        ranks: dict[int, dict[str, float]],
    ) -> Flag | None:
        m = self.params.metric
        if not any(m in v for v in ranks.values()):
            if group is None:
                return None  # shards with no known topology: nothing says which are replicas
            m = self.params.shard_metric
        norms = {r: v[m] for r, v in ranks.items() if m in v and math.isfinite(v[m])}
        if len(norms) < 2:
            return None
        key = run if group is None else (run, group)
        med = median(norms.values())
        scale = max(abs(med), 1e-12)
        rank, value = max(norms.items(), key=lambda kv: (abs(kv[1] - med), -kv[0]))
        deviation = abs(value - med) / scale
        agreed = self._agreed.get(key)
        if deviation <= self.params.rel_tol:
            if agreed is None:
                agreed = self._agreed[key] = deque(maxlen=self.params.history)
            agreed.append(med)
            opening = self._episodes.end(key)
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
        if self._episodes.is_open(key):
            return None
        culprit: int | None = rank
        named_by = 1.0
        if len(norms) == 2:
            culprit, named_by = None, 0.0
            if agreed:
                usual = median(agreed)
                if usual > 0:
                    off = {r: abs(math.log(max(v, 1e-300) / usual)) for r, v in norms.items()}
                    culprit = max(off, key=lambda r: (off[r], -r))
                    value, named_by = norms[culprit], 2.0
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
            "possible silent data corruption"
            + (f" on rank {culprit}" if culprit is not None else ""),
            evidence=evidence(
                value, med, self.params.rel_tol, None, rel_deviation=deviation, named_by=named_by
            ),
        )
        return self._episodes.start(key, flag)
