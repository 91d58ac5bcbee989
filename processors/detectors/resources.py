"""Resource pressure: GPU/host memory and disk usage (system-kind values) near full."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from processors.flags import Episodes, Flag, cleared_flag, evidence, moment
from stepstream import vocabulary as vocab


def _default_limits() -> dict[str, float]:
    return {
        vocab.HOST_MEM_PCT.name: 95.0,
        vocab.GPU_MEM_PCT.name: 95.0,  # every gpu<i>/mem_used_pct
        vocab.DISK_PCT.name: 95.0,
        vocab.SWAP_PCT.name: 50.0,
    }


@dataclass(frozen=True)
class ResourceParams:
    """Parameters of `ResourceDetector`.

    limits: metric name -> percentage at or above which the resource is under pressure.
    sustain: consecutive points at or above the limit before a flag.
    hysteresis: the episode ends when the value is this many points below the limit.
    """

    limits: dict[str, float] = field(default_factory=_default_limits)
    sustain: int = 3
    hysteresis: float = 2.0


class ResourceDetector:
    """Flags a resource at or above its limit for `sustain` consecutive samples; it clears
    at the first sample `hysteresis` points below the limit. Delay: `sustain` sampling
    intervals."""

    name = "resource_pressure"

    def __init__(self, params: ResourceParams | None = None) -> None:
        self.params = params or ResourceParams()
        self._streak: dict[tuple[str, int, str], int] = {}
        self._episodes = Episodes()

    def wants(self, metric: str) -> bool:
        """True for metrics with a limit (by vocabulary name: aliases and every GPU)."""
        return self._limit(metric) is not None

    def _limit(self, metric: str) -> float | None:
        signal = vocab.signal_of(metric)
        limits = self.params.limits
        if signal is not None and signal.name in limits:
            return limits[signal.name]
        return limits.get(metric)

    def observe(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> tuple[Flag, ...]:
        """Add one sample; a flag when a pressure episode starts, a cleared flag when the
        value falls `hysteresis` below the limit during one."""
        if not math.isfinite(value):
            return ()
        p = self.params
        limit = self._limit(metric)
        if limit is None:
            return ()
        key = (run, rank, metric)
        if value < limit:
            self._streak[key] = 0
            # Hysteresis: a value hovering at the limit must not resolve and re-fire.
            opening = self._episodes.end(key) if value < limit - p.hysteresis else None
            if opening is None:
                return ()
            return (
                cleared_flag(
                    opening,
                    step,
                    t,
                    f"{metric} pressure on rank {rank} cleared at {moment(step, t)}: "
                    f"{value:.1f} (limit {limit:g})",
                    evidence(value, None, limit, None, clear_below=limit - p.hysteresis),
                ),
            )
        streak = self._streak[key] = self._streak.get(key, 0) + 1
        if streak < p.sustain or self._episodes.is_open(key):
            return ()
        flag = Flag(
            detector=self.name,
            run=run,
            rank=rank,
            metric=metric,
            step=step,
            t=t,
            severity="warning",
            summary=f"{metric} at {value:.1f} on rank {rank} (limit {limit:g}) "
            f"for {streak} samples",
            evidence=evidence(value, None, limit, float(streak)),
        )
        return (self._episodes.start(key, flag),)
