"""Model-quality metrics from sufficient statistics: the names they travel under, and the
math from statistics to metrics.

Producers turn each batch of (targets, predictions or scores) into counts and sums
(``producers.quality_stats``); these are additive, so a processor sums them over a window
and across ranks and then computes accuracy, precision, recall, F1, AUC, MSE and MAE here,
exactly as if it had seen every example. Records carrying them have kind ``quality``.

Names, for a task called ``T`` (``[A-Za-z0-9_.-]+``) and class ``c``:

- classification: ``quality/T/n``, ``quality/T/tp/c``, ``quality/T/fp/c``, ``quality/T/fn/c``
- binary scores (AUC): ``quality/T/pos/i``, ``quality/T/neg/i`` — counts of positive and
  negative examples whose score falls in bin ``i`` of ``B`` equal bins over [0, 1]
- regression: ``quality/T/n``, ``quality/T/abs_err``, ``quality/T/sq_err``

Pure Python: no torch, Kafka or faust imports.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from stepstream.errors import ConfigError

PREFIX = "quality"
AUC_BINS = 100
"""Default number of score bins; AUC from binned scores is exact up to ties within a bin."""

_TASK = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_task(task: str) -> str:
    """Return `task` if it can be part of a metric name, else raise ConfigError."""
    if not _TASK.match(task):
        raise ConfigError(
            f"quality task name {task!r} is invalid: use 1-64 letters, digits, '_', '.', '-'"
        )
    return task


def n_name(task: str) -> str:
    """Name of the example count of a task."""
    return f"{PREFIX}/{task}/n"


def class_name(task: str, stat: str, cls: int) -> str:
    """Name of a per-class count: `stat` is tp, fp or fn."""
    return f"{PREFIX}/{task}/{stat}/{cls}"


def bin_name(task: str, label: str, index: int) -> str:
    """Name of a score-histogram bin: `label` is pos or neg."""
    return f"{PREFIX}/{task}/{label}/{index}"


def error_name(task: str, stat: str) -> str:
    """Name of a regression error sum: `stat` is abs_err or sq_err."""
    return f"{PREFIX}/{task}/{stat}"


def merge(values: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Sum statistics over records (a window, or every rank): they are all additive."""
    total: dict[str, float] = {}
    for record in values:
        for name, value in record.items():
            if name.startswith(PREFIX + "/"):
                total[name] = total.get(name, 0.0) + value
    return total


def _safe_div(num: float, den: float) -> float:
    return num / den if den else math.nan


@dataclass
class Confusion:
    """Per-class true positives, false positives and false negatives, and the count."""

    n: float
    tp: list[float]
    fp: list[float]
    fn: list[float]

    def to_values(self, task: str) -> dict[str, float]:
        """The record values of these counts."""
        out = {n_name(task): float(self.n)}
        for stat, counts in (("tp", self.tp), ("fp", self.fp), ("fn", self.fn)):
            for cls, count in enumerate(counts):
                out[class_name(task, stat, cls)] = float(count)
        return out

    @classmethod
    def from_values(cls, task: str, values: Mapping[str, float]) -> Confusion:
        """Counts of `task` found in `values` (classes without a count are 0)."""
        per: dict[str, dict[int, float]] = {"tp": {}, "fp": {}, "fn": {}}
        head = f"{PREFIX}/{task}/"
        for name, value in values.items():
            if not name.startswith(head):
                continue
            parts = name[len(head) :].split("/")
            if len(parts) == 2 and parts[0] in per and parts[1].isdigit():
                per[parts[0]][int(parts[1])] = value
        classes = 1 + max((c for d in per.values() for c in d), default=-1)
        lists = {k: [d.get(c, 0.0) for c in range(classes)] for k, d in per.items()}
        return cls(values.get(n_name(task), 0.0), lists["tp"], lists["fp"], lists["fn"])

    def accuracy(self) -> float:
        """Correct predictions over examples (NaN without examples)."""
        return _safe_div(sum(self.tp), self.n)

    def precision(self, cls: int) -> float:
        """tp / (tp + fp) of one class."""
        return _safe_div(self.tp[cls], self.tp[cls] + self.fp[cls])

    def recall(self, cls: int) -> float:
        """tp / (tp + fn) of one class."""
        return _safe_div(self.tp[cls], self.tp[cls] + self.fn[cls])

    def f1(self, cls: int) -> float:
        """2 tp / (2 tp + fp + fn) of one class."""
        return _safe_div(2 * self.tp[cls], 2 * self.tp[cls] + self.fp[cls] + self.fn[cls])

    def macro_f1(self) -> float:
        """Mean F1 over classes that occur (in targets or predictions)."""
        scores = [self.f1(c) for c in range(len(self.tp)) if self.tp[c] + self.fp[c] + self.fn[c]]
        return sum(scores) / len(scores) if scores else math.nan


@dataclass
class ScoreHistogram:
    """Counts of positive and negative examples per score bin (equal bins over [0, 1])."""

    pos: list[float]
    neg: list[float] = field(default_factory=list)

    def to_values(self, task: str) -> dict[str, float]:
        """The record values of this histogram."""
        out: dict[str, float] = {}
        for i, (p, q) in enumerate(zip(self.pos, self.neg, strict=True)):
            out[bin_name(task, "pos", i)] = float(p)
            out[bin_name(task, "neg", i)] = float(q)
        return out

    @classmethod
    def from_values(cls, task: str, values: Mapping[str, float]) -> ScoreHistogram:
        """The histogram of `task` found in `values`."""
        bins: dict[str, dict[int, float]] = {"pos": {}, "neg": {}}
        head = f"{PREFIX}/{task}/"
        for name, value in values.items():
            if name.startswith(head):
                parts = name[len(head) :].split("/")
                if len(parts) == 2 and parts[0] in bins and parts[1].isdigit():
                    bins[parts[0]][int(parts[1])] = value
        size = 1 + max((i for d in bins.values() for i in d), default=-1)
        return cls(
            [bins["pos"].get(i, 0.0) for i in range(size)],
            [bins["neg"].get(i, 0.0) for i in range(size)],
        )

    def auc(self) -> float:
        """Area under the ROC curve: the probability that a positive scores above a
        negative, counting a shared bin as a tie (half). NaN without both classes."""
        positives, negatives = sum(self.pos), sum(self.neg)
        if not positives or not negatives:
            return math.nan
        below = 0.0
        wins = 0.0
        for p, q in zip(self.pos, self.neg, strict=True):
            wins += p * (below + 0.5 * q)
            below += q
        return wins / (positives * negatives)


@dataclass
class Regression:
    """Example count and sums of absolute and squared errors."""

    n: float
    abs_err: float
    sq_err: float

    def to_values(self, task: str) -> dict[str, float]:
        """The record values of these sums."""
        return {
            n_name(task): float(self.n),
            error_name(task, "abs_err"): float(self.abs_err),
            error_name(task, "sq_err"): float(self.sq_err),
        }

    @classmethod
    def from_values(cls, task: str, values: Mapping[str, float]) -> Regression:
        """The sums of `task` found in `values`."""
        return cls(
            values.get(n_name(task), 0.0),
            values.get(error_name(task, "abs_err"), 0.0),
            values.get(error_name(task, "sq_err"), 0.0),
        )

    def mse(self) -> float:
        """Mean squared error (NaN without examples)."""
        return _safe_div(self.sq_err, self.n)

    def mae(self) -> float:
        """Mean absolute error (NaN without examples)."""
        return _safe_div(self.abs_err, self.n)

    def rmse(self) -> float:
        """Root mean squared error."""
        return math.sqrt(self.mse()) if self.n else math.nan
