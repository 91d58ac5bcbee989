"""Downsampling a series for plotting: pure functions over points sorted by x.

The work is done on columns (`select` takes xs and ys and returns the indices to keep),
so a reader holding columns never builds a tuple per stored point; `downsample`, `lttb`
and `minmax` are the same over (x, y) points.

Non-finite values (a NaN loss) are never averaged away or dropped: both methods plot the
finite points and keep every non-finite point as well, so a result may hold up to
``points`` finite points plus the non-finite ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Point = tuple[float, float]
Method = Literal["lttb", "minmax", "none"]


def _finite_positions(ys: Sequence[float]) -> list[int] | None:
    """Positions of the finite values, or None when every value is finite (the usual
    case, checked in one C-level pass)."""
    if all(map(math.isfinite, ys)):
        return None
    return [i for i, y in enumerate(ys) if math.isfinite(y)]


def _with_nonfinite(keep: list[int], finite: list[int] | None, ys: Sequence[float]) -> list[int]:
    """Map `keep` (positions among the finite values) back and add every non-finite one."""
    if finite is None:
        return keep
    chosen = [finite[k] for k in keep]
    chosen.extend(i for i, y in enumerate(ys) if not math.isfinite(y))
    return sorted(chosen)


def _lttb_keep(xs: Sequence[float], ys: Sequence[float], threshold: int) -> list[int]:
    """LTTB over all-finite columns: positions of the kept points, in order."""
    n = len(xs)
    if threshold >= n or n <= 2:
        return list(range(n))
    threshold = max(threshold, 3)
    out = [0]
    every = (n - 2) / (threshold - 2)
    a = 0
    for i in range(threshold - 2):
        start = int(i * every) + 1
        end = int((i + 1) * every) + 1
        nxt_start, nxt_end = end, min(int((i + 2) * every) + 1, n)
        if nxt_start >= nxt_end:  # the last bucket looks ahead to the final point only
            nxt_start, nxt_end = n - 1, n
        span = nxt_end - nxt_start
        avg_x = sum(xs[nxt_start:nxt_end]) / span
        avg_y = sum(ys[nxt_start:nxt_end]) / span
        ax, ay = xs[a], ys[a]
        # area*2 = |(ax-avg_x)*(y-ay) - (ax-x)*(avg_y-ay)|, expanded so the loop body is
        # one multiply-add per term
        dx, dy = ax - avg_x, avg_y - ay
        best, best_area = start, -1.0
        for j in range(start, end):
            area = abs(dx * (ys[j] - ay) - (ax - xs[j]) * dy)
            if area > best_area:
                best, best_area = j, area
        out.append(best)
        a = best
    out.append(n - 1)
    return out


def _minmax_keep(ys: Sequence[float], threshold: int) -> list[int]:
    """Min/max buckets over all-finite values: positions kept, in order."""
    n = len(ys)
    if threshold >= n or n <= 2:
        return list(range(n))
    buckets = max(1, threshold // 2)
    every = n / buckets
    out: list[int] = []
    value = ys.__getitem__
    for i in range(buckets):
        chunk = range(int(i * every), int((i + 1) * every))
        if not chunk:
            continue
        lo, hi = min(chunk, key=value), max(chunk, key=value)
        out.extend(sorted({lo, hi}))
    return out


def select(
    xs: Sequence[float], ys: Sequence[float], threshold: int | None, method: Method = "lttb"
) -> list[int]:
    """Indices of the points of columns (`xs`, `ys`) to plot about `threshold` of them by
    `method`, in order; None or "none" keeps all."""
    if threshold is None or method == "none":
        return list(range(len(xs)))
    if threshold < 1:
        raise ValueError("threshold must be >= 1")
    if method not in ("lttb", "minmax"):
        raise ValueError(f"unknown downsampling method {method!r}: use lttb, minmax or none")
    finite = _finite_positions(ys)
    fxs = xs if finite is None else [xs[i] for i in finite]
    fys = ys if finite is None else [ys[i] for i in finite]
    keep = _lttb_keep(fxs, fys, threshold) if method == "lttb" else _minmax_keep(fys, threshold)
    return _with_nonfinite(keep, finite, ys)


def lttb(points: Sequence[Point], threshold: int) -> list[Point]:
    """Largest-Triangle-Three-Buckets: `threshold` points that keep the visual shape.

    Keeps the first and last point; from each of the threshold-2 buckets between them it
    keeps the point forming the largest triangle with the previous kept point and the
    mean of the next bucket.
    """
    return downsample(points, threshold, "lttb")


def minmax(points: Sequence[Point], threshold: int) -> list[Point]:
    """Min/max buckets: the lowest and highest point of each of threshold/2 equal-count
    buckets, in x order. Keeps every spike, at the cost of a jagged look."""
    return downsample(points, threshold, "minmax")


def downsample(
    points: Sequence[Point], threshold: int | None, method: Method = "lttb"
) -> list[Point]:
    """`points` reduced to about `threshold` points by `method`; None or "none" keeps all."""
    if threshold is None or method == "none":
        return list(points)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return [points[i] for i in select(xs, ys, threshold, method)]
