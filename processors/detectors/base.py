"""Helpers shared by detectors: robust statistics and parameter overrides."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

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


def with_overrides(params: P, overrides: Mapping[str, Any] | None) -> P:
    """`params` (a dataclass) with the fields named in `overrides` replaced; lists become
    tuples so params stay hashable. Unknown names raise ValueError naming the valid ones."""
    if not overrides:
        return params
    names = {f.name for f in dataclasses.fields(params)}  # type: ignore[arg-type]
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown detector parameters {sorted(unknown)}; valid: {sorted(names)}")
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
