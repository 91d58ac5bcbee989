"""Quality windows: sufficient statistics summed over the last N steps, turned into
quality metrics (accuracy, precision/recall/F1, AUC, MSE/MAE) by pluggable math.

The naming of the sufficient-statistic values and the math live in ``stepstream/quality.py``;
this module fixes the interface the processor needs from it (`QualityMath`), its adapter
over stepstream.quality (`TaskQuality`, one per task) and the windowing, which is the same
for every such statistic: they are additive (confusion counts, score-histogram bins, sums
of squared and absolute errors, counts), so a window's statistics are the sums over its
steps, and a run's are the sums over its ranks. Stage 1 (`processors.series_stage`) keeps
one window per (run, rank, task); stage 2 (`processors.run_stage`) one per (run, task) fed
with the statistics of finished steps summed across ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Protocol

from stepstream import quality as q


class QualityMath(Protocol):
    """Derives quality metrics from summed sufficient statistics (by value name)."""

    def metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        """Quality metrics (e.g. ``f1/macro``, ``auc``, ``mse``) of the summed statistics."""
        ...


class QualityWindow:
    """The quality-kind values of one rank over the last `steps` steps.

    A re-sent step replaces its values; steps older than the window are dropped (and
    counted in `late` when they arrive late); non-finite statistics are ignored, since a
    count cannot be NaN and one would poison every sum.
    """

    def __init__(self, steps: int, quality_math: QualityMath) -> None:
        if steps < 1:
            raise ValueError(f"quality window needs >= 1 step, got {steps}")
        self.steps = steps
        self._math = quality_math
        self._by_step: dict[int, dict[str, float]] = {}
        self._newest = -1
        self.late = 0

    def add(self, step: int, values: Mapping[str, float], *, accumulate: bool = False) -> None:
        """Place one step's sufficient statistics: replacing what the step held, or with
        `accumulate` adding to it (several distinct records of one step, e.g. micro-batches)."""
        if step <= self._newest - self.steps:
            self.late += 1
            return
        clean = {k: v for k, v in values.items() if math.isfinite(v)}
        held = self._by_step.setdefault(step, {})
        if accumulate:
            for name, value in clean.items():
                held[name] = held.get(name, 0.0) + value
        else:
            held.update(clean)
        if step > self._newest:
            self._newest = step
            cutoff = step - self.steps
            for old in [s for s in self._by_step if s <= cutoff]:
                del self._by_step[old]

    def sums(self) -> dict[str, float]:
        """Each statistic summed over the window's steps."""
        out: dict[str, float] = {}
        for values in self._by_step.values():
            for name, value in values.items():
                out[name] = out.get(name, 0.0) + value
        return out

    def compute(self) -> dict[str, float]:
        """The quality metrics of the window."""
        return self._math.metrics(self.sums())


def task_of(name: str) -> str | None:
    """The task of a sufficient-statistic name ``quality/<task>/...``, else None."""
    parts = name.split("/", 2)
    if len(parts) == 3 and parts[0] == q.PREFIX and parts[1]:
        return parts[1]
    return None


def split_by_task(values: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Quality statistics grouped by task (names that are not ``quality/<task>/...`` dropped)."""
    out: dict[str, dict[str, float]] = {}
    for name, value in values.items():
        task = task_of(name)
        if task is not None:
            out.setdefault(task, {})[name] = value
    return out


def _macro(values: Iterable[float]) -> float:
    """Mean where an undefined (NaN) per-class value counts as 0 (sklearn's zero_division=0)."""
    vals = [0.0 if math.isnan(v) else v for v in values]
    return sum(vals) / len(vals) if vals else math.nan


class TaskQuality:
    """`QualityMath` over stepstream.quality for one task: the summed statistics (full
    names ``quality/<task>/...``) -> metrics by short name, each with its example count.

    Classification (tp/fp/fn present): ``accuracy``, ``precision/<c>``, ``recall/<c>``,
    ``f1/<c>`` and ``precision/macro``, ``recall/macro``, ``f1/macro`` (macro: over classes
    that occur in targets or predictions, an undefined per-class value counting as 0).
    Binary scores (pos/neg bins): ``auc``. Regression (abs_err/sq_err): ``mse``, ``mae``.
    Undefined (NaN) metrics are left out.
    """

    def __init__(self, task: str) -> None:
        self.task = task
        self._head = f"{q.PREFIX}/{task}/"

    def _kinds(self, sums: Mapping[str, float]) -> set[str]:
        kinds = set()
        for name in sums:
            if name.startswith(self._head):
                kinds.add(name[len(self._head) :].split("/", 1)[0])
        return kinds

    def counted(self, sums: Mapping[str, float]) -> dict[str, tuple[float, float]]:
        """Metric short name -> (value, examples behind it); finite values only."""
        kinds = self._kinds(sums)
        out: dict[str, tuple[float, float]] = {}
        if kinds & {"tp", "fp", "fn"}:
            c = q.Confusion.from_values(self.task, sums)
            out["accuracy"] = (c.accuracy(), c.n)
            occurring = [k for k in range(len(c.tp)) if c.tp[k] + c.fp[k] + c.fn[k]]
            for k in range(len(c.tp)):
                out[f"precision/{k}"] = (c.precision(k), c.tp[k] + c.fp[k])
                out[f"recall/{k}"] = (c.recall(k), c.tp[k] + c.fn[k])
                out[f"f1/{k}"] = (c.f1(k), c.tp[k] + c.fp[k] + c.fn[k])
            out["precision/macro"] = (_macro(c.precision(k) for k in occurring), c.n)
            out["recall/macro"] = (_macro(c.recall(k) for k in occurring), c.n)
            out["f1/macro"] = (c.macro_f1(), c.n)
        if kinds & {"pos", "neg"}:
            h = q.ScoreHistogram.from_values(self.task, sums)
            out["auc"] = (h.auc(), sum(h.pos) + sum(h.neg))
        if kinds & {"abs_err", "sq_err"}:
            r = q.Regression.from_values(self.task, sums)
            out["mse"] = (r.mse(), r.n)
            out["mae"] = (r.mae(), r.n)
        return {k: v for k, v in out.items() if math.isfinite(v[0])}

    def metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        """Quality metrics of the summed statistics (short names, e.g. ``f1/macro``)."""
        return {k: v for k, (v, _) in self.counted(sums).items()}


def metric_name(task: str, short: str) -> str:
    """The published name of a quality metric: ``quality/<task>/<short>``."""
    return f"{q.PREFIX}/{task}/{short}"
