"""Downsampling a series for plotting: pure functions over (x, y) points sorted by x.

Non-finite values (a NaN loss) are never averaged away or dropped: both methods plot the
finite points and return every non-finite point as well, so a result may hold up to
``points`` finite points plus the non-finite ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Point = tuple[float, float]
Method = Literal["lttb", "minmax", "none"]


def _split(points: Sequence[Point]) -> tuple[list[Point], list[Point]]:
    finite = [p for p in points if math.isfinite(p[1])]
    if len(finite) == len(points):
        return finite, []
    return finite, [p for p in points if not math.isfinite(p[1])]


def _merge(finite: list[Point], nonfinite: list[Point]) -> list[Point]:
    if not nonfinite:
        return finite
    return sorted(finite + nonfinite, key=lambda p: p[0])


def lttb(points: Sequence[Point], threshold: int) -> list[Point]:
    """Largest-Triangle-Three-Buckets: `threshold` points that keep the visual shape.

    Keeps the first and last point; from each of the threshold-2 buckets between them it
    keeps the point forming the largest triangle with the previous kept point and the
    mean of the next bucket.
    """
    finite, nonfinite = _split(points)
    n = len(finite)
    if threshold >= n or n <= 2:
        return _merge(list(finite), nonfinite)
    if threshold < 3:
        threshold = 3
    xs = [p[0] for p in finite]
    ys = [p[1] for p in finite]
    out = [finite[0]]
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
        out.append(finite[best])
        a = best
    out.append(finite[-1])
    return _merge(out, nonfinite)


def minmax(points: Sequence[Point], threshold: int) -> list[Point]:
    """Min/max buckets: the lowest and highest point of each of threshold/2 equal-count
    buckets, in x order. Keeps every spike, at the cost of a jagged look."""
    finite, nonfinite = _split(points)
    n = len(finite)
    if threshold >= n or n <= 2:
        return _merge(list(finite), nonfinite)
    buckets = max(1, threshold // 2)
    every = n / buckets
    out: list[Point] = []
    for i in range(buckets):
        chunk = finite[int(i * every) : int((i + 1) * every)]
        if not chunk:
            continue
        lo = min(chunk, key=lambda p: p[1])
        hi = max(chunk, key=lambda p: p[1])
        out.extend(sorted({lo, hi}, key=lambda p: p[0]))
    return _merge(out, nonfinite)


def downsample(
    points: Sequence[Point], threshold: int | None, method: Method = "lttb"
) -> list[Point]:
    """`points` reduced to about `threshold` points by `method`; None or "none" keeps all."""
    if threshold is None or method == "none":
        return list(points)
    if threshold < 1:
        raise ValueError("threshold must be >= 1")
    if method == "lttb":
        return lttb(points, threshold)
    if method == "minmax":
        return minmax(points, threshold)
    raise ValueError(f"unknown downsampling method {method!r}: use lttb, minmax or none")
