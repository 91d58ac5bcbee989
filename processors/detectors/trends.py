"""Training-curve detectors: plateau, divergence and overfitting. They watch a smoothed
(EMA) loss so that step-to-step noise does not decide."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Hashable
from dataclasses import dataclass, field

from processors.detectors.base import matches, median
from processors.detectors.shape import Evidence, SeriesDetector
from processors.flags import Flag, RankKey, evidence, forget_ranks, moment
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
    ema: float | None = None
    best: float = math.inf
    best_step: int = 0
    previous: float = math.inf  # the best before the last improvement
    stalled_for: int = 0
    why: str | None = None
    rank_key: tuple[str, int] = ("", 0)


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


#: Most metric names whose role the plateau detector remembers at once.
_NAME_CACHE = 65_536


class PlateauDetector(SeriesDetector[_Best, PlateauParams]):
    """Flags a stalled run: a loss whose EMA has not improved for `patience` steps while
    its rank's training stopped moving (learning rate 0, or updates under
    `stall_update_ratio`). The plateau clears at the next improvement, or when training
    moves again. Delay: `patience` steps after the last improvement."""

    name = "plateau"
    severity = "info"
    needs_step = True

    def __init__(self, params: PlateauParams | None = None) -> None:
        super().__init__(params or PlateauParams())
        self._motion: dict[tuple[str, int], _Motion] = {}
        #: Per metric name: a loss (judged) or a motion signal, and for motion whether
        #: it is a learning rate. Resolved once per name: the vocabulary lookups were a
        #: tenth of a processor's time when done per value.
        self._is_loss: dict[str, bool] = {}
        self._is_lr: dict[str, bool] = {}

    def signals(self) -> tuple[str, ...]:
        return self.params.metrics + self.params.motion

    def forget(self, ranks: Collection[RankKey]) -> None:
        super().forget(ranks)
        forget_ranks(self._motion, ranks)

    def new_state(self, run: str, rank: int, metric: str) -> _Best:
        return _Best(rank_key=(run, rank))

    def observe(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> tuple[Flag, ...]:
        """Add a loss point (the shared skeleton) or a motion signal (learning rate, update
        ratio), which may end the rank's plateaus when training moves again."""
        is_loss = self._is_loss.get(metric)
        if is_loss is None:
            if len(self._is_loss) >= _NAME_CACHE:  # names are capped per run, not overall
                self._is_loss.clear()
            is_loss = self._is_loss[metric] = matches(metric, self.params.metrics)
        if not is_loss:
            if not math.isfinite(value):
                return ()
            return self._moved(run, rank, metric, step, t, value)
        return super().observe(run, rank, metric, step, t, value)

    def judge(
        self,
        state: _Best,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        is_open: bool,
    ) -> bool | None:
        assert step is not None
        p = self.params
        if state.ema is None:
            state.ema = state.best = value
            state.best_step = step
            return None
        state.ema += p.alpha * (value - state.ema)
        if state.ema < state.best - max(p.min_rel_delta * abs(state.best), p.min_abs_delta):
            state.previous, state.stalled_for = state.best, step - state.best_step
            state.best, state.best_step = state.ema, step
            return False
        state.stalled_for = step - state.best_step
        if is_open or state.stalled_for < p.patience:
            return None
        state.why = None
        motion = self._motion.get(state.rank_key)
        if motion is not None:
            state.why = motion.stalled(p.stall_update_ratio)
        if state.why is None and p.require_stall:
            return None
        return True

    def describe(
        self,
        state: _Best,
        run: str,
        rank: int,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        starting: bool,
    ) -> tuple[str, Evidence]:
        p = self.params
        ema = state.ema if state.ema is not None else value
        if starting:
            return (
                f"{metric} has not improved for {state.stalled_for} steps on rank {rank} "
                f"(best EMA {state.best:.4g} at step {state.best_step})"
                + (f": training stalled, {state.why}" if state.why else ""),
                evidence(ema, state.best, float(p.patience), float(state.stalled_for)),
            )
        return (
            f"{metric} plateau on rank {rank} cleared at step {step}: EMA "
            f"{ema:.4g} improved on {state.previous:.4g} after {state.stalled_for} steps",
            evidence(ema, state.previous, float(p.patience), float(state.stalled_for)),
        )

    def _moved(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> tuple[Flag, ...]:
        """A learning rate or update ratio: remember it; end the rank's plateaus if training
        moves again."""
        motion = self._motion.get((run, rank))
        if motion is None:
            motion = self._motion[(run, rank)] = _Motion()
        is_lr = self._is_lr.get(metric)
        if is_lr is None:
            if len(self._is_lr) >= _NAME_CACHE:
                self._is_lr.clear()
            is_lr = self._is_lr[metric] = vocab.is_signal(metric, vocab.LR)
        if is_lr:
            motion.lrs[metric] = value
        else:
            motion.updates[metric] = value
        if not self._episodes:
            return ()
        # Only this rank's open plateaus can end here. Scanning every series of every run
        # for them, on each learning rate of every rank while any plateau was open
        # anywhere, grew with the number of runs.
        keys = self._episodes.open_of(run, rank)
        if not keys or motion.stalled(self.params.stall_update_ratio) is not None:
            return ()
        ended = []
        for key in keys:
            assert isinstance(key, tuple)
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
    low: float = 0.0
    above: bool = False

    def push(self, step: int, ema: float, window: int) -> float:
        """Add the EMA at `step`; return the minimum EMA within the last `window` steps."""
        lows = self.lows
        while lows and lows[-1][1] >= ema:
            lows.pop()
        lows.append((step, ema))
        while lows[0][0] <= step - window:
            lows.popleft()
        return lows[0][1]


class DivergenceDetector(SeriesDetector[_Curve, DivergenceParams]):
    """Flags a loss trending up: its EMA above the starting level, or risen by `rise`
    over its minimum within the last `window` steps; it clears when neither holds any more.
    Delay: a few EMA time constants (1/alpha points) after the loss turns."""

    name = "divergence"
    severity = "critical"
    needs_step = True

    def __init__(self, params: DivergenceParams | None = None) -> None:
        super().__init__(params or DivergenceParams())

    def new_state(self, run: str, rank: int, metric: str) -> _Curve:
        return _Curve()

    def judge(
        self,
        state: _Curve,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        is_open: bool,
    ) -> bool | None:
        assert step is not None
        p = self.params
        state.last.append(value)
        if len(state.last) > p.median_of:
            state.last.popleft()
        smooth = median(state.last)
        state.ema = smooth if state.ema is None else state.ema + p.alpha * (smooth - state.ema)
        state.low = state.push(step, state.ema, p.window)
        if len(state.start) < p.start_points:
            state.start.append(value)
            return None
        # The highest early point, not their mean: the EMA starts at the first point and
        # lags a fast early descent, so it would sit above a mean of the early points.
        start = max(state.start)
        state.above = start > 0 and state.ema > start * p.above_start
        rose = state.low > 0 and state.ema > state.low * (1 + p.rise)
        return state.above or rose

    def describe(
        self,
        state: _Curve,
        run: str,
        rank: int,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        starting: bool,
    ) -> tuple[str, Evidence]:
        p = self.params
        start, low, ema = max(state.start), state.low, state.ema or 0.0
        if not starting:
            return (
                f"{metric} divergence on rank {rank} cleared at step {step}: EMA {ema:.4g} "
                f"is within {p.above_start:g}x its starting level {start:.4g} and "
                f"{p.rise:.0%} of its minimum {low:.4g}",
                evidence(
                    ema, start, start * p.above_start, float(p.window), start=start, minimum=low
                ),
            )
        baseline, threshold = (
            (start, start * p.above_start) if state.above else (low, low * (1 + p.rise))
        )
        why = (
            "above its starting level"
            if state.above
            else f"up {ema / low - 1:.0%} from its minimum"
        )
        return (
            f"{metric} is diverging on rank {rank}: EMA {ema:.4g} is {why}",
            evidence(ema, baseline, threshold, float(p.window), start=start, minimum=low),
        )


@dataclass(frozen=True)
class OverfittingParams:
    """Parameters of `OverfittingDetector`.

    train_metric / eval_metric: names of the training and evaluation loss (vocabulary
        names; aliases such as ``train_loss`` and ``val_loss`` match too).
    alpha: EMA smoothing of the training loss.
    evals: eval losses are judged as the median of the last this many evaluations.
    rise: overfitting when that median is this fraction above its best so far...
    train_drop: ...while the train EMA fell at least this fraction since that best.
        The episode clears only when the eval median is back within `rise` of its best.

    Measured here on healthy jobs run well past convergence (16 jobs, 2500 steps, eval
    every 20): a single eval went up to 17 % over the run's best while the train EMA had
    fallen 1 %; the median of 3 went up to 4.7 % while the train EMA had fallen 5 %. A
    tiny training set drove it 330 % up. Hence 3 evaluations, 10 % and 5 %.
    """

    train_metric: str = vocab.LOSS.name
    eval_metric: str = vocab.EVAL_LOSS.name
    alpha: float = 0.1
    evals: int = 3
    rise: float = 0.10
    train_drop: float = 0.05


@dataclass
class _Fit:
    train_ema: float | None = None
    best: tuple[float, float] | None = None  # (best eval median, train EMA then)
    evals: deque[float] = field(default_factory=deque)
    smoothed: float = 0.0


class OverfittingDetector(SeriesDetector[_Fit, OverfittingParams]):
    """Flags eval loss rising while train loss falls, judged at each evaluation point: the
    eval loss `rise` above its best so far while the train EMA fell `train_drop` since that
    best. It stays firing while eval loss is still `rise` above its best, and clears at the
    first evaluation back within it. Delay: the evaluation at which eval loss is `rise`
    above its best."""

    name = "overfitting"
    severity = "warning"

    def __init__(self, params: OverfittingParams | None = None) -> None:
        super().__init__(params or OverfittingParams())

    def signals(self) -> tuple[str, ...]:
        return (self.params.train_metric, self.params.eval_metric)

    def key(self, run: str, rank: int, metric: str) -> Hashable:
        return (run, rank)  # the train and the eval loss of a rank are judged together

    def new_state(self, run: str, rank: int, metric: str) -> _Fit:
        return _Fit()

    def judge(
        self,
        state: _Fit,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        is_open: bool,
    ) -> bool | None:
        p = self.params
        if canonical(metric) == canonical(p.train_metric):
            ema = state.train_ema
            state.train_ema = value if ema is None else ema + p.alpha * (value - ema)
            return None
        if state.train_ema is None:
            return None
        state.evals.append(value)
        while len(state.evals) > p.evals:
            state.evals.popleft()
        smoothed = state.smoothed = median(state.evals)
        if state.best is None or smoothed < state.best[0]:
            state.best = (smoothed, state.train_ema)
        best_eval, train_then = state.best
        rising = smoothed > best_eval * (1 + p.rise)
        if is_open:
            return rising  # stays firing while eval is still above its best
        return rising and state.train_ema < train_then * (1 - p.train_drop)

    def describe(
        self,
        state: _Fit,
        run: str,
        rank: int,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        starting: bool,
    ) -> tuple[str, Evidence]:
        p = self.params
        assert state.best is not None and state.train_ema is not None
        best_eval, train_then = state.best
        ev = evidence(
            state.smoothed,
            best_eval,
            best_eval * (1 + p.rise),
            None,
            train_then=train_then,
            train_now=state.train_ema,
        )
        if starting:
            return (
                f"overfitting on rank {rank}: {metric} (median of the last {p.evals} "
                f"evaluations) {state.smoothed:.4g} is up from its best {best_eval:.4g} "
                f"while {p.train_metric} fell {train_then:.4g} -> "
                f"{state.train_ema:.4g}",
                ev,
            )
        return (
            f"overfitting on rank {rank} cleared at {moment(step, t)}: {metric} "
            f"{state.smoothed:.4g} is back within {p.rise:.0%} of its best {best_eval:.4g}",
            ev,
        )
