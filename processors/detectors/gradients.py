"""Exploding and vanishing gradients, globally (``grad_norm``) and per layer
(``grad_norm/<layer>``)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from processors.detectors.base import matches, median
from processors.flags import Flag, cleared_flag, evidence, moment


@dataclass(frozen=True)
class GradientParams:
    """Parameters of `GradientDetector`.

    metrics: gradient-norm names; ``grad_norm`` also matches ``grad_norm/<layer>``.
    window: previous finite points forming the rolling-median baseline.
    min_points: ratio tests wait for this many points (absolute limits apply at once).
    explode_ratio: a norm this many times the rolling median is exploding.
    explode_abs: a norm above this is exploding whatever the history.
    vanish_ratio: a norm below this fraction of the rolling median is vanishing.
    vanish_abs: a norm below this is vanishing whatever the history.
    refresh: the baseline median is recomputed every this many points (it moves slowly,
        and a median per value is the dominant cost with many layers).
    """

    metrics: tuple[str, ...] = ("grad_norm",)
    window: int = 50
    min_points: int = 10
    explode_ratio: float = 10.0
    explode_abs: float = 1e4
    vanish_ratio: float = 1e-3
    vanish_abs: float = 1e-10
    refresh: int = 8


class _Series:
    __slots__ = ("age", "base", "high", "history", "low", "open")

    def __init__(self, window: int) -> None:
        self.history: deque[float] = deque(maxlen=window)
        self.base: float | None = None
        self.age = 0
        #: The flag that opened the current exploding/vanishing episode, if one is open.
        self.open: Flag | None = None
        # The band of values that cannot flag until the next baseline refresh.
        self.low = math.inf
        self.high = -math.inf


class GradientDetector:
    """Flags ``exploding_gradients`` and ``vanishing_gradients`` per series (so per layer);
    an episode clears at the first norm inside the limits again (or of the other kind).
    Delay: the offending record itself."""

    name = "gradients"
    EXPLODING = "exploding_gradients"
    VANISHING = "vanishing_gradients"

    def __init__(self, params: GradientParams | None = None) -> None:
        self.params = params or GradientParams()
        self._series: dict[tuple[str, int, str], _Series] = {}

    def wants(self, metric: str) -> bool:
        """True for gradient-norm metrics."""
        return matches(metric, self.params.metrics)

    def observe(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> tuple[Flag, ...]:
        """Add one gradient norm; a flag when an exploding/vanishing episode starts, a
        cleared flag when one ends (both when a norm jumps from one kind to the other)."""
        if not math.isfinite(value):
            return ()  # the non-finite detector owns these
        p = self.params
        key = (run, rank, metric)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(p.window)
        history = series.history
        series.age -= 1
        if series.low <= value <= series.high and series.age > 0 and series.open is None:
            history.append(value)  # the common case: well inside the healthy band
            return ()
        if series.age <= 0 and len(history) >= p.min_points:
            fresh = median(history)
            series.age, series.base = p.refresh, fresh
            series.low = max(p.vanish_abs, fresh * p.vanish_ratio if fresh > 0 else math.inf)
            series.high = min(p.explode_abs, fresh * p.explode_ratio if fresh > 0 else -math.inf)
        base = series.base
        kind = threshold = None
        if value > p.explode_abs:
            kind, threshold = self.EXPLODING, p.explode_abs
        elif base is not None and base > 0 and value > base * p.explode_ratio:
            kind, threshold = self.EXPLODING, base * p.explode_ratio
        elif value < p.vanish_abs:
            kind, threshold = self.VANISHING, p.vanish_abs
        elif base is not None and value < base * p.vanish_ratio:
            kind, threshold = self.VANISHING, base * p.vanish_ratio
        opening = series.open
        if opening is not None and opening.detector == kind:
            if kind != self.EXPLODING:
                history.append(value)
            return ()  # the episode goes on
        ended: tuple[Flag, ...] = ()
        if opening is not None:
            series.open = None
            ended = (self._cleared(opening, step, t, value, base, len(history)),)
        if kind is None:
            history.append(value)
            return ended
        word = "exploding" if kind == self.EXPLODING else "vanishing"
        shown = "n/a" if base is None else f"{base:.3g}"
        flag = series.open = Flag(
            detector=kind,
            run=run,
            rank=rank,
            metric=metric,
            step=step,
            t=t,
            severity="critical" if kind == self.EXPLODING else "warning",
            summary=f"{word} gradient: {metric}={value:.3g} on rank {rank} "
            f"(rolling median {shown})",
            evidence=evidence(value, base, threshold, float(len(history))),
        )
        if kind != self.EXPLODING:
            history.append(value)  # keep the baseline clean of a blow-up
        return (*ended, flag)

    def _cleared(
        self, opening: Flag, step: int | None, t: float, value: float, base: float | None, n: int
    ) -> Flag:
        """The end of the episode `opening` started, at a norm no longer of its kind."""
        p = self.params
        if opening.detector == self.EXPLODING:
            word = "exploding"
            limit = p.explode_abs
            if base is not None and base > 0:
                limit = min(limit, base * p.explode_ratio)
        else:
            word = "vanishing"
            limit = p.vanish_abs if base is None else max(p.vanish_abs, base * p.vanish_ratio)
        shown = "n/a" if base is None else f"{base:.3g}"
        return cleared_flag(
            opening,
            step,
            t,
            f"{word} gradient on {opening.metric} of rank {opening.rank} cleared at "
            f"{moment(step, t)}: {value:.3g} (rolling median {shown})",
            evidence(value, base, limit, float(n)),
        )
