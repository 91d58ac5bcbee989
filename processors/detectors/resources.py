"""Resource pressure: GPU/host memory and disk usage (system-kind values) near full."""

from __future__ import annotations

from dataclasses import dataclass, field

from processors.detectors.shape import Evidence, SeriesDetector
from processors.flags import evidence, moment
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


@dataclass
class _Pressure:
    limit: float
    streak: int = 0


class ResourceDetector(SeriesDetector[_Pressure, ResourceParams]):
    """Flags a resource at or above its limit for `sustain` consecutive samples; it clears
    at the first sample `hysteresis` points below the limit. Delay: `sustain` sampling
    intervals."""

    name = "resource_pressure"
    severity = "warning"

    def __init__(self, params: ResourceParams | None = None) -> None:
        super().__init__(params or ResourceParams())

    def wants(self, metric: str) -> bool:
        """True for metrics with a limit (by vocabulary name: aliases and every GPU)."""
        return self._limit(metric) is not None

    def _limit(self, metric: str) -> float | None:
        signal = vocab.signal_of(metric)
        limits = self.params.limits
        if signal is not None and signal.name in limits:
            return limits[signal.name]
        return limits.get(metric)

    def new_state(self, run: str, rank: int, metric: str) -> _Pressure:
        limit = self._limit(metric)
        return _Pressure(limit if limit is not None else float("inf"))

    def judge(
        self,
        state: _Pressure,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        is_open: bool,
    ) -> bool | None:
        if value < state.limit:
            state.streak = 0
            # Hysteresis: a value hovering at the limit must not resolve and re-fire.
            if is_open and value >= state.limit - self.params.hysteresis:
                return None
            return False
        state.streak += 1
        return True if state.streak >= self.params.sustain else None

    def describe(
        self,
        state: _Pressure,
        run: str,
        rank: int,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        starting: bool,
    ) -> tuple[str, Evidence]:
        limit = state.limit
        if starting:
            return (
                f"{metric} at {value:.1f} on rank {rank} (limit {limit:g}) "
                f"for {state.streak} samples",
                evidence(value, None, limit, float(state.streak)),
            )
        return (
            f"{metric} pressure on rank {rank} cleared at {moment(step, t)}: "
            f"{value:.1f} (limit {limit:g})",
            evidence(value, None, limit, None, clear_below=limit - self.params.hysteresis),
        )
