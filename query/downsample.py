"""Downsampling a series for plotting: pure functions over points sorted by x.

The work is done on columns (`select` takes xs and ys and returns the indices to keep),
so a reader holding columns never builds a tuple per stored point; `downsample`, `lttb`
and `minmax` are the same over (x, y) points.

`select` runs on numpy arrays; `select_plain` is the same definition in plain Python, the
reference `select` must equal index for index (tests/unit/test_downsample.py): a
10,000-point LTTB in a Python loop was half of a downsampled series read.

Non-finite values (a NaN loss) are never averaged away or dropped: both methods plot the
finite points and keep every non-finite point as well, so a result may hold up to
``points`` finite points plus the non-finite ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

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


def _lttb_keep_plain(xs: Sequence[float], ys: Sequence[float], threshold: int) -> list[int]:
    """LTTB over all-finite columns: positions of the kept points, in order."""
    n = len(xs)
    if threshold >= n or n <= 2:
        return list(range(n))
    return _lttb_buckets_plain(xs, ys, max(threshold, 3), [0], 0)


def _lttb_buckets_plain(
    xs: Sequence[float], ys: Sequence[float], threshold: int, out: list[int], first: int
) -> list[int]:
    """Buckets `first`.. of LTTB appended to `out` (the kept positions before them), and
    the last point: the loop `_lttb_keep_plain` runs, and the vectorised one finishes."""
    n = len(xs)
    every = (n - 2) / (threshold - 2)
    a = out[-1]
    for i in range(first, threshold - 2):
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


def _minmax_keep_plain(ys: Sequence[float], threshold: int) -> list[int]:
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


def _keeps_all(threshold: int, method: Method) -> bool:
    """True when `method` keeps every point; a ValueError when `threshold` or `method` is
    invalid."""
    if method == "none":
        return True
    if threshold < 1:
        raise ValueError("threshold must be >= 1")
    if method not in ("lttb", "minmax"):
        raise ValueError(f"unknown downsampling method {method!r}: use lttb, minmax or none")
    return False


def select_plain(
    xs: Sequence[float], ys: Sequence[float], threshold: int | None, method: Method = "lttb"
) -> list[int]:
    """`select` in plain Python, one point at a time: the reference definition."""
    if threshold is None or _keeps_all(threshold, method):
        return list(range(len(xs)))
    finite = _finite_positions(ys)
    fxs = xs if finite is None else [xs[i] for i in finite]
    fys = ys if finite is None else [ys[i] for i in finite]
    keep = (
        _lttb_keep_plain(fxs, fys, threshold)
        if method == "lttb"
        else _minmax_keep_plain(fys, threshold)
    )
    return _with_nonfinite(keep, finite, ys)


FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


def _columns(values: Sequence[float] | FloatArray, positions: IntArray | None) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    return array if positions is None else array[positions]


def _padded(
    values: FloatArray, starts: IntArray, ends: IntArray, fill: float
) -> tuple[FloatArray, IntArray]:
    """Rows values[starts[i]:ends[i]], right-padded with `fill` to the longest, and the
    offsets of a row's columns (to map a column back to a position)."""
    width = int((ends - starts).max())
    offsets = np.arange(width, dtype=np.intp)
    index = starts[:, None] + offsets
    inside = index < ends[:, None]
    rows = values[np.minimum(index, len(values) - 1)]
    rows[~inside] = fill
    return rows, offsets


def _lttb_keep_np(xs: FloatArray, ys: FloatArray, threshold: int) -> list[int]:
    """`_lttb_keep_plain` on arrays, float for float the same arithmetic.

    A bucket's pick depends on the pick before it, which is one of the previous bucket's
    points: every bucket is solved at once for each of those (a table of picks), then
    the picks are chained from the first point, as the loop does."""
    n = len(xs)
    if threshold >= n or n <= 2:
        return list(range(n))
    # Overflow to inf and inf - inf = NaN happen in the loop too, silently.
    with np.errstate(all="ignore"):
        return _lttb_table(xs, ys, max(threshold, 3))


def _lttb_table(xs: FloatArray, ys: FloatArray, threshold: int) -> list[int]:
    n = len(xs)
    buckets = threshold - 2
    every = (n - 2) / (threshold - 2)
    # int(i * every) + 1 as the loop computes it: float products, truncated.
    bounds = (np.arange(buckets + 2, dtype=np.float64) * every).astype(np.intp) + 1
    starts, ends = bounds[:buckets], bounds[1 : buckets + 1]
    next_starts, next_ends = ends.copy(), np.minimum(bounds[2:], n)
    last_only = next_starts >= next_ends
    next_starts[last_only], next_ends[last_only] = n - 1, n
    # Means of the next buckets, summed left to right like sum(): padding adds 0.0.
    next_x, _ = _padded(xs, next_starts, next_ends, 0.0)
    next_y, _ = _padded(ys, next_starts, next_ends, 0.0)
    sum_x, sum_y = next_x[:, 0].copy(), next_y[:, 0].copy()
    for column in range(1, next_x.shape[1]):
        sum_x += next_x[:, column]
        sum_y += next_y[:, column]
    span = (next_ends - next_starts).astype(np.float64)
    avg_x, avg_y = sum_x / span, sum_y / span
    # Candidates padded with NaN (a NaN area never beats a number, as in the loop), laid
    # out [candidate][bucket] so that numpy's inner loops run along the buckets.
    cand_x = np.ascontiguousarray(_padded(xs, starts, ends, math.nan)[0].T)
    cand_y = np.ascontiguousarray(_padded(ys, starts, ends, math.nan)[0].T)
    # The possible previous picks of bucket i: the first point for bucket 0, else the
    # candidates of bucket i - 1.
    prev_x, prev_y = np.empty_like(cand_x), np.empty_like(cand_y)
    prev_x[:, 1:], prev_y[:, 1:] = cand_x[:, :-1], cand_y[:, :-1]
    prev_x[:, 0], prev_y[:, 0] = math.nan, math.nan
    prev_x[0, 0], prev_y[0, 0] = xs[0], ys[0]
    dx, dy = prev_x - avg_x, avg_y - prev_y  # [previous pick][bucket]
    best = np.full(prev_x.shape, -1.0)  # the loop's starting best: the first candidate
    table = np.zeros(prev_x.shape, dtype=np.intp)
    area, term, better = np.empty_like(best), np.empty_like(best), np.empty(best.shape, bool)
    for offset in range(cand_x.shape[0]):
        # [previous pick][bucket]: abs(dx * (y - ay) - (ax - x) * dy), as the loop does
        np.multiply(dx, np.subtract(cand_y[offset], prev_y, out=area), out=area)
        np.multiply(np.subtract(prev_x, cand_x[offset], out=term), dy, out=term)
        np.abs(np.subtract(area, term, out=area), out=area)
        np.greater(area, best, out=better)  # False for NaN; strict: the first maximum stays
        np.fmax(best, area, out=best)
        np.putmask(table, better, offset)
    picks = cast(list[list[int]], table.T.tolist())  # [bucket][previous pick's offset] -> offset
    firsts: list[int] = starts.tolist()
    out = [0]
    at = 0
    for start, row in zip(firsts, picks, strict=True):
        at = row[at]
        out.append(start + at)
    out.append(n - 1)
    return out


def _minmax_keep_np(ys: FloatArray, threshold: int) -> list[int]:
    """`_minmax_keep_plain` on an array: the first lowest and first highest of each
    bucket."""
    n = len(ys)
    if threshold >= n or n <= 2:
        return list(range(n))
    buckets = max(1, threshold // 2)
    every = n / buckets
    bounds = (np.arange(buckets + 1, dtype=np.float64) * every).astype(np.intp)
    starts, ends = bounds[:-1], bounds[1:]
    keep = starts < ends
    starts, ends = starts[keep], ends[keep]
    low_rows, offsets = _padded(ys, starts, ends, math.inf)
    high_rows, _ = _padded(ys, starts, ends, -math.inf)
    low = starts + offsets[low_rows.argmin(axis=1)]
    high = starts + offsets[high_rows.argmax(axis=1)]
    pairs = np.stack([np.minimum(low, high), np.maximum(low, high)], axis=1)
    distinct = np.stack([np.ones(len(low), dtype=bool), low != high], axis=1)
    out: list[int] = pairs[distinct].tolist()
    return out


def select(
    xs: Sequence[float] | FloatArray,
    ys: Sequence[float] | FloatArray,
    threshold: int | None,
    method: Method = "lttb",
) -> list[int]:
    """Indices of the points of columns (`xs`, `ys`) to plot about `threshold` of them by
    `method`, in order; None or "none" keeps all. Equal to `select_plain`."""
    if threshold is None or _keeps_all(threshold, method):
        return list(range(len(xs)))
    y = np.asarray(ys, dtype=np.float64)
    finite_mask = np.isfinite(y)
    finite = None if finite_mask.all() else np.flatnonzero(finite_mask)
    fy = y if finite is None else y[finite]
    if method == "lttb":
        keep = _lttb_keep_np(_columns(xs, finite), fy, threshold)
    else:
        keep = _minmax_keep_np(fy, threshold)
    if finite is None:
        return keep
    chosen = finite[keep] if keep else finite[:0]
    merged: list[int] = np.sort(np.concatenate([chosen, np.flatnonzero(~finite_mask)])).tolist()
    return merged


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
