"""Training-curve detectors: plateau, divergence and overfitting. They watch a smoothed
(EMA) loss so that step-to-step noise does not decide."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from processors.detectors.base import matches, median
from processors.flags import Episodes, Flag, evidence, moment
from stepstream import vocabulary as vocab
from stepstream.vocabulary import canonical


@dataclass(frozen=True)
class PlateauParams:
    """Parameters of `PlateauDetector`.

    metrics: loss-like metrics (lower is better).
    alpha: EMA smoothing factor per point.
    patience: steps without improvement that make a plateau...
    min_rel_delta: (an improvement lowers the best EMA by this fraction of it...
    min_abs_delta: ...or by this much, whichever is larger)...
    motion: ...while training has stalled, judged on these signals of the same rank:
        every learning rate at 0, or the median update ratio (|dw|/|w| per step, from
        `watch()`) under `stall_update_ratio`. A loss that stops improving while the model
        still moves is convergence, not a fault: measured here, every healthy job that ran
        past convergence went 200 steps without a 1 % gain, so the loss alone cannot tell.
    stall_update_ratio: weights changing by less than this fraction per step are stalled
        (fp32 rounding is about 1e-7; healthy SGD and Adam runs move 1e-4 to 1e-2).
    require_stall: False judges the loss alone (a converged run is then a plateau too).
    """

    metrics: tuple[str, ...] = (vocab.LOSS.name,)
    alpha: float = 0.1
    patience: int = 200
    min_rel_delta: float = 0.01
    min_abs_delta: float = 1e-4
    motion: tuple[str, ...] = (vocab.LR.name, vocab.UPDATE_RATIO.name)
    stall_update_ratio: float = 1e-6
    require_stall: bool = True


@dataclass
class _Best:
    ema: float
    best: float
    best_step: int


@dataclass
class _Motion:
    lrs: dict[str, float] = field(default_factory=dict)
    updates: dict[str, float] = field(default_factory=dict)

    def stalled(self, limit: float) -> str | None:
        """Why training is stalled, or None while it moves (or nothing is known)."""
        if self.lrs and all(v == 0 for v in self.lrs.values()):
            return "learning rate 0"
        if self.updates:
            moved = median(self.updates.values())
            if moved < limit:
                return f"median update ratio {moved:.2g}"
        return None


class PlateauDetector:
    """Flags a stalled run: a loss whose EMA has not improved for `patience` steps while
    its rank's training stopped moving (learning rate 0, or updates under
    `stall_update_ratio`). The plateau clears at the next improvement, or when training
    moves again. Delay: `patience` steps after the last improvement."""

    name = "plateau"

    def __init__(self, params: PlateauParams | None = None) -> None:
        self.params = params or PlateauParams()
        self._state: dict[tuple[str, int, str], _Best] = {}
        self._motion: dict[tuple[str, int], _Motion] = {}
        self._episodes = Episodes()

    def wants(self, metric: str) -> bool:
        """True for the configured losses and the motion signals."""
        return matches(metric, self.params.metrics + self.params.motion)

    def observe(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> tuple[Flag, ...]:
        """Add one point; a flag when a plateau episode starts, a cleared flag when the EMA
        improves (or training moves) again during one."""
        if not math.isfinite(value):
            return ()
        p = self.params
        if not matches(metric, p.metrics):
            return self._moved(run, rank, metric, step, t, value)
        if step is None:
            return ()
        key = (run, rank, metric)
        state = self._state.get(key)
        if state is None:
            self._state[key] = _Best(ema=value, best=value, best_step=step)
            return ()
        state.ema += p.alpha * (value - state.ema)
        if state.ema < state.best - max(p.min_rel_delta * abs(state.best), p.min_abs_delta):
            previous, stalled = state.best, step - state.best_step
            state.best, state.best_step = state.ema, step
            if not self._episodes.is_open(key):
                return ()
            return (
                self._episodes.close(
                    key,
                    step,
                    t,
                    f"{metric} plateau on rank {rank} cleared at step {step}: EMA "
                    f"{state.ema:.4g} improved on {previous:.4g} after {stalled} steps",
                    evidence(state.ema, previous, float(p.patience), float(stalled)),
                ),
            )
        stalled = step - state.best_step
        if stalled < p.patience or self._episodes.is_open(key):
            return ()
        why = None
        motion = self._motion.get((run, rank))
        if motion is not None:
            why = motion.stalled(p.stall_update_ratio)
        if why is None and p.require_stall:
            return ()
        flag = Flag(
            detector=self.name,
            run=run,
            rank=rank,
            metric=metric,
            step=step,
            t=t,
            severity="info",
            summary=f"{metric} has not improved for {stalled} steps on rank {rank} "
            f"(best EMA {state.best:.4g} at step {state.best_step})"
            + (f": training stalled, {why}" if why else ""),
            evidence=evidence(state.ema, state.best, float(p.patience), float(stalled)),
        )
        return (self._episodes.start(key, flag),)

    def _moved(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> tuple[Flag, ...]:
        """A learning rate or update ratio: remember it; end the rank's plateaus if training
        moves again."""
        motion = self._motion.get((run, rank))
        if motion is None:
            motion = self._motion[(run, rank)] = _Motion()
        if vocab.is_signal(metric, vocab.LR):
            motion.lrs[metric] = value
        else:
            motion.updates[metric] = value
        if not self._episodes or motion.stalled(self.params.stall_update_ratio) is not None:
            return ()
        ended = []
        for key in self._state:
            if key[0] == run and key[1] == rank and self._episodes.is_open(key):
                ended.append(
                    self._episodes.close(
                        key,
                        step,
                        t,
                        f"{key[2]} plateau on rank {rank} cleared: training moves again "
                        f"({metric}={value:.3g})",
                        evidence(value, None, None, None),
                    )
                )
        return tuple(ended)


@dataclass(frozen=True)
class DivergenceParams:
    """Parameters of `DivergenceDetector`.

    metrics: loss-like metrics.
    alpha: EMA smoothing factor per point.
    median_of: the EMA is fed the median of this many latest points, so one spike (the
        spike detector's business) does not look like a trend.
    start_points: the starting level is the highest of this many first finite points.
    above_start: diverged when the EMA exceeds the starting level times this.
    window: steps over which a rise from the running minimum is judged.
    rise: diverged when the EMA rose this fraction above its minimum within `window`.
    """

    metrics: tuple[str, ...] = (vocab.LOSS.name,)
    alpha: float = 0.1
    median_of: int = 5
    start_points: int = 10
    above_start: float = 1.2
    window: int = 100
    rise: float = 0.5


@dataclass
class _Curve:
    start: list[float] = field(default_factory=list)
    ema: float | None = None
    last: deque[float] = field(default_factory=deque)
    #: (step, EMA) with increasing EMA: the front is the minimum of the window.
    lows: deque[tuple[int, float]] = field(default_factory=deque)

    def push(self, step: int, ema: float, window: int) -> float:
        """Add the EMA at `step`; return the minimum EMA within the last `window` steps."""
        lows = self.lows
        while lows and lows[-1][1] >= ema:
            lows.pop()
        lows.append((step, ema))
        while lows[0][0] <= step - window:
            lows.popleft()
        return lows[0][1]


class DivergenceDetector:
    """Flags a loss trending up: its EMA above the starting level, or risen by `rise`
    over its minimum within the last `window` steps; it clears when neither holds any more.
    Delay: a few EMA time constants (1/alpha points) after the loss turns."""

    name = "divergence"

    def __init__(self, params: DivergenceParams | None = None) -> None:
        self.params = params or DivergenceParams()
        self._state: dict[tuple[str, int, str], _Curve] = {}
        self._episodes = Episodes()

    def wants(self, metric: str) -> bool:
        """True for the configured metrics."""
        return matches(metric, self.params.metrics)

    def observe(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> tuple[Flag, ...]:
        """Add one point; a flag when a divergence episode starts, a cleared flag when the
        EMA is back under both limits during one."""
        if step is None or not math.isfinite(value):
            return ()
        p = self.params
        key = (run, rank, metric)
        curve = self._state.setdefault(key, _Curve())
        curve.last.append(value)
        if len(curve.last) > p.median_of:
            curve.last.popleft()
        smooth = median(curve.last)
        curve.ema = smooth if curve.ema is None else curve.ema + p.alpha * (smooth - curve.ema)
        low = curve.push(step, curve.ema, p.window)
        if len(curve.start) < p.start_points:
            curve.start.append(value)
            return ()
        # The highest early point, not their mean: the EMA starts at the first point and
        # lags a fast early descent, so it would sit above a mean of the early points.
        start = max(curve.start)
        ema = curve.ema
        above = start > 0 and ema > start * p.above_start
        rose = low > 0 and ema > low * (1 + p.rise)
        if not (above or rose):
            if not self._episodes.is_open(key):
                return ()
            return (
                self._episodes.close(
                    key,
                    step,
                    t,
                    f"{metric} divergence on rank {rank} cleared at step {step}: EMA {ema:.4g} "
                    f"is within {p.above_start:g}x its starting level {start:.4g} and "
                    f"{p.rise:.0%} of its minimum {low:.4g}",
                    evidence(
                        ema, start, start * p.above_start, float(p.window), start=start, minimum=low
                    ),
                ),
            )
        if self._episodes.is_open(key):
            return ()
        baseline, threshold = (start, start * p.above_start) if above else (low, low * (1 + p.rise))
        why = "above its starting level" if above else f"up {ema / low - 1:.0%} from its minimum"
        flag = Flag(
            detector=self.name,
            run=run,
            rank=rank,
            metric=metric,
            step=step,
            t=t,
            severity="critical",
            summary=f"{metric} is diverging on rank {rank}: EMA {ema:.4g} is {why}",
            evidence=evidence(ema, baseline, threshold, float(p.window), start=start, minimum=low),
        )
        return (self._episodes.start(key, flag),)


@dataclass(frozen=True)
class OverfittingParams:
    """Parameters of `OverfittingDetector`.

    train_metric / eval_metric: names of the training and evaluation loss (vocabulary
        names; aliases such as ``train_loss`` and ``val_loss`` match too).
    alpha: EMA smoothing of the training loss.
    evals: kept for configuration compatibility: evaluations judged against the best.
    rise: overfitting when the last eval loss is this fraction above the best eval loss
        of the run so far...
    train_drop: ...while the train EMA fell at least this fraction since that best eval.
        The episode clears only when eval loss is back within `rise` of its best.
    """

    train_metric: str = vocab.LOSS.name
    eval_metric: str = vocab.EVAL_LOSS.name
    alpha: float = 0.1
    evals: int = 5
    rise: float = 0.05
    train_drop: float = 0.01


@dataclass
class _Fit:
    train_ema: float | None = None
    best: tuple[float, float] | None = None  # (best eval loss, train EMA then)


class OverfittingDetector:
    """Flags eval loss rising while train loss falls, judged at each evaluation point; it
    clears at the first evaluation where that no longer holds. Delay: the evaluation at
    which eval loss is `rise` above its recent best."""

    name = "overfitting"

    def __init__(self, params: OverfittingParams | None = None) -> None:
        self.params = params or OverfittingParams()
        self._state: dict[tuple[str, int], _Fit] = {}
        self._episodes = Episodes()

    def wants(self, metric: str) -> bool:
        """True for the train and eval loss."""
        return matches(metric, (self.params.train_metric, self.params.eval_metric))

    def observe(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> tuple[Flag, ...]:
        """Add a train or eval loss point; an eval point may start or clear an episode."""
        if not math.isfinite(value):
            return ()
        p = self.params
        key = (run, rank)
        fit = self._state.setdefault(key, _Fit())
        if canonical(metric) == canonical(p.train_metric):
            fit.train_ema = (
                value
                if fit.train_ema is None
                else (fit.train_ema + p.alpha * (value - fit.train_ema))
            )
            return ()
        if fit.train_ema is None:
            return ()
        if fit.best is None or value < fit.best[0]:
            fit.best = (value, fit.train_ema)
        best_eval, train_then = fit.best
        rising = value > best_eval * (1 + p.rise)
        falling = fit.train_ema < train_then * (1 - p.train_drop)
        if self._episodes.is_open(key):
            if rising:
                return ()  # still above its best: the episode goes on
        elif not (rising and falling):
            return ()
        if not rising:
            return (
                self._episodes.close(
                    key,
                    step,
                    t,
                    f"overfitting on rank {rank} cleared at {moment(step, t)}: {p.eval_metric} "
                    f"{value:.4g} (best {best_eval:.4g}), {p.train_metric} EMA "
                    f"{train_then:.4g} -> {fit.train_ema:.4g}",
                    evidence(
                        value,
                        best_eval,
                        best_eval * (1 + p.rise),
                        None,
                        train_then=train_then,
                        train_now=fit.train_ema,
                    ),
                ),
            )
        flag = Flag(
            detector=self.name,
            run=run,
            rank=rank,
            metric=metric,
            step=step,
            t=t,
            severity="warning",
            summary=f"overfitting on rank {rank}: {p.eval_metric} {value:.4g} is up from "
            f"{best_eval:.4g} while {p.train_metric} fell {train_then:.4g} -> {fit.train_ema:.4g}",
            evidence=evidence(
                value,
                best_eval,
                best_eval * (1 + p.rise),
                None,
                train_then=train_then,
                train_now=fit.train_ema,
            ),
        )
        return (self._episodes.start(key, flag),)
