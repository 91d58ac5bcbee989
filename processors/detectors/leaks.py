"""Memory leaks as trends (stage 1, per rank): process RSS, CUDA allocated and reserved
memory, and GPU memory in use, judged by how fast they grow and when they would run out.

Per series, the samples of the last `window_s` give a robust growth rate: the median of
the slopes between each sample and the one half a window later (a Theil-Sen estimate on
n/2 pairs: O(n), and one allocator burst or freed cache moves it little), and the share of
those slopes that are positive (sustained growth rather than a step). A series grows when
the rate exceeds `min_rate_bytes_s` and at least `min_rising` of the slopes rise. It leaks
when it grows and either

- the headroom runs out within `horizon_s` at that rate: RSS against the host's free memory
  (``sys/host_mem_total_bytes`` - ``sys/host_mem_used_bytes``, both sent by the SDK's
  sampler), ``gpu<i>/mem_used_bytes`` against ``gpu<i>/mem_total_bytes``, the CUDA
  allocator's figures against the tightest GPU the rank reports; `limit_bytes` where none
  is known; or
- it has grown without a plateau for `sustained_s` (whatever the headroom).

Warm-up growth that levels off (allocator pools, caches, the first batches) stays quiet:
the half-window slopes of a window that holds the plateau stop rising together. The
episode ends when the rate falls under half of `min_rate_bytes_s` or fewer than half of the
slopes rise.

Thresholds measured on this machine (2 cores, torch 2.13 CPU, the SDK's `SystemSampler`
at 1 s, a training loop of a small MLP, 150 s, RSS 314 MiB): over 60 s windows after the
first 10 s the healthy RSS grew 0.1-0.6 KiB/s (its newest 10 s at most 0.8 KiB/s), and
0.93-1.00 of the half-window slopes rose (a healthy process creeps up a page at a time, so
the share alone cannot tell a leak). `min_rate_bytes_s` = 256 KiB/s is 400 times that
creep and still far under a leak worth paging for (1 GiB/h = 0.3 MiB/s; the reported leak
grew 26 MiB/s). Delay: the first judgement needs `min_span_s` (40 s) of samples; a
20 MB/s leak on a host with 22 GB free (time to exhaustion about 18 min) fires when the
window's half-window slopes all rise, about 30-40 s after it starts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

from processors.detectors.base import median
from processors.detectors.shape import Evidence, SeriesDetector
from processors.flags import RankKey, evidence, forget_ranks, moment
from stepstream import vocabulary as vocab

#: Figures a rank sends that bound its memory (read, not judged).
_HOST_TOTAL = vocab.HOST_MEM_TOTAL.name
_HOST_USED = vocab.HOST_MEM_USED.name


@dataclass(frozen=True)
class LeakParams:
    """Parameters of `LeakDetector` (see the module docstring for the measurements).

    metrics: the memory series judged (vocabulary names; ``gpu/mem_used_bytes`` is every
        ``gpu<i>/mem_used_bytes``).
    window_s: seconds of samples the growth rate is estimated over.
    min_span_s, min_points: what a window needs before it is judged.
    min_rate_bytes_s: growth slower than this is noise.
    min_rising: share of the half-window slopes that must rise...
    recent_s: ...and the newest this many seconds must grow faster than the noise too
        (a warm-up that levelled off inside the window is quiet at once).
    horizon_s: leak when the headroom runs out within this at the current rate.
    sustained_s: leak when growth lasts this long with no plateau, whatever the headroom.
    limit_bytes: the headroom's bound where the rank reports none (None: only the
        sustained rule applies).
    """

    metrics: tuple[str, ...] = (
        vocab.PROC_RSS.name,
        vocab.CUDA_ALLOCATED.name,
        vocab.CUDA_RESERVED.name,
        vocab.GPU_MEM_USED.name,
    )
    window_s: float = 60.0
    min_span_s: float = 40.0
    min_points: int = 15
    min_rate_bytes_s: float = 256 * 1024
    min_rising: float = 0.8
    recent_s: float = 10.0
    horizon_s: float = 1800.0
    sustained_s: float = 900.0
    limit_bytes: float | None = None


@dataclass
class _Trend:
    #: The rank's latest bounds (shared by its series): host total/used, GPU totals/used.
    bounds: dict[str, float]
    points: deque[tuple[float, float]] = field(default_factory=deque)
    growing_since: float | None = None
    rate: float = 0.0
    rising: float = 0.0
    recent: float = 0.0
    headroom: float | None = None
    projected_s: float | None = None


def growth(points: deque[tuple[float, float]]) -> tuple[float, float]:
    """(rate in units/s, share of rising slopes) of `points` (time, value): the median of
    the slopes between each point and the one half the window later."""
    pts = list(points)
    h = len(pts) // 2
    slopes = [
        (pts[i + h][1] - pts[i][1]) / (pts[i + h][0] - pts[i][0])
        for i in range(len(pts) - h)
        if pts[i + h][0] > pts[i][0]
    ]
    if not slopes:
        return 0.0, 0.0
    return median(slopes), sum(1 for s in slopes if s > 0) / len(slopes)


def recent_rate(points: deque[tuple[float, float]], seconds: float) -> float:
    """The growth rate over the newest `seconds` of `points` (end points)."""
    t_end, v_end = points[-1]
    for t, v in reversed(points):
        if t_end - t >= seconds:
            return (v_end - v) / (t_end - t)
    return 0.0


class LeakDetector(SeriesDetector[_Trend, LeakParams]):
    """Flags memory that grows towards exhaustion, or without a plateau (see the module
    docstring). Delay: `min_span_s` at least; then as soon as the window's slopes agree."""

    name = "memory_leak"
    severity = "warning"

    def __init__(self, params: LeakParams | None = None) -> None:
        super().__init__(params or LeakParams())
        self._bounds: dict[tuple[str, int], dict[str, float]] = {}

    def forget(self, ranks: Collection[RankKey]) -> None:
        super().forget(ranks)
        forget_ranks(self._bounds, ranks)

    def wants(self, metric: str) -> bool:
        """The judged series (by vocabulary signal: every GPU's) and their bounds."""
        if self._is_bound(metric):
            return True
        signal = vocab.signal_of(metric)
        return signal is not None and signal.name in self.params.metrics

    @staticmethod
    def _is_bound(metric: str) -> bool:
        return metric in (_HOST_TOTAL, _HOST_USED) or vocab.signal_of(metric) is (
            vocab.GPU_MEM_TOTAL
        )

    def new_state(self, run: str, rank: int, metric: str) -> _Trend:
        return _Trend(self._bounds.setdefault((run, rank), {}))

    def judge(
        self, state: _Trend, metric: str, step: int | None, t: float, value: float, is_open: bool
    ) -> bool | None:
        if self._is_bound(metric):
            state.bounds[metric] = value
            return None
        p = self.params
        points = state.points
        points.append((t, value))
        while points and points[0][0] < t - p.window_s:
            points.popleft()
        if len(points) < p.min_points or t - points[0][0] < p.min_span_s:
            return None
        state.rate, state.rising = growth(points)
        state.recent = recent_rate(points, p.recent_s)
        growing = (
            state.rate > p.min_rate_bytes_s
            and state.rising >= p.min_rising
            and state.recent > p.min_rate_bytes_s
        )
        if not growing:
            state.growing_since = None
            calm = state.rate < p.min_rate_bytes_s / 2 or state.rising < 0.5
            return False if calm or not is_open else None
        if state.growing_since is None:
            state.growing_since = points[0][0]
        state.headroom = self._headroom(metric, state.bounds, value)
        # The window's median lags a leak that started inside it: project at the faster
        # of the two rates (both grow faster than the noise here).
        fastest = max(state.rate, state.recent)
        state.projected_s = (
            max(0.0, state.headroom) / fastest if state.headroom is not None else None
        )
        soon = state.projected_s is not None and state.projected_s <= p.horizon_s
        return soon or t - state.growing_since >= p.sustained_s or (True if is_open else None)

    def _headroom(self, metric: str, bounds: dict[str, float], value: float) -> float | None:
        """Bytes left before the memory `metric` counts against runs out."""
        if vocab.signal_of(metric) is vocab.PROC_RSS:
            total, used = bounds.get(_HOST_TOTAL), bounds.get(_HOST_USED)
            if total is not None:
                return total - (used if used is not None else value)
        elif metric.startswith("gpu"):
            index = metric.split("/", 1)[0]
            total = bounds.get(f"{index}/mem_total_bytes")
            if total is not None:
                return total - value
        else:  # the CUDA allocator's figures: against the tightest GPU reported
            gpus = [
                (total, bounds.get(name.replace("total", "used"), value))
                for name, total in bounds.items()
                if name.startswith("gpu")
            ]
            if gpus:
                return min(total - max(used, value) for total, used in gpus)
        limit = self.params.limit_bytes
        return limit - value if limit is not None else None

    def describe(
        self,
        state: _Trend,
        run: str,
        rank: int,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        starting: bool,
    ) -> tuple[str, Evidence]:
        p = self.params
        grown = t - state.growing_since if state.growing_since is not None else 0.0
        ev = evidence(
            value,
            state.points[0][1] if state.points else None,
            p.horizon_s,
            p.window_s,
            rate_bytes_s=state.rate,
            recent_rate_bytes_s=state.recent,
            projected_s=state.projected_s,
            headroom_bytes=state.headroom,
            rising=state.rising,
            growing_s=grown,
        )
        if not starting:
            return (
                f"{metric} on rank {rank} stopped growing at {moment(step, t)}: "
                f"{state.rate / 2**20:.2f} MiB/s over the last {p.window_s:.0f}s",
                ev,
            )
        when = (
            f"runs out in {state.projected_s / 60:.1f} min"
            if state.projected_s is not None
            else "no bound known"
        )
        return (
            f"{metric} on rank {rank} grows {max(state.rate, state.recent) / 2**20:.2f} MiB/s "
            f"for {grown:.0f}s "
            f"({value / 2**20:.0f} MiB now): {when} at that rate (memory leak?)",
            ev,
        )
