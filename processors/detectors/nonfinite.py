"""Non-finite values: per series in stage 1, and the rank that produced the first one in
stage 2 (an all-reduce spreads a NaN to every rank one step later, so the flag on every
rank is not the answer to "where did it start")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from processors.detectors.base import matches
from processors.detectors.shape import Evidence, SeriesDetector
from processors.flags import Flag, cleared_flag, evidence, moment
from stepstream.vocabulary import is_rank_local


def _word(value: float) -> str:
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


class NonFiniteDetector(SeriesDetector[None, None]):
    """Flags a NaN or ±Infinity value in any metric of a series.

    One flag per episode: a series that stays non-finite is flagged once, and the episode
    clears (a cleared flag) at its first finite value again. Parameters: none. Delay: the
    record itself.
    """

    name = "nonfinite"
    severity = "critical"
    finite_only = False

    def __init__(self) -> None:
        super().__init__(None)

    def wants(self, metric: str) -> bool:
        """Every metric."""
        return True

    def new_state(self, run: str, rank: int, metric: str) -> None:
        return None

    def judge(
        self,
        state: None,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        is_open: bool,
    ) -> bool | None:
        return not math.isfinite(value)

    def describe(
        self,
        state: None,
        run: str,
        rank: int,
        metric: str,
        step: int | None,
        t: float,
        value: float,
        starting: bool,
    ) -> tuple[str, Evidence]:
        ev = evidence(value, None, None, None, step=_as_float(step))
        if starting:
            return (
                f"{metric} is {_word(value)} on rank {rank} of run {run} at {moment(step, t)}",
                ev,
            )
        return f"{metric} is finite again on rank {rank} of run {run} at {moment(step, t)}", ev


def _as_float(step: int | None) -> float | None:
    return float(step) if step is not None else None


@dataclass(frozen=True)
class NonFiniteOriginParams:
    """Parameters of `NonFiniteOrigin`.

    settle_steps: the verdict waits until every rank reported a step this far past the
        first non-finite step (so a rank whose NaN arrives later can still be earlier).
    settle_s: or until this many seconds (processor clock) passed since the first report.
    rearm_steps: a non-finite value this many steps after the episode's last one opens a
        new episode.
    ignore: further metrics not to judge. Only rank-local signals are judged at all
        (`stepstream.vocabulary`): values read after a collective (gradient norms after
        the all-reduce, weights, learning rates) are non-finite on every rank in the same
        step, so they cannot name the origin.
    """

    settle_steps: int = 1
    settle_s: float = 3.0
    rearm_steps: int = 20
    ignore: tuple[str, ...] = ()


@dataclass
class _Episode:
    opened_at: float
    world: int
    first: dict[int, tuple[int, float, str, float]] = field(default_factory=dict)
    last_step: int = 0
    reported: bool = False
    verdict: Flag | None = None


class NonFiniteOrigin:
    """Names the rank whose non-finite value came first in a run: earliest (step, event
    time) among the ranks' first non-finite values of the episode.

    Fed per rank with `nonfinite(...)` and with each rank's progress by `progress(...)`;
    `tick(now)` settles episodes whose wait ran out. Delay: `settle_steps` steps of every
    rank, at most `settle_s` seconds.
    """

    name = "nonfinite_origin"

    def __init__(self, params: NonFiniteOriginParams | None = None) -> None:
        self.params = params or NonFiniteOriginParams()
        self._episodes: dict[str, _Episode] = {}
        self._progress: dict[str, dict[int, int]] = {}

    def forget(self, run: str) -> None:
        """Drop what it holds of `run` (gone idle), an open episode without a verdict."""
        self._episodes.pop(run, None)
        self._progress.pop(run, None)

    def nonfinite(
        self,
        run: str,
        rank: int,
        world: int,
        metric: str,
        step: int,
        t: float,
        value: float,
        now: float,
    ) -> Flag | None:
        """Record a rank's non-finite value; return the verdict if it is now settled."""
        if not is_rank_local(metric) or matches(metric, self.params.ignore):
            return None
        episode = self._episodes.get(run)
        if (
            episode is not None
            and episode.reported
            and step > episode.last_step + self.params.rearm_steps
        ):
            episode = None
        if episode is None:
            episode = self._episodes[run] = _Episode(opened_at=now, world=world, last_step=step)
        episode.last_step = max(episode.last_step, step)
        if episode.reported:
            return None
        known = episode.first.get(rank)
        if known is None or (step, t) < known[:2]:
            episode.first[rank] = (step, t, metric, value)
        return self._settle(run, episode, now)

    def progress(
        self, run: str, rank: int, step: int, now: float, t: float | None = None
    ) -> Flag | None:
        """Record that `rank` reached `step` (at event time `t`); return the verdict if it
        is now settled, or its cleared flag once every rank is `rearm_steps` past the
        episode's last non-finite value."""
        ranks = self._progress.setdefault(run, {})
        if step > ranks.get(rank, -1):
            ranks[rank] = step
        episode = self._episodes.get(run)
        if episode is None:
            return None
        if not episode.reported:
            return self._settle(run, episode, now)
        # Every rank went `rearm_steps` past the episode's last non-finite value: the
        # episode is over, and its verdict's alert resolves.
        quiet_from = episode.last_step + self.params.rearm_steps
        if episode.verdict is not None and min(ranks.values()) > quiet_from:
            del self._episodes[run]
            return cleared_flag(
                episode.verdict,
                step,
                episode.verdict.t if t is None else t,
                f"no non-finite value in run {run} for {self.params.rearm_steps} steps "
                f"after step {episode.last_step}",
                evidence(None, None, None, float(self.params.rearm_steps)),
            )
        return None

    def tick(self, now: float) -> list[Flag]:
        """Settle episodes whose wait ran out."""
        out = []
        for run, episode in self._episodes.items():
            if not episode.reported:
                flag = self._settle(run, episode, now)
                if flag is not None:
                    out.append(flag)
        return out

    def _settle(self, run: str, episode: _Episode, now: float) -> Flag | None:
        first_step = min(s for s, *_ in episode.first.values())
        ranks = self._progress.get(run, {})
        waited = now - episode.opened_at
        caught_up = len(ranks) >= episode.world and all(
            ranks.get(r, -1) >= first_step + self.params.settle_steps for r in range(episode.world)
        )
        if not caught_up and waited < self.params.settle_s:
            return None
        episode.reported = True
        first, (step, t, metric, value) = min(episode.first.items(), key=lambda kv: kv[1][:2])
        tied = sorted(r for r, f in episode.first.items() if f[0] == step)
        later = sorted(r for r in episode.first if r not in tied)
        # Ranks that went non-finite in the same step cannot be told apart by event time
        # (clocks and flushes differ by more than a step): no rank is named then.
        rank: int | None = first if len(tied) == 1 else None
        if rank is not None:
            summary = (
                f"first non-finite value of run {run}: {metric}={_word(value)} on rank {rank} "
                f"at step {step}; {len(later)} other rank(s) followed"
            )
        else:
            summary = (
                f"non-finite values in run {run} started on ranks {tied} together at step "
                f"{step} ({metric}={_word(value)}): not in a rank-local value first, so "
                "likely in backward or the all-reduce (see the first non-finite layer in the "
                "grad records' text)"
            )
        episode.verdict = Flag(
            detector=self.name,
            run=run,
            rank=rank,
            metric=metric,
            step=step,
            t=t,
            severity="critical",
            summary=summary,
            evidence=evidence(
                value,
                None,
                None,
                None,
                step=float(step),
                ranks_affected=float(len(episode.first)),
                ranks_tied=float(len(tied)),
                waited_s=waited,
            ),
        )
        return episode.verdict
