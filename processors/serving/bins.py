"""Fixed reference bins for numeric features and the score, and the exact divergences
between two count vectors.

Bins come from the reference once and never move: a window is a vector of integer counts,
counts of several workers add, and PSI and Jensen-Shannon on them are deterministic
(`math.fsum` over bins in a fixed order: the same counts give the same bits).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Quantile bins a numeric feature gets from its reference (fewer when values repeat).
NUMERIC_BINS = 10
#: Proportion given to an empty bin in PSI (PSI is infinite otherwise); JS needs none.
PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class NumericBins:
    """Bins ``(-inf, e0), [e0, e1), ..., [e_last, inf)`` from reference quantiles, with the
    reference range (values outside it are a data-quality count)."""

    edges: tuple[float, ...]
    low: float
    high: float

    @classmethod
    def from_values(cls, values: Sequence[float], bins: int = NUMERIC_BINS) -> NumericBins:
        """Bins at the reference's inner quantiles (1/bins ... (bins-1)/bins). ValueError
        if `values` holds no finite number."""
        finite = sorted(v for v in values if math.isfinite(v))
        if not finite:
            raise ValueError("a numeric reference needs at least one finite value")
        n = len(finite)
        edges: list[float] = []
        for i in range(1, bins):
            # The lower empirical quantile: deterministic, no interpolation.
            edge = finite[min(n - 1, (i * n) // bins)]
            if edge > finite[0] and (not edges or edge > edges[-1]):
                edges.append(edge)
        return cls(tuple(edges), finite[0], finite[-1])

    @property
    def size(self) -> int:
        """Number of bins."""
        return len(self.edges) + 1

    def index(self, value: float) -> int:
        """The bin of a finite `value`."""
        return bisect.bisect_right(self.edges, value)

    def counts(self, values: Sequence[float]) -> list[int]:
        """Counts of the finite `values` per bin."""
        out = [0] * self.size
        for v in values:
            if math.isfinite(v):
                out[bisect.bisect_right(self.edges, v)] += 1
        return out

    def to_json(self) -> dict[str, object]:
        """The bins as stored in the reference."""
        return {"edges": list(self.edges), "low": self.low, "high": self.high}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> NumericBins:
        """Bins stored by `to_json`."""
        edges = data["edges"]
        assert isinstance(edges, list)
        return cls(tuple(float(e) for e in edges), float(data["low"]), float(data["high"]))  # type: ignore[arg-type]


def proportions(counts: Sequence[int]) -> list[float]:
    """Counts as proportions (all zero for an empty vector)."""
    total = sum(counts)
    return [c / total for c in counts] if total else [0.0] * len(counts)


def psi(reference: Sequence[int], current: Sequence[int], epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of `current` counts against `reference` counts (same
    bins): sum over bins of (q - p) ln(q / p), empty bins given `epsilon`."""
    if len(reference) != len(current):
        raise ValueError(f"bin counts differ: {len(reference)} != {len(current)}")
    p = proportions(reference)
    q = proportions(current)
    terms = []
    for a, b in zip(p, q, strict=True):
        a = max(a, epsilon)
        b = max(b, epsilon)
        terms.append((b - a) * math.log(b / a))
    return math.fsum(terms)


def js_divergence(reference: Sequence[int], current: Sequence[int]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two count vectors on the same
    bins; 0 log 0 = 0, so empty bins need no smoothing."""
    if len(reference) != len(current):
        raise ValueError(f"bin counts differ: {len(reference)} != {len(current)}")
    p = proportions(reference)
    q = proportions(current)
    terms = []
    for a, b in zip(p, q, strict=True):
        m = (a + b) / 2
        if a > 0:
            terms.append(0.5 * a * math.log2(a / m))
        if b > 0:
            terms.append(0.5 * b * math.log2(b / m))
    return max(0.0, math.fsum(terms))


def js_distance(reference: Sequence[int], current: Sequence[int]) -> float:
    """Jensen-Shannon distance: the square root of `js_divergence` (a metric)."""
    return math.sqrt(js_divergence(reference, current))
