"""User rule conditions over window statistics, parsed into small objects.

Grammar (one comparison per rule; combine by writing several rules):

    <stat>(<metric>, <window>) <op> <number>
    <stat>(<metric>, <window>) <op> [<factor> *] <agg>_across_ranks(<metric>[, <window>])

e.g. ``mean(loss, 50 steps) > 4`` or
``p95(step_time, 60s) > 1.5 * median_across_ranks(step_time)``.
"""

from __future__ import annotations

import operator
import re
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from processors.alerting.durations import parse_span
from stepstream.keys import step_window_name, time_window_name

STATS = ("count", "nonfinite", "mean", "min", "max", "std", "ema", "p50", "p95", "last", "slope")
AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "median": statistics.median,
    "mean": statistics.fmean,
    "min": min,
    "max": max,
}
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_./:@-]*"
_LEFT = re.compile(rf"^\s*(\w+)\(\s*({_NAME})\s*,\s*([^)]+?)\s*\)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")
_RIGHT_NUMBER = re.compile(rf"^({_NUMBER})$")
_RIGHT_ACROSS = re.compile(
    rf"^(?:({_NUMBER})\s*\*\s*)?(\w+)_across_ranks\(\s*({_NAME})\s*(?:,\s*([^)]+?)\s*)?\)$"
)


def window_name(text: str) -> str:
    """The window name (``50steps``, ``60s``) of ``50 steps`` / ``60s`` / ``1m``."""
    span = parse_span(text)
    if span.unit == "steps":
        return step_window_name(int(span.amount))
    return time_window_name(span.amount)


@dataclass(frozen=True, slots=True)
class AcrossRanks:
    """``factor * agg_across_ranks(metric, window)`` of the same statistic."""

    factor: float
    aggregate: str
    metric: str
    window: str


@dataclass(frozen=True, slots=True)
class Condition:
    """``stat(metric, window) op threshold`` where threshold is a number or cross-rank."""

    stat: str
    metric: str
    window: str
    op: str
    threshold: float | AcrossRanks
    text: str

    def evaluate(
        self,
        value: float | None,
        peers: Mapping[int, float] | None = None,
    ) -> tuple[bool, float | None]:
        """(holds, threshold used). `peers` are the same stat of every rank of the run,
        needed for cross-rank thresholds. A missing value never holds."""
        if value is None:
            return False, None
        if isinstance(self.threshold, AcrossRanks):
            if not peers:
                return False, None
            across = self.threshold
            threshold = across.factor * AGGREGATES[across.aggregate](list(peers.values()))
        else:
            threshold = self.threshold
        return OPERATORS[self.op](value, threshold), threshold


def parse_condition(text: str) -> Condition:
    """Parse a condition; ValueError names what is wrong and shows the grammar."""
    match = _LEFT.match(text)
    if not match:
        raise ValueError(
            f"condition {text!r}: expected '<stat>(<metric>, <window>) <op> <threshold>', "
            "e.g. 'mean(loss, 50 steps) > 4'"
        )
    stat, metric, window_text, op, right = match.groups()
    if stat not in STATS:
        raise ValueError(f"condition {text!r}: unknown statistic {stat!r}; use one of {STATS}")
    window = window_name(window_text)
    number = _RIGHT_NUMBER.match(right)
    threshold: float | AcrossRanks
    if number:
        threshold = float(number.group(1))
    else:
        across = _RIGHT_ACROSS.match(right)
        if not across:
            raise ValueError(
                f"condition {text!r}: threshold {right!r} must be a number or "
                "'[factor *] <median|mean|min|max>_across_ranks(<metric>[, <window>])'"
            )
        factor, aggregate, other_metric, other_window = across.groups()
        if aggregate not in AGGREGATES:
            raise ValueError(f"condition {text!r}: unknown aggregate {aggregate!r}")
        threshold = AcrossRanks(
            factor=float(factor) if factor else 1.0,
            aggregate=aggregate,
            metric=other_metric,
            window=window_name(other_window) if other_window else window,
        )
    return Condition(stat, metric, window, op, threshold, text.strip())
