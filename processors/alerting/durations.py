"""Durations that are either seconds of event time or a number of training steps."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(steps?|s|sec|m|min|h)?\s*$")


@dataclass(frozen=True, slots=True)
class Span:
    """A length in `seconds` or in `steps`."""

    amount: float
    unit: Literal["seconds", "steps"]

    def elapsed(self, since_t: float, since_step: int | None, t: float, step: int | None) -> bool:
        """True when at least this span lies between (since_t, since_step) and (t, step)."""
        if self.amount <= 0:
            return True
        if self.unit == "steps":
            if since_step is None or step is None:
                return False
            return step - since_step >= self.amount
        return t - since_t >= self.amount


ZERO = Span(0.0, "seconds")


def parse_span(text: str | int | float) -> Span:
    """Parse ``"30s"``, ``"5m"``, ``"50 steps"`` or a plain number of seconds."""
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"duration must be >= 0, got {text}")
        return Span(float(text), "seconds")
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"duration {text!r}: use e.g. 30s, 5m, 1h or '50 steps'")
    amount, unit = float(match.group(1)), match.group(2) or "s"
    if unit.startswith("step"):
        return Span(amount, "steps")
    return Span(amount * _UNITS[unit], "seconds")
