"""Throughput regression: samples (or tokens) per second well below its own baseline."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from processors.detectors.base import matches, median
from processors.flags import Episodes, Flag, evidence, moment
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


class ThroughputDetector:
    """Flags a sustained throughput drop: the median of the last `recent_points` below the
    median of the `baseline_points` before them by `drop`. It clears when the recent median
    is back at or above that threshold (the baseline follows the series, so a lasting drop
    becomes the new baseline and clears too). Delay: about recent_points / 2 points after
    the drop."""

    name = "throughput_regression"

    def __init__(self, params: ThroughputParams | None = None) -> None:
        self.params = params or ThroughputParams()
        self._points: dict[tuple[str, int, str], deque[float]] = {}
        #: The open bucket of each series: (start, sum, count).
        self._bucket: dict[tuple[str, int, str], tuple[float, float, int]] = {}
        self._episodes = Episodes()

    def wants(self, metric: str) -> bool:
        """True for the configured metrics."""
        return matches(metric, self.params.metrics)

    def observe(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> tuple[Flag, ...]:
        """Add one point; a flag when a regression episode starts, a cleared flag when the
        recent median is back above the threshold during one."""
        if not math.isfinite(value):
            return ()
        p = self.params
        key = (run, rank, metric)
        bucket = self._bucket.get(key)
        if bucket is None or t < bucket[0] + p.bucket_s:
            start, total, n = bucket if bucket is not None else (t, 0.0, 0)
            self._bucket[key] = (start, total + value, n + 1)
            return ()
        # The point opens the next bucket: the finished one is judged.
        self._bucket[key] = (t, value, 1)
        points = self._points.get(key)
        if points is None:
            points = self._points[key] = deque(maxlen=p.baseline_points + p.recent_points)
        points.append(bucket[1] / bucket[2])
        if len(points) < p.recent_points + max(p.recent_points, p.baseline_points // 4):
            return ()
        data = list(points)
        now = median(data[-p.recent_points :])
        base = median(data[: -p.recent_points])
        threshold = base * (1 - p.drop)
        if now >= threshold:
            if not self._episodes.is_open(key):
                return ()
            return (
                self._episodes.close(
                    key,
                    step,
                    t,
                    f"{metric} regression on rank {rank} cleared at {moment(step, t)}: "
                    f"{now:.4g} against a baseline of {base:.4g}",
                    evidence(now, base, threshold, float(p.recent_points)),
                ),
            )
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
            summary=f"{metric} on rank {rank} fell to {now:.4g} from a baseline of {base:.4g}",
            evidence=evidence(now, base, threshold, float(p.recent_points)),
        )
        return (self._episodes.start(key, flag),)
