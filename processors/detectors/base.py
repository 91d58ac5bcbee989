"""Helpers shared by detectors: robust statistics and parameter overrides."""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from stepstream.errors import ConfigError
from stepstream.vocabulary import canonical

P = TypeVar("P")

#: Scales a median absolute deviation to a normal standard deviation.
MAD_SCALE = 1.4826


def median(values: Iterable[float]) -> float:
    """The median of non-empty `values`."""
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def median_mad(values: Iterable[float]) -> tuple[float, float]:
    """(median, median absolute deviation) of non-empty `values`."""
    data = list(values)
    med = median(data)
    return med, median(abs(v - med) for v in data)


def sorted_median(ordered: Sequence[float]) -> float:
    """The median of non-empty values already in ascending order."""
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def sorted_median_mad(ordered: Sequence[float]) -> tuple[float, float]:
    """`median_mad` of non-empty values already in ascending order, with the same result,
    in O(log n) Python steps.

    The deviations of the values at or below the median, read from the middle outwards,
    ascend (``med - v``, which equals ``abs(v - med)`` exactly: IEEE subtraction is
    sign-symmetric), and so do those above it. The median deviation is then an order
    statistic of two sorted sequences, found by bisecting how many of it come from each.
    """
    n = len(ordered)
    mid = n // 2
    med = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    split = bisect_right(ordered, med)
    if n % 2:
        return med, _two_run_rank(ordered, split, med, mid)[0]
    high, low = _two_run_rank(ordered, split, med, mid)
    return med, (low + high) / 2


def _two_run_rank(ordered: Sequence[float], split: int, med: float, k: int) -> tuple[float, float]:
    """The k-th and (k-1)-th smallest (0-based; the second is -inf for k = 0) of the
    deviations A = med - ordered[split-1], med - ordered[split-2], ... and
    B = ordered[split] - med, ordered[split+1] - med, ..., both ascending."""
    la, lb = split, len(ordered) - split
    take = k + 1
    lo, hi = max(0, take - lb), min(take, la)
    while True:
        i = (lo + hi) // 2  # taken from A; take - i from B
        j = take - i
        a_last = med - ordered[split - i] if i > 0 else -math.inf
        b_last = ordered[split + j - 1] - med if j > 0 else -math.inf
        a_next = med - ordered[split - i - 1] if i < la else math.inf
        b_next = ordered[split + j] - med if j < lb else math.inf
        if a_last > b_next:
            hi = i - 1
        elif b_last > a_next:
            lo = i + 1
        else:
            break
    a_prev = med - ordered[split - i + 1] if i > 1 else -math.inf
    b_prev = ordered[split + j - 2] - med if j > 1 else -math.inf
    if a_last >= b_last:
        return a_last, max(b_last, a_prev)
    return b_last, max(a_last, b_prev)


class SortedWindow:
    """The last `size` values in arrival order and, alongside, in ascending order: a
    rolling median or MAD reads the sorted copy instead of sorting the window per value.
    Insert and evict are a bisect and a list shift each (C-level, O(size) memmove)."""

    __slots__ = ("arrived", "ordered")

    def __init__(self, size: int) -> None:
        self.arrived: deque[float] = deque(maxlen=size)
        self.ordered: list[float] = []

    def __len__(self) -> int:
        return len(self.arrived)

    def append(self, value: float) -> None:
        """Add `value`; the oldest value leaves once the window is full. Values must be
        finite: NaN breaks the ordering and an infinity makes the MAD NaN."""
        arrived = self.arrived
        if len(arrived) == arrived.maxlen:
            ordered = self.ordered
            del ordered[bisect_left(ordered, arrived[0])]
        arrived.append(value)
        insort(self.ordered, value)


def with_overrides(params: P, overrides: Mapping[str, Any] | None) -> P:
    """`params` (a dataclass) with the fields named in `overrides` replaced; lists become
    tuples so params stay hashable. Unknown names raise ConfigError naming the valid ones."""
    if not overrides:
        return params
    names = {f.name for f in dataclasses.fields(params)}  # type: ignore[arg-type]
    unknown = set(overrides) - names
    if unknown:
        raise ConfigError(
            f"unknown detector parameters {sorted(unknown)} of {type(params).__name__}; "
            f"valid: {sorted(names)}"
        )
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(params, **fixed)  # type: ignore[type-var]


def matches(metric: str, names: tuple[str, ...]) -> bool:
    """True if `metric` is one of `names` or below one of them (``loss/aux`` under
    ``loss``; any ``grad/norm/<layer>`` under the family ``grad/norm/``). Both sides are
    compared by their vocabulary names, so an alias (``grad_norm``, ``val_loss``) reaches
    the detector of its canonical name."""
    metric = canonical(metric)
    for name in names:
        name = canonical(name)
        if metric == name:
            return True
        if name.endswith("/"):
            if metric.startswith(name):
                return True
        elif metric.startswith(name) and metric[len(name)] == "/":
            return True
    return False


def finite(value: float) -> bool:
    """True for a finite float."""
    return math.isfinite(value)
