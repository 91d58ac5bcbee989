"""Spikes: a value far from its recent median, measured in robust (MAD) units."""

from __future__ import annotations

from dataclasses import dataclass

from processors.detectors.base import MAD_SCALE, SortedWindow, sorted_median_mad
from processors.detectors.shape import Evidence, SeriesDetector
from processors.flags import evidence, moment
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
    upward_only: only values above the median spike. A loss falls fast early in training,
        faster than its rolling median follows, so a two-sided test flags good news.
    """

    metrics: tuple[str, ...] = (vocab.LOSS.name,)
    window: int = 50
    min_points: int = 20
    z: float = 8.0
    min_rel_scale: float = 1e-3
    upward_only: bool = True


@dataclass
class _Baseline:
    history: SortedWindow
    med: float = 0.0
    mad: float = 0.0
    z: float = 0.0
    points: int = 0


class SpikeDetector(SeriesDetector[_Baseline, SpikeParams]):
    """Flags a point whose robust z-score against the rolling median and MAD of the previous
    `window` points reaches `z`; the episode clears at the first point below `z` again.
    Delay: the spiking record itself."""

    name = "spike"
    severity = "warning"

    def __init__(self, params: SpikeParams | None = None) -> None:
        super().__init__(params or SpikeParams())

    def new_state(self, run: str, rank: int, metric: str) -> _Baseline:
        return _Baseline(SortedWindow(self.params.window))

    def judge(
        self,
        state: _Baseline,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        is_open: bool,
    ) -> bool | None:
        p = self.params
        history = state.history
        if len(history) < p.min_points:
            history.append(value)
            return None
        med, mad = sorted_median_mad(history.ordered)
        scale = max(MAD_SCALE * mad, p.min_rel_scale * abs(med), 1e-12)
        state.med, state.mad, state.z = med, mad, (value - med) / scale
        state.points = len(history)
        if (state.z if p.upward_only else abs(state.z)) >= p.z:
            return True  # a spike stays out of its own baseline: a burst does not become normal
        history.append(value)
        return False

    def describe(
        self,
        state: _Baseline,
        run: str,
        rank: int,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        starting: bool,
    ) -> tuple[str, Evidence]:
        ev = evidence(
            value, state.med, self.params.z, float(state.points), z=state.z, mad=state.mad
        )
        if starting:
            return (
                f"{metric} spiked to {value:.6g} on rank {rank} (median {state.med:.6g}, "
                f"robust z {state.z:.1f})",
                ev,
            )
        return (
            f"{metric} spike on rank {rank} cleared at {moment(step, t)}: {value:.6g} "
            f"(median {state.med:.6g}, robust z {state.z:.1f})",
            ev,
        )
