"""Window stats as the sink stores them: the contract's WindowStats plus any numeric stat
a newer processor adds (std, ema, p50, p95, slope ...), kept generically.

The contract's models ignore unknown fields, so the sink parses window updates with these
subclasses; a processor that adds a stat needs no change in sinks/ to have it stored,
queried, shown and exported.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from stepstream.contract import MetricName, WindowStats, WindowUpdate

_NON_FINITE = ("NaN", "Infinity", "-Infinity")


class OpenStats(WindowStats):
    """WindowStats that keep extra fields."""

    model_config = ConfigDict(extra="allow", ser_json_inf_nan="strings")

    def numbers(self) -> dict[str, float]:
        """Every numeric stat, known and extra, in field order; None values left out."""
        out: dict[str, float] = {}
        for name, value in {**self.__dict__, **(self.model_extra or {})}.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric or (isinstance(value, str) and value in _NON_FINITE):
                out[name] = float(value)
        return out


class OpenWindowUpdate(WindowUpdate):
    """WindowUpdate whose stats keep extra fields (see OpenStats)."""

    windows: dict[str, dict[MetricName, OpenStats]] = Field(  # type: ignore[assignment]
        default_factory=dict, description="window name -> metric -> stats"
    )


class StoredRank(BaseModel):
    """One rank's entry in the rank registry (`RedisKeys.ranks(run)`, a hash by rank): its
    newest window update's node, step, event time and lifecycle status. The sink writes
    it; the reader and a processor taking a run over read it."""

    model_config = ConfigDict(extra="ignore")

    node: str = ""
    step: int | None = None
    t: float = 0.0
    status: str | None = None
