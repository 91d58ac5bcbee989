"""Drift thresholds that account for window size, and the judgement of closed windows.

A window of n values drawn from the reference distribution itself is not at distance 0
from it: the smaller n, the larger the distance by chance alone. The threshold for a
window of n is therefore calibrated on reference sub-windows of the same size: `ROUNDS`
draws of n values from the reference bins (multinomial on the reference proportions,
the same as sub-windows sampled from the reference), their Jensen-Shannon distance to
the reference, threshold = mean + 3 sigma. Draws use a fixed seed per (feature, n): the
same window always gets the same threshold. A window with fewer than the minimum count
is not judged. A feature drifts when `consecutive` windows in a row are over: with the
3-sigma threshold alone a stable stream of 20 features would raise on roughly one
window in five by chance.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from processors.serving.bins import js_distance

#: Sub-windows drawn per calibration.
ROUNDS = 200
SIGMAS = 3.0


@dataclass(frozen=True)
class Threshold:
    """A calibrated threshold for windows of `n` values."""

    n: int
    mean: float
    std: float

    @property
    def value(self) -> float:
        """mean + 3 sigma of the reference sub-windows' distances."""
        return self.mean + SIGMAS * self.std


def calibrate(reference: list[int], n: int, name: str = "", rounds: int = ROUNDS) -> Threshold:
    """The threshold of a window of `n` values against `reference` counts."""
    total = sum(reference)
    if total == 0 or n <= 0:
        return Threshold(n, 0.0, 0.0)
    seed = zlib.crc32(f"{name}|{n}|{','.join(map(str, reference))}".encode())
    rng = np.random.default_rng(seed)
    p = np.asarray(reference, dtype=float) / total
    draws = rng.multinomial(n, p, size=rounds)
    distances = [js_distance(reference, row.tolist()) for row in draws]
    mean = math.fsum(distances) / rounds
    var = math.fsum((d - mean) ** 2 for d in distances) / max(1, rounds - 1)
    return Threshold(n, mean, math.sqrt(var))


class Calibrations:
    """Thresholds cached by (feature key, window size); bounded."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._cache: dict[tuple[Hashable, int], Threshold] = {}
        self._max = max_entries

    def get(self, key: Hashable, reference: list[int], n: int) -> Threshold:
        """The threshold of `n` values of the feature `key`."""
        found = self._cache.get((key, n))
        if found is None:
            if len(self._cache) >= self._max:
                self._cache.clear()
            found = calibrate(reference, n, str(key))
            self._cache[(key, n)] = found
        return found


class Streaks:
    """Consecutive windows over threshold per key, and which keys are firing.

    `observe` returns ``"fire"`` when a key reaches `consecutive` windows over, ``"clear"``
    when a firing key has a window under, else None. Windows not judged (too few values)
    leave the streak as it was.
    """

    def __init__(self, consecutive: int) -> None:
        self.consecutive = consecutive
        self._streak: dict[Hashable, int] = {}
        self.firing: set[Hashable] = set()

    def observe(self, key: Hashable, over: bool) -> str | None:
        """One judged window of `key`."""
        if over:
            streak = self._streak.get(key, 0) + 1
            self._streak[key] = streak
            if streak >= self.consecutive and key not in self.firing:
                self.firing.add(key)
                return "fire"
            return None
        self._streak[key] = 0
        if key in self.firing:
            self.firing.discard(key)
            return "clear"
        return None
