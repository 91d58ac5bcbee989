"""Rolling windows over steps or event time, as small pure objects.

faust's own windows are whole-second and closed by the wall clock; training telemetry
needs windows over the last N *steps* and over fine-grained *event* time, with records
that may arrive out of order. A window here keeps the points whose position (step or event
time) lies within `span` of the newest position seen, ordered by position.

Cost model: adding a point is O(1) on the in-order path (two list appends), because it runs
once per value. Statistics are computed on demand, once per touched series per processed
batch, over the bounded window with C-level reductions (``sorted``, ``sum``, ``min``). That
beats running sums updated per point in Python here: the per-value path is what limits
throughput, and one reduction over a window of a few hundred points costs less than
updating five running sums at every add. Several window sizes of the same kind share one
point buffer (the largest span); a smaller window is a slice of it.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from functools import lru_cache
from operator import mul
from typing import Any

import msgspec
import numpy as np

from stepstream.contract import WINDOW_STATS_NUMBERS, window_stats_types

#: Windows with more finite points than this are summarized with numpy, fewer in Python
#: (converting a short list to an array costs more than the arithmetic it saves).
NUMPY_FROM = 128

#: Weight of a point at the far edge of a window in the EMA: exp(-EMA_EDGE) ≈ 0.14,
#: the same as an N-step EMA with alpha = 2 / (N + 1) gives a point N steps back.
EMA_EDGE = 2.0


#: The fields of `Summary`: the contract's numeric window stats (`WINDOW_STATS_NUMBERS`),
#: with its types and defaults, so that a stat added there is computed into the same
#: slot here. A msgspec Struct: built in C (0.06 us against a frozen dataclass's 1.2 us,
#: per series per window, a tenth of stage 1), and written by msgspec as the JSON object
#: of `WindowStats`. Typed Any: a class made at run time is no type to mypy.
_SummaryFields: Any = msgspec.defstruct(
    "_SummaryFields",
    [
        (name, kind, default)
        for name, kind, default in window_stats_types()
        if name in WINDOW_STATS_NUMBERS
    ],
    frozen=True,
    gc=False,
    module=__name__,
)


class Summary(_SummaryFields):
    """Statistics of the values in a window (`stepstream.contract.WindowStats` without
    the detectors' flags), positional in the contract's order.

    Non-finite values are counted in `nonfinite` and left out of every other statistic
    so that one NaN does not erase the window's history; `last` is the value at the newest
    position, finite or not. `std` is the population standard deviation. `p50`/`p95` use
    linear interpolation between closest ranks (``statistics.quantiles(method=
    "inclusive")``). `ema` is the exponentially weighted mean with weight
    ``exp(-2 * age / span)`` (age in steps or seconds behind the newest point), so it does
    not depend on arrival order. `slope` is the least-squares slope of value against
    position: per step for step windows, per second for time windows.
    """

    @property
    def flags(self) -> None:
        """No detector flags: stage 1 sends a series with open ones as `WindowStats`."""
        return None


EMPTY_SUMMARY = Summary(count=0, nonfinite=0, mean=None, min=None, max=None, last=None)


def finite_mean(values: Sequence[float]) -> float:
    """The exact mean of finite values (`math.fsum`), also when their sum exceeds the
    float range: fsum raises OverflowError there (two ranks logging 1e308 crashed a
    stage), so the values are scaled by 1/n first, which keeps every partial sum within
    the largest value."""
    n = len(values)
    try:
        return math.fsum(values) / n
    except OverflowError:
        return math.fsum(v / n for v in values)


def population_std(values: Sequence[float], mean: float) -> float:
    """The population standard deviation of finite values around their `mean`, finite
    whenever the true one is: where the squares leave the float range (``x ** 2`` raised
    there), the deviations are taken at half scale and normalized by the largest."""
    n = len(values)
    dev = [v - mean for v in values]
    try:
        std = math.sqrt(math.fsum(map(mul, dev, dev)) / n)
    except OverflowError:
        std = math.inf
    if math.isfinite(std):
        return std
    half = [v / 2 - mean / 2 for v in values]  # no overflow: |v / 2| <= max / 2
    scale = max(map(abs, half))
    if scale == 0.0:
        return 0.0
    unit = [d / scale for d in half]
    return scale * (2.0 * math.sqrt(math.fsum(map(mul, unit, unit)) / n))


def percentile(ordered: list[float], q: float) -> float:
    """The `q` quantile (0..1) of sorted values by linear interpolation between ranks."""
    h = (len(ordered) - 1) * q
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


def summarize(
    values: list[float], positions: list[float] | None = None, span: float | None = None
) -> Summary:
    """Summarize values given in position order (the last one is the newest).

    Without `positions` the values are taken as one per unit position (consecutive steps);
    without `span` the EMA weighs every point equally (span = infinity).
    """
    if not values:
        return EMPTY_SUMMARY
    if positions is None:
        positions = [float(i) for i in range(len(values))]
    if math.isfinite(sum(values)):  # a NaN or an infinity anywhere makes the sum non-finite
        vals, pos = values, positions
    else:
        pairs = [(p, v) for p, v in zip(positions, values, strict=True) if math.isfinite(v)]
        pos = [p for p, _ in pairs]
        vals = [v for _, v in pairs]
    last = values[-1]
    n = len(vals)
    if n == 0:
        return Summary(len(values), len(values), None, None, None, last)
    mean = finite_mean(vals)
    dev = [v - mean for v in vals]
    std = math.sqrt(sum(map(mul, dev, dev)) / n)
    if not math.isfinite(std):  # the squares left the float range
        std = population_std(vals, mean)
    ordered = sorted(vals)
    newest = positions[-1]
    if span is None or not math.isfinite(span):
        ema = mean
    else:
        k = EMA_EDGE / span
        weights = [math.exp(k * (p - newest)) for p in pos]
        ema = sum(map(mul, weights, vals)) / sum(weights)
    slope = None
    if n >= 2:
        mean_pos = math.fsum(pos) / n
        dpos = [p - mean_pos for p in pos]
        sxx = sum(map(mul, dpos, dpos))
        if sxx > 0:
            slope = sum(map(mul, dpos, dev)) / sxx
    return Summary(
        count=len(values),
        nonfinite=len(values) - n,
        mean=mean,
        min=ordered[0],
        max=ordered[-1],
        last=last,
        std=std,
        ema=ema,
        p50=percentile(ordered, 0.5),
        p95=percentile(ordered, 0.95),
        slope=slope,
    )


def summarize_arrays(y: np.ndarray, x: np.ndarray, span: float | None) -> Summary:
    """`summarize` for long windows: the same definitions, vectorized over float64 arrays
    of values `y` and positions `x` in position order. The one-window twin of
    `_summarize_block`, kept apart: as a one-row block, a 256- to 3,000-point window took
    17-23 us more (the 2-D reductions and column conversions cost more than one row saves)."""
    count = len(y)
    if count == 0:
        return EMPTY_SUMMARY
    last = float(y[-1])
    newest = float(x[-1])
    finite = np.isfinite(y)
    if not finite.all():
        y, x = y[finite], x[finite]
    n = len(y)
    if n == 0:
        return Summary(count, count, None, None, None, last)
    mean = float(y.sum()) / n
    mean += float((y - mean).sum()) / n  # as in `_summarize_block`
    dev = y - mean
    # Only six order statistics are read: a partition finds them in O(n), a sort is
    # O(n log n) (a 60 s window at 50 points/s holds 3000).
    ordered = np.partition(y, _ranks(n))
    if span is None or not math.isfinite(span):
        ema = mean
    else:
        weights = np.exp((EMA_EDGE / span) * (x - newest))
        ema = float(weights @ y / weights.sum())
    dx = x - x.mean()
    sxx = float(dx @ dx)
    return Summary(
        count=count,
        nonfinite=count - n,
        mean=mean,
        min=float(ordered[0]),
        max=float(ordered[-1]),
        last=last,
        std=math.sqrt(float(dev @ dev) / n),
        ema=ema,
        p50=_np_percentile(ordered, 0.5),
        p95=_np_percentile(ordered, 0.95),
        slope=float(dx @ dev) / sxx if n >= 2 and sxx > 0 else None,
    )


@lru_cache(maxsize=4096)
def _ranks(n: int) -> tuple[int, ...]:
    """The sorted positions `summarize_arrays` reads: min, max and the two ranks each of
    p50 and p95 interpolate between (cached: windows hold a few distinct lengths)."""
    out = {0, n - 1}
    for q in (0.5, 0.95):
        low = math.floor((n - 1) * q)
        out.update((low, min(low + 1, n - 1)))
    return tuple(sorted(out))


def _np_percentile(ordered: np.ndarray, q: float) -> float:
    h = (len(ordered) - 1) * q
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (h - low) * (ordered[high] - ordered[low]))


class RollingWindow:
    """Points whose position is within `span` of the newest position: (newest - span, newest].

    For a step window the position is the step and `span` the number of steps; for a time
    window the position is the event time and `span` the seconds. A point at a position
    already held replaces it (a re-sent step overwrites). A point older than the window is
    refused and counted in `late`, never raised. `summary(span)` summarizes a smaller
    window over the same points, so sizes of one kind share one buffer.
    """

    __slots__ = ("buf", "evict_gap", "late", "positions", "span")

    def __init__(self, span: float) -> None:
        if span <= 0:
            raise ValueError(f"window span must be > 0, got {span}")
        self.span = span
        #: Once the oldest point is this far behind the newest, stale points are evicted.
        self.evict_gap = span * 1.125
        # array('d') appends as fast as a list and lends numpy a zero-copy view. Public
        # for one reader: stage 1's per-value loop inlines the in-order case of `add`
        # (positions newer than the newest, nothing to evict) to save a call per value.
        self.positions = array("d")
        self.buf = array("d")
        self.late = 0

    def __len__(self) -> int:
        return len(self.buf) - self._start(None)

    @property
    def newest(self) -> float | None:
        """The newest position seen, or None while empty."""
        return self.positions[-1] if self.positions else None

    def add(self, position: float, value: float) -> bool:
        """Place one point; return False if it was too late to count."""
        positions = self.positions
        if not positions or position > positions[-1]:
            positions.append(position)
            self.buf.append(value)
            # Evicting in chunks (once an eighth of a span is stale) keeps the in-order path
            # to two appends and a compare; readers slice the window off by position.
            if positions[0] <= position - self.evict_gap:
                self._evict(position - self.span)
            return True
        if position <= positions[-1] - self.span:
            self.late += 1
            return False
        index = bisect_left(positions, position)
        if index < len(positions) and positions[index] == position:
            self.buf[index] = value
        else:
            positions.insert(index, position)
            self.buf.insert(index, value)
        return True

    def _evict(self, cutoff: float) -> None:
        drop = bisect_right(self.positions, cutoff)
        if drop:
            del self.positions[:drop]
            del self.buf[:drop]

    def values(self, span: float | None = None) -> list[float]:
        """The values in position order, oldest first, of the last `span` (default all)."""
        start = self._start(span)
        return self.buf[start:].tolist()

    def _start(self, span: float | None) -> int:
        if not self.positions:
            return 0
        span = self.span if span is None else min(span, self.span)
        if self.positions[0] > self.positions[-1] - span:
            return 0
        return bisect_right(self.positions, self.positions[-1] - span)

    def summary(self, span: float | None = None) -> Summary:
        """Statistics of the window (or of its last `span`, which must be <= the span)."""
        start = self._start(span)
        span = self.span if span is None else min(span, self.span)
        if len(self.buf) - start >= NUMPY_FROM:
            # Views, not copies; they must not outlive this call (an array with a live
            # buffer export cannot grow).
            y = np.frombuffer(self.buf, dtype=np.float64)[start:]
            x = np.frombuffer(self.positions, dtype=np.float64)[start:]
            try:
                return summarize_arrays(y, x, span)
            finally:
                del y, x
        return summarize(self.buf[start:].tolist(), self.positions[start:].tolist(), span)


#: Windows of the same length are summarized together from MANY_FROM to MANY_UNTIL
#: points. Below, a 2-D reduction's fixed cost is not worth it; above, the partition and
#: an exp per point are the cost whatever the call count, and a block was slower than
#: one window at a time (measured here per series: 50 points 5 vs 17 us, 500 points 9 vs
#: 17 us, 1,000 points 31-52 vs 28-37 us, 3,000 points 76-112 vs 57-92 us).
MANY_FROM = 8
MANY_UNTIL = 512

#: Up to this many points a block is partitioned in one 2-D call; longer rows one by one
#: (a 2-D partition of 400+ point rows ran at half the speed of 1-D ones here).
PARTITION_2D_UNTIL = 320

#: Values summarized per 2-D block: 128 KiB of float64, so a block and its temporaries
#: stay in a core's cache (whole 20 x 3000 blocks ran at half the speed of one row at a
#: time here).
CACHE_VALUES = 16_384


def summarize_windows(windows: Sequence[RollingWindow], span: float) -> list[Summary]:
    """``w.summary(span)`` for every window in `windows`, by the same definitions.

    A rank's series are logged together, so their windows mostly hold the same number of
    points. Those are stacked and summarized in one set of 2-D numpy reductions: numpy's
    cost per call, not the arithmetic, is what a window of a few hundred points costs, and
    summaries were a tenth of a processor's CPU one series at a time. A window holding a
    non-finite value, or whose length no other window shares, is summarized alone.
    """
    out: list[Summary | None] = [None] * len(windows)
    groups: dict[tuple[int, float], list[tuple[int, int]]] = {}
    for index, window in enumerate(windows):
        start = window._start(span)
        n = len(window.buf) - start
        if MANY_FROM <= n <= MANY_UNTIL:
            groups.setdefault((n, min(span, window.span)), []).append((index, start))
        else:
            out[index] = window.summary(span)
    for (n, ema_span), members in groups.items():
        if len(members) == 1:
            index = members[0][0]
            out[index] = windows[index].summary(span)
            continue
        y = _stacked([(windows[index].buf, start) for index, start in members], n)
        x = _stacked([(windows[index].positions, start) for index, start in members], n)
        finite = np.isfinite(y).all(axis=1)
        if not finite.all():
            for row in np.flatnonzero(~finite).tolist():
                index = members[row][0]
                out[index] = windows[index].summary(span)
            members = [members[row] for row in np.flatnonzero(finite).tolist()]
            if not members:
                continue
            y, x = y[finite], x[finite]
        for (index, _), summary in zip(members, _summarize_rows(y, x, ema_span), strict=True):
            out[index] = summary
    return out  # type: ignore[return-value]  # every index was filled above


def _stacked(rows: list[tuple[array[float], int]], n: int) -> np.ndarray:
    """The last `n` values of each array from `start` on, as one (rows, n) float64
    matrix: one copy in C (a numpy row assignment per window cost 1-2 us each, a tenth of
    stage 1). The memoryviews are released before returning: an array with a live
    buffer export cannot grow."""
    views = [memoryview(buf)[start:] for buf, start in rows]
    try:
        joined = b"".join(views)
    finally:
        for view in views:
            view.release()
    return np.frombuffer(joined, dtype=np.float64).reshape(len(rows), n)


def _summarize_rows(y: np.ndarray, x: np.ndarray, span: float) -> list[Summary]:
    """`summarize_arrays` of each row of finite values `y` at positions `x` (2-D, at
    least two columns), a few rows at a time so that the temporaries stay in cache."""
    rows = max(1, CACHE_VALUES // y.shape[1])
    if len(y) <= rows:
        return _summarize_block(y, x, span)
    out: list[Summary] = []
    for first in range(0, len(y), rows):
        out.extend(_summarize_block(y[first : first + rows], x[first : first + rows], span))
    return out


def _summarize_block(y: np.ndarray, x: np.ndarray, span: float) -> list[Summary]:
    n = y.shape[1]
    mean = y.sum(axis=1) / n
    # One correction pass (the deviations' own mean) brings the mean to what an exact sum
    # gives, as `summarize`'s fsum does: a constant learning rate of 0.1 reads 0.1, not
    # 0.09999999999999998 with a std of 3e-17.
    mean += (y - mean[:, None]).sum(axis=1) / n
    dev = y - mean[:, None]
    std = np.sqrt(np.einsum("ij,ij->i", dev, dev) / n)
    ranks = _ranks(n)
    # Only the columns of `ranks` are read: min, max and the neighbours of p50 and p95.
    if n <= PARTITION_2D_UNTIL:
        picked = np.partition(y, ranks, axis=1)[:, ranks]
    else:
        picked = np.array([np.partition(row, ranks)[list(ranks)] for row in y])
    # The series of one rank are mostly logged in the same records, so their time
    # windows share positions: the EMA weights and the slope's denominators (an exp per
    # point: a third of a long window's cost) are then computed once.
    shared = bool((x == x[0]).all())
    xs = x[:1] if shared else x
    dx = xs - xs.mean(axis=1)[:, None]
    sxx = np.einsum("ij,ij->i", dx, dx)
    if math.isfinite(span):
        weights = np.exp((EMA_EDGE / span) * (xs - xs[:, -1:]))
        ema = (y @ weights[0] if shared else np.einsum("ij,ij->i", weights, y)) / weights.sum(
            axis=1
        )
    else:
        ema = mean
    sxy = dev @ dx[0] if shared else np.einsum("ij,ij->i", dx, dev)
    if shared:
        sxx = np.broadcast_to(sxx, mean.shape)
    columns = zip(
        mean.tolist(),
        picked[:, 0].tolist(),
        picked[:, -1].tolist(),
        y[:, -1].tolist(),
        std.tolist(),
        ema.tolist(),
        _rows_percentile(picked, ranks, n, 0.5).tolist(),
        _rows_percentile(picked, ranks, n, 0.95).tolist(),
        sxx.tolist(),
        sxy.tolist(),
        strict=True,
    )
    return [
        Summary(n, 0, mean_, low, high, last, std_, ema_, p50, p95, xy / xx if xx > 0 else None)
        for mean_, low, high, last, std_, ema_, p50, p95, xx, xy in columns
    ]


def _rows_percentile(picked: np.ndarray, ranks: tuple[int, ...], n: int, q: float) -> np.ndarray:
    """`_np_percentile` of every row, from the order statistics at `ranks` of rows of `n`
    values (`picked`: one column per rank)."""
    h = (n - 1) * q
    low = math.floor(h)
    high = min(low + 1, n - 1)
    below, above = picked[:, ranks.index(low)], picked[:, ranks.index(high)]
    result: np.ndarray = below + (h - low) * (above - below)
    return result
