"""Spikes: a value far from its recent median, measured in robust (MAD) units."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from processors.detectors.base import MAD_SCALE, matches, median_mad
from processors.flags import Episodes, Flag, evidence, moment
from stepstream import vocabulary as vocab


@dataclass(frozen=True)
class SpikeParams:
    """Parameters of `SpikeDetector`.

    metrics: names (and their ``name/...`` children) to watch.
    window: how many previous finite points form the baseline.
    min_points: no verdict before the baseline has this many points.
    z: robust z-score |x - median| / (1.4826 * MAD) at or above which a point is a spike.
    min_rel_scale: floor of the robust scale relative to |median|, so a nearly constant
        series does not flag rounding noise.
    """

    metrics: tuple[str, ...] = (vocab.LOSS.name,)
    window: int = 50
    min_points: int = 20
    z: float = 8.0
    min_rel_scale: float = 1e-3


class SpikeDetector:
    """Flags a point whose robust z-score against the rolling median and MAD of the previous
    `window` points reaches `z`; the episode clears at the first point below `z` again.
    Delay: the spiking record itself."""

    name = "spike"

    def __init__(self, params: SpikeParams | None = None) -> None:
        self.params = params or SpikeParams()
        self._history: dict[tuple[str, int, str], deque[float]] = {}
        self._episodes = Episodes()

    def wants(self, metric: str) -> bool:
        """True for the configured metrics."""
        return matches(metric, self.params.metrics)

    def observe(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> tuple[Flag, ...]:
        """Add one point; a flag if it starts a spike episode, a cleared flag if it is the
        first point of the series that no longer spikes."""
        if not math.isfinite(value):
            return ()
        p = self.params
        key = (run, rank, metric)
        history = self._history.get(key)
        if history is None:
            history = self._history[key] = deque(maxlen=p.window)
        if len(history) < p.min_points:
            history.append(value)
            return ()
        med, mad = median_mad(history)
        scale = max(MAD_SCALE * mad, p.min_rel_scale * abs(med), 1e-12)
        z = (value - med) / scale
        if abs(z) >= p.z:
            # A spike stays out of its own baseline so a burst does not become normal.
            if self._episodes.is_open(key):
                return ()
            flag = Flag(
                detector=self.name,
                run=run,
                rank=rank,
                metric=metric,
                step=step,
                t=t,
                severity="warning",
                summary=(
                    f"{metric} spiked to {value:.6g} on rank {rank} (median {med:.6g}, "
                    f"robust z {z:.1f})"
                ),
                evidence=evidence(value, med, p.z, float(len(history)), z=z, mad=mad),
            )
            return (self._episodes.start(key, flag),)
        baseline_points = float(len(history))
        history.append(value)
        if not self._episodes.is_open(key):
            return ()
        return (
            self._episodes.close(
                key,
                step,
                t,
                f"{metric} spike on rank {rank} cleared at {moment(step, t)}: {value:.6g} "
                f"(median {med:.6g}, robust z {z:.1f})",
                evidence(value, med, p.z, baseline_points, z=z, mad=mad),
            ),
        )
