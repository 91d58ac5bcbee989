"""The one shape of a per-series detector: state per series, an episode per series, the
signals it reads, and the edges (start, clear) it reports. A detector built on
`SeriesDetector` is only its parameters and its judgement:

- `new_state(run, rank, metric)`: what it remembers of one series;
- `judge(state, step, t, value, is_open)`: does its condition hold at this point (True),
  no longer hold (False), or is there no verdict yet (None: warming up, or a point it only
  learns from);
- `describe(...)`: the summary and evidence of an edge, built only when an episode starts
  or clears (so healthy points cost no string formatting).

`observe` is written once here: the finite check, the state lookup, the episode
bookkeeping and the flags.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable
from typing import ClassVar, Generic, TypeVar

from processors.detectors.base import matches
from processors.flags import Episodes, Flag, RankKey, forget_ranks
from stepstream.contract import Severity

S = TypeVar("S")
P = TypeVar("P")

Evidence = dict[str, float | None]


class SeriesDetector(Generic[S, P]):
    """Base of the per-series detectors (see the module docstring).

    Class attributes: `name` (the detector and alert rule), `severity`, `finite_only`
    (non-finite points are the non-finite detector's: skipped), `needs_step` (points
    without a step are skipped).
    """

    name: ClassVar[str]
    severity: ClassVar[Severity] = "warning"
    finite_only: ClassVar[bool] = True
    needs_step: ClassVar[bool] = False

    def __init__(self, params: P) -> None:
        self.params = params
        self._states: dict[Hashable, S] = {}
        self._episodes = Episodes()

    def signals(self) -> tuple[str, ...]:
        """The vocabulary names (or families) this detector reads."""
        return tuple(getattr(self.params, "metrics", ()))

    def wants(self, metric: str) -> bool:
        """True if the detector reads `metric` (an alias of one of its signals counts)."""
        return matches(metric, self.signals())

    def restated(self, run: str, rank: int) -> list[Flag]:
        """The open episodes of one rank, as flags to send again (`Episodes.opened`)."""
        return self._episodes.opened(run, rank)

    def forget(self, ranks: Collection[RankKey]) -> None:
        """Drop the state and open episodes of the series of `ranks` (idle publishers);
        an episode ends without a cleared flag (see `Episodes.forget`)."""
        forget_ranks(self._states, ranks)
        self._episodes.forget(ranks)

    def key(self, run: str, rank: int, metric: str) -> Hashable:
        """What one state and one episode belong to: a series by default."""
        return (run, rank, metric)

    def new_state(self, run: str, rank: int, metric: str) -> S:
        """The state of a series seen for the first time."""
        raise NotImplementedError

    def judge(
        self, state: S, metric: str, step: int | None, t: float, value: float, is_open: bool
    ) -> bool | None:
        """Add one point to `state`; whether the condition holds now (None: no verdict)."""
        raise NotImplementedError

    def describe(
        self,
        state: S,
        run: str,
        rank: int,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        starting: bool,
    ) -> tuple[str, Evidence]:
        """Summary and evidence of an episode starting (`starting`) or clearing here."""
        raise NotImplementedError

    def observe(
        self, run: str, rank: int, metric: str, step: int | None, t: float, value: float
    ) -> tuple[Flag, ...]:
        """Add one point; a flag when an episode starts, a cleared flag when one ends."""
        if (self.finite_only and not math.isfinite(value)) or (self.needs_step and step is None):
            return ()
        key = self.key(run, rank, metric)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = self.new_state(run, rank, metric)
        is_open = self._episodes.is_open(key)
        holds = self.judge(state, metric, step, t, value, is_open)
        if holds is None or holds == is_open:
            return ()
        summary, evidence = self.describe(state, run, rank, metric, step, t, value, holds)
        if not holds:
            return (self._episodes.close(key, step, t, summary, evidence),)
        flag = Flag(
            detector=self.name,
            run=run,
            rank=rank,
            metric=metric,
            step=step,
            t=t,
            severity=self.severity,
            summary=summary,
            evidence=evidence,
        )
        return (self._episodes.start(key, flag),)
