"""Incidents: one fault is one alert per run and detector, not one per series.

A NaN loss on one rank spreads through the all-reduce to every rank and every layer's
gradient norm: per series, that is dozens of flags for one fault, and someone paged for it
would get dozens of pages. `Incidents` groups the flags of a run by detector: the first
flag of a quiet (run, detector) opens the incident and is the one that is raised (its rank,
metric and step are the first seen, and name the alert); flags of further series join it
silently and are listed in `Flag.affected`; the incident ends, with one cleared flag, when
the last of its series has cleared and no series of it flagged again for `hold_s` seconds
(a loss that spikes, clears and spikes again a few steps later is one incident, one page).
So the alert stays firing while any series still holds the condition.

Pure logic, fed in stage 2 (keyed by run, so every rank of a run meets in one process)
with stage 1's flags, which travel in the rank summaries, and stage 2's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from processors.flags import RESTATED, Flag, cleared_flag
from stepstream.vocabulary import NODE_LABEL, is_rank_local

#: Series listed in an incident's `affected` (the count goes on in the evidence).
MAX_LISTED = 50


def series_label(flag: Flag) -> str:
    """How an incident lists one of its series: ``rank 1: loss`` (or the parts it has)."""
    node = flag.labels.get(NODE_LABEL)
    if flag.rank is None and node:  # a lost node: its ranks are in the flag's `affected`
        ranks = f" ({', '.join(flag.affected)})" if flag.affected else ""
        return f"node {node}{ranks}"
    where = f"rank {flag.rank}" if flag.rank is not None else "run"
    return f"{where}: {flag.metric}" if flag.metric else where


@dataclass
class _Incident:
    opening: Flag
    open: set[Hashable] = field(default_factory=set)
    listed: list[str] = field(default_factory=list)
    seen: set[Hashable] = field(default_factory=set)
    #: Once every series cleared: (when the incident ends, the last cleared flag).
    closing: tuple[float, Flag] | None = None


class Incidents:
    """Open incidents by (run, detector); see the module docstring. `hold_s`: how long an
    incident whose series all cleared waits for a new flag before it ends."""

    def __init__(self, max_listed: int = MAX_LISTED, hold_s: float = 0.0) -> None:
        self.max_listed = max_listed
        self.hold_s = hold_s
        self._open: dict[tuple[str, str], _Incident] = {}

    def apply(self, flag: Flag, now: float = 0.0) -> Flag | None:
        """The flag to raise for `flag` at `now` (processor clock), if any: the incident's
        opening flag, its cleared flag once its last series cleared (at once without a
        hold; else from `tick`), or None while the incident goes on."""
        key = (flag.run, flag.detector)
        member = (flag.rank, flag.metric, flag.labels.get(NODE_LABEL))
        incident = self._open.get(key)
        if flag.cleared:
            if incident is None:
                # Nothing open here (e.g. this worker took the run over after a restart):
                # let the end through, so an alert restored from Redis resolves.
                return flag
            incident.open.discard(member)
            if incident.open:
                return None
            if self.hold_s > 0:
                incident.closing = (now + self.hold_s, flag)
                return None
            del self._open[key]
            return self._closed(incident, flag)
        restated = RESTATED in flag.labels
        if restated:
            flag = dataclasses.replace(
                flag, labels={k: v for k, v in flag.labels.items() if k != RESTATED}
            )
        if incident is None:
            incident = self._open[key] = _Incident(opening=flag)
            self._join(incident, flag, member)
            return self._opened(incident, flag)
        again = restated or member in incident.open
        incident.closing = None  # flagged again within the hold: the same incident
        self._join(incident, flag, member)
        # A series that starts again while open is a detector restarted cold (its
        # partition moved) or restating its episode after a rebalance: the alert engine
        # hears the incident again, so an alert it took over is re-asserted, not resolved
        # for want of news (it pages nothing: the alert is firing already).
        return incident.opening if again else None

    def apply_all(self, flags: list[Flag], now: float = 0.0) -> list[Flag]:
        """`apply` each of `flags` (in order); the flags to raise. Of the flags that open
        an incident together (the same step, in one call), the one on a rank-local signal
        names it: the loss that went NaN, not the gradient norm that `watch()` read just
        before it."""
        out: list[Flag] = []
        fresh: dict[tuple[str, str], int] = {}
        for flag in flags:
            key = (flag.run, flag.detector)
            existed = key in self._open
            raised = self.apply(flag, now)
            if raised is not None:
                if not raised.cleared and not existed:
                    fresh[key] = len(out)
                out.append(raised)
                continue
            at = fresh.get(key)
            if at is None or flag.cleared:
                continue
            opener = out[at]
            if (
                flag.step == opener.step
                and flag.metric is not None
                and is_rank_local(flag.metric)
                and (opener.metric is None or not is_rank_local(opener.metric))
            ):
                out[at] = self._opened(self._open[key], flag)
        return out

    def _opened(self, incident: _Incident, flag: Flag) -> Flag:
        """The opening flag of `incident`, named by `flag`."""
        opened = dataclasses.replace(
            flag,
            affected=tuple(incident.listed),
            evidence={
                **flag.evidence,
                "first_rank": _num(flag.rank),
                "first_step": _num(flag.step),
            },
        )
        incident.opening = opened
        return opened

    def tick(self, now: float) -> list[Flag]:
        """Cleared flags of the incidents whose hold ran out by `now`."""
        due = [
            key
            for key, incident in self._open.items()
            if incident.closing is not None and incident.closing[0] <= now
        ]
        out = []
        for key in due:
            incident = self._open.pop(key)
            assert incident.closing is not None
            out.append(self._closed(incident, incident.closing[1]))
        return out

    def _join(self, incident: _Incident, flag: Flag, member: Hashable) -> None:
        incident.open.add(member)
        if member not in incident.seen:
            incident.seen.add(member)
            if len(incident.listed) < self.max_listed:
                incident.listed.append(series_label(flag))

    def _closed(self, incident: _Incident, last: Flag) -> Flag:
        opening = incident.opening
        count = len(incident.seen)
        summary = last.summary
        if count > 1:
            summary = f"{summary} (incident over: all {count} affected series cleared)"
        ended = cleared_flag(
            opening,
            last.step,
            last.t,
            summary,
            {**last.evidence, "affected_series": float(count)},
        )
        return dataclasses.replace(ended, affected=tuple(incident.listed))

    def forget(self, run: str, detectors: Iterable[str] | None = None) -> None:
        """Drop the open incidents of `run` (of `detectors`, or all) without a cleared flag:
        the detector forgot their episodes (the run went quiet, or moved to another
        worker), so no clear will come, and a stale incident would swallow new flags."""
        wanted = None if detectors is None else set(detectors)
        for key in [k for k in self._open if k[0] == run]:
            if wanted is None or key[1] in wanted:
                del self._open[key]

    def end_run(self, run: str, t: float, summary: str) -> list[Flag]:
        """Cleared flags of every open incident of `run` at event time `t`, at once: the run
        finished (every rank closed), so none of its series will clear or flag again, and
        an incident left open would keep its alert firing until the resolve timeout. One
        already closing ends with the clear it was holding."""
        out = []
        for key in [k for k in self._open if k[0] == run]:
            incident = self._open.pop(key)
            if incident.closing is not None:
                last = incident.closing[1]
            else:
                opening = incident.opening
                last = cleared_flag(opening, opening.step, max(t, opening.t), summary, {})
            out.append(self._closed(incident, last))
        return out

    def affected(self, run: str, detector: str) -> tuple[str, ...]:
        """The series listed in the open incident of (`run`, `detector`), if any."""
        incident = self._open.get((run, detector))
        return tuple(incident.listed) if incident else ()

    def __len__(self) -> int:
        return len(self._open)


def _num(value: int | None) -> float | None:
    return float(value) if value is not None else None
