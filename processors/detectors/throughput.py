"""Throughput regression: samples (or tokens) per second well below its own baseline."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from processors.detectors.base import median
from processors.detectors.shape import Evidence, SeriesDetector
from processors.flags import evidence, moment
from stepstream import vocabulary as vocab


@dataclass(frozen=True)
class ThroughputParams:
    """Parameters of `ThroughputDetector`.

    metrics: throughput metrics (higher is better).
    bucket_s: values are averaged over buckets of this many seconds of event time before
        they are judged: a per-step throughput of a 2 ms step is noise (a GC pause, a
        scheduler tick), a per-second mean is the rate people mean.
    baseline_points: buckets before the recent ones forming the baseline median.
    recent_points: buckets whose median is compared to the baseline.
    drop: regression when the recent median is below baseline * (1 - drop).
    """

    metrics: tuple[str, ...] = (vocab.SAMPLES_PER_S.name, vocab.TOKENS_PER_S.name)
    bucket_s: float = 1.0
    baseline_points: int = 100
    recent_points: int = 10
    drop: float = 0.3


@dataclass
class _Rate:
    points: deque[float]
    #: The open bucket: (start, sum, count).
    bucket: tuple[float, float, int] | None = None
    now: float = 0.0
    base: float = 0.0
    threshold: float = 0.0


class ThroughputDetector(SeriesDetector[_Rate, ThroughputParams]):
    """Flags a sustained throughput drop: the median of the last `recent_points` one-second
    means below the median of the `baseline_points` before them by `drop`. It clears when the
    recent median is back at or above that threshold (the baseline follows the series, so a
    lasting drop becomes the new baseline and clears too). Delay: about recent_points / 2
    buckets after the drop."""

    name = "throughput_regression"
    severity = "warning"

    def __init__(self, params: ThroughputParams | None = None) -> None:
        super().__init__(params or ThroughputParams())

    def new_state(self, run: str, rank: int, metric: str) -> _Rate:
        p = self.params
        return _Rate(deque(maxlen=p.baseline_points + p.recent_points))

    def judge(
        self,
        state: _Rate,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        is_open: bool,
    ) -> bool | None:
        p = self.params
        bucket = state.bucket
        if bucket is None or t < bucket[0] + p.bucket_s:
            start, total, n = bucket if bucket is not None else (t, 0.0, 0)
            state.bucket = (start, total + value, n + 1)
            return None
        # The point opens the next bucket: the finished one is judged.
        state.bucket = (t, value, 1)
        points = state.points
        points.append(bucket[1] / bucket[2])
        if len(points) < p.recent_points + max(p.recent_points, p.baseline_points // 4):
            return None
        data = list(points)
        state.now = median(data[-p.recent_points :])
        state.base = median(data[: -p.recent_points])
        state.threshold = state.base * (1 - p.drop)
        return state.now < state.threshold

    def describe(
        self,
        state: _Rate,
        run: str,
        rank: int,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        starting: bool,
    ) -> tuple[str, Evidence]:
        ev = evidence(state.now, state.base, state.threshold, float(self.params.recent_points))
        if starting:
            return (
                f"{metric} on rank {rank} fell to {state.now:.4g} from a baseline of "
                f"{state.base:.4g}",
                ev,
            )
        return (
            f"{metric} regression on rank {rank} cleared at {moment(step, t)}: "
            f"{state.now:.4g} against a baseline of {state.base:.4g}",
            ev,
        )
