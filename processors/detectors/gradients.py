"""Exploding and vanishing gradients: the global norm (``grad/global_norm``, alias
``grad_norm``) and each layer's (``grad/norm/<layer>``, alias ``grad_norm/<layer>``).

Thresholds come from healthy training measured here (`bench/detection.py` and the note in
docs/detectors.md): a healthy layer's single norm went as far as 12x below and 9.5x above
its rolling median, the median of its last 5 norms 9x below while every layer shrank
together early in training, and 4.7x below once judged against the other layers too. So
vanishing is judged on the median of the last `recent` norms, against both the layer's own
baseline and the other layers of the rank, and a collapse of 6.7x or more (the fault range
is 10x-100x) fires; a single-point explosion fires at 10x for the global norm (healthy
maximum 4.3x) and 20x for a layer.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

from processors.detectors.base import matches, median
from processors.flags import (
    RESTATED,
    Flag,
    RankKey,
    cleared_flag,
    evidence,
    forget_ranks,
    moment,
)
from stepstream import vocabulary as vocab


@dataclass(frozen=True)
class GradientParams:
    """Parameters of `GradientDetector`.

    metrics: gradient-norm signals (vocabulary names; aliases match too); a family
        (``grad/norm/``) means every layer.
    window: previous finite points forming the rolling-median baseline.
    min_points: baseline points needed before ratios are judged (absolute limits apply at
        once).
    recent: vanishing is judged on the median of this many newest points.
    explode_ratio: a global norm this many times its baseline median is exploding...
    explode_layer_ratio: ...and a layer's norm this many times its own.
    explode_abs: a norm above this is exploding whatever the history.
    vanish_ratio: a layer is vanishing when the median of its recent norms is below this
        fraction of its baseline and of the other layers' same ratio.
    vanish_global_ratio: the global norm is vanishing below this fraction of its baseline.
    rearm: a vanishing episode clears when the judged ratio is back above
        `rearm` x `vanish_ratio` (hysteresis, so a collapse near the limit is one episode).
    refresh: the baseline median is recomputed every this many points (it moves slowly,
        and a median per value is the dominant cost with many layers).
    """

    metrics: tuple[str, ...] = (vocab.GRAD_NORM.name, vocab.GRAD_LAYER_NORM.name)
    window: int = 50
    min_points: int = 20
    recent: int = 5
    explode_ratio: float = 10.0
    explode_layer_ratio: float = 20.0
    explode_abs: float = 1e4
    vanish_ratio: float = 0.15
    vanish_global_ratio: float = 0.01
    rearm: float = 2.0
    refresh: int = 8


@dataclass(slots=True)
class _Series:
    layer: bool
    baseline: deque[float]
    recent: deque[float]
    base: float | None = None
    age: int = 0
    #: The flag that opened the current exploding/vanishing episode, if one is open.
    open: Flag | None = None
    #: Limits from the baseline, recomputed with it: a norm above `high` explodes; the
    #: recent points below `low` (`near` of them) are the ones that could make it vanish.
    high: float = math.inf
    low: float = -math.inf
    near: int = 0


def _low_ratio(series: _Series) -> float | None:
    """A layer's second-lowest recent norm over its baseline (None without a baseline)."""
    if series.base is None or series.base <= 0 or len(series.recent) < 2:
        return None
    return sorted(series.recent)[1] / series.base


@dataclass
class _Rank:
    layers: dict[str, _Series] = field(default_factory=dict)


class GradientDetector:
    """Flags ``exploding_gradients`` and ``vanishing_gradients`` per series (so per layer;
    the alert engine groups them into one incident per run). An exploding episode clears at
    the first norm under its limit; a vanishing one when the judged ratio is back above
    `rearm` x the limit. The baseline is frozen while an episode is open, so a lasting
    collapse stays firing. Delay: the offending record (exploding), `recent`/2 + 1 points
    (vanishing)."""

    name = "gradients"
    EXPLODING = "exploding_gradients"
    VANISHING = "vanishing_gradients"

    def __init__(self, params: GradientParams | None = None) -> None:
        self.params = params or GradientParams()
        self._series: dict[tuple[str, int, str], _Series] = {}
        self._ranks: dict[tuple[str, int], _Rank] = {}

    def wants(self, metric: str) -> bool:
        """True for gradient-norm metrics."""
        return matches(metric, self.params.metrics)

    def forget(self, ranks: Collection[RankKey]) -> None:
        """Drop the series of `ranks` (idle publishers), open episodes included."""
        forget_ranks(self._series, ranks)
        forget_ranks(self._ranks, ranks)

    def restated(self, run: str, rank: int) -> list[Flag]:
        """The open episodes of one rank, as flags to send again after a rebalance."""
        return [
            dataclasses.replace(series.open, labels={**series.open.labels, RESTATED: "1"})
            for (r, k, _), series in self._series.items()
            if (r, k) == (run, rank) and series.open is not None
        ]

    def _new(self, run: str, rank: int, metric: str) -> _Series:
        p = self.params
        layer = vocab.is_signal(metric, vocab.GRAD_LAYER_NORM)
        series = _Series(layer, deque(maxlen=p.window), deque(maxlen=p.recent), high=p.explode_abs)
        self._series[(run, rank, metric)] = series
        if layer:
            self._ranks.setdefault((run, rank), _Rank()).layers[metric] = series
        return series

    def observe(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> tuple[Flag, ...]:
        """Add one gradient norm; a flag when an exploding/vanishing episode starts, a
        cleared flag when one ends (both when a norm jumps from one kind to the other)."""
        if not math.isfinite(value):
            return ()  # the non-finite detector owns these
        p = self.params
        series = self._series.get((run, rank, metric)) or self._new(run, rank, metric)
        series.age -= 1
        if series.age <= 0 and len(series.baseline) >= p.min_points:
            self._refresh(series)
        base = series.base
        opening = series.open
        if value > series.high:  # exploding: the single point, against its baseline
            if opening is not None and opening.detector == self.EXPLODING:
                return ()
            ended = self._end(series, step, t, value) if opening is not None else ()
            summary = (
                f"exploding gradient: {metric}={value:.3g} on rank {rank} "
                f"({value / base:.3g}x its rolling median {base:.3g})"
                if base
                else f"exploding gradient: {metric}={value:.3g} on rank {rank} "
                f"(above the absolute limit {p.explode_abs:g})"
            )
            flag = self._start(
                series,
                self.EXPLODING,
                run,
                rank,
                metric,
                step,
                t,
                "critical",
                summary,
                evidence(value, base, series.high, float(len(series.baseline))),
            )
            return (*ended, flag)
        last = series.recent
        if len(last) == last.maxlen and last[0] < series.low:
            series.near -= 1
        last.append(value)
        if value < series.low:
            series.near += 1
        if opening is None and series.near * 2 < p.recent:
            # The common case, one comparison per norm: under half the recent points near
            # the vanishing limit, so their median is not under it.
            if len(last) == last.maxlen:
                series.baseline.append(last[0])
            return ()
        # Vanishing: the median of the recent points, against the baseline and the peers.
        judged = self._vanish_ratio(run, rank, series)
        limit = p.vanish_ratio if series.layer else p.vanish_global_ratio
        if opening is not None:
            still = (
                opening.detector == self.VANISHING
                and judged is not None
                and (judged < limit * p.rearm)
            )
            if still:
                return ()
            return self._end(series, step, t, value)
        if judged is not None and judged < limit:
            assert base is not None
            recent = median(series.recent)
            summary = (
                f"vanishing gradient: {metric} on rank {rank} fell to {recent:.3g}, "
                f"{base / max(recent, 1e-300):.3g}x below its rolling median {base:.3g}"
                + (" while the other layers held" if series.layer else "")
            )
            flag = self._start(
                series,
                self.VANISHING,
                run,
                rank,
                metric,
                step,
                t,
                "warning",
                summary,
                evidence(recent, base, base * limit, float(len(series.baseline)), ratio=judged),
            )
            return (flag,)
        # Healthy: the oldest recent point joins the baseline.
        if len(series.recent) == series.recent.maxlen:
            series.baseline.append(series.recent[0])
        return ()

    def _refresh(self, series: _Series) -> None:
        """A new baseline median, and the limits that follow from it."""
        p = self.params
        base = series.base = median(series.baseline)
        series.age = p.refresh
        ratio = p.explode_layer_ratio if series.layer else p.explode_ratio
        vanish = p.vanish_ratio if series.layer else p.vanish_global_ratio
        series.high = min(p.explode_abs, base * ratio) if base > 0 else p.explode_abs
        series.low = base * vanish * p.rearm if base > 0 else -math.inf
        series.near = sum(1 for v in series.recent if v < series.low)

    def _vanish_ratio(self, run: str, rank: int, series: _Series) -> float | None:
        """The ratio vanishing is judged on, or None while there is no baseline: recent
        median over baseline median; for a layer, also over the other layers' ratios
        (a whole model shrinking together is training, not one layer vanishing)."""
        p = self.params
        base = series.base
        if base is None or base <= 0 or len(series.recent) < p.recent:
            return None
        own = median(series.recent) / base
        if not series.layer:
            return own
        # The other layers of the same step may not have arrived yet (they come one by
        # one): a peer is judged on its second-lowest recent point, so a whole model
        # shrinking together is not taken for one layer ahead of the others.
        peers = [_low_ratio(s) for s in self._ranks[(run, rank)].layers.values() if s is not series]
        known = [r for r in peers if r is not None]
        if len(known) < 2:
            return own
        return max(own, own / max(median(known), 1e-300))

    def _start(
        self,
        series: _Series,
        kind: str,
        run: str,
        rank: int,
        metric: str,
        step: int | None,
        t: float,
        severity: str,
        summary: str,
        ev: dict[str, float | None],
    ) -> Flag:
        series.open = Flag(
            detector=kind,
            run=run,
            rank=rank,
            metric=metric,
            step=step,
            t=t,
            severity="critical" if severity == "critical" else "warning",
            summary=summary,
            evidence=ev,
        )
        return series.open

    def _end(self, series: _Series, step: int | None, t: float, value: float) -> tuple[Flag]:
        """The end of the open episode, at a norm no longer of its kind."""
        opening = series.open
        assert opening is not None
        series.open = None
        word = "exploding" if opening.detector == self.EXPLODING else "vanishing"
        base = series.base
        shown = "n/a" if base is None else f"{base:.3g}"
        return (
            cleared_flag(
                opening,
                step,
                t,
                f"{word} gradient on {opening.metric} of rank {opening.rank} cleared at "
                f"{moment(step, t)}: {value:.3g} (rolling median {shown})",
                evidence(value, base, opening.evidence.get("threshold"), None),
            ),
        )
