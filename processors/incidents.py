"""Incidents: one fault is one alert per run and detector, not one per series.

A NaN loss on one rank spreads through the all-reduce to every rank and every layer's
gradient norm: per series, that is dozens of flags for one fault, and someone paged for it
would get dozens of pages. `Incidents` groups the flags of a run by detector: the first
flag of a quiet (run, detector) opens the incident and is the one that is raised (its rank,
metric and step are the first seen, and name the alert); flags of further series join it
silently and are listed in `Flag.affected`; the incident ends, with one cleared flag, when
the last of its series has cleared. So the alert stays firing while any series still holds
the condition.

Pure logic, fed in stage 2 (keyed by run, so every rank of a run meets in one process)
with stage 1's flags, which travel in the rank summaries, and stage 2's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass, field

from processors.flags import Flag, cleared_flag

#: Series listed in an incident's `affected` (the count goes on in the evidence).
MAX_LISTED = 50


def series_label(flag: Flag) -> str:
    """How an incident lists one of its series: ``rank 1: loss`` (or the parts it has)."""
    where = f"rank {flag.rank}" if flag.rank is not None else "run"
    return f"{where}: {flag.metric}" if flag.metric else where


@dataclass
class _Incident:
    opening: Flag
    open: set[Hashable] = field(default_factory=set)
    listed: list[str] = field(default_factory=list)
    seen: set[Hashable] = field(default_factory=set)


class Incidents:
    """Open incidents by (run, detector); see the module docstring."""

    def __init__(self, max_listed: int = MAX_LISTED) -> None:
        self.max_listed = max_listed
        self._open: dict[tuple[str, str], _Incident] = {}

    def apply(self, flag: Flag) -> Flag | None:
        """The flag to raise for `flag`, if any: the incident's opening flag, its cleared
        flag once its last series cleared, or None while the incident goes on."""
        key = (flag.run, flag.detector)
        member = (flag.rank, flag.metric)
        incident = self._open.get(key)
        if flag.cleared:
            if incident is None:
                # Nothing open here (e.g. this worker took the run over after a restart):
                # let the end through, so an alert restored from Redis resolves.
                return flag
            incident.open.discard(member)
            if incident.open:
                return None
            del self._open[key]
            return self._closed(incident, flag)
        if incident is None:
            incident = self._open[key] = _Incident(opening=flag)
            self._join(incident, flag, member)
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
        self._join(incident, flag, member)
        return None

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

    def affected(self, run: str, detector: str) -> tuple[str, ...]:
        """The series listed in the open incident of (`run`, `detector`), if any."""
        incident = self._open.get((run, detector))
        return tuple(incident.listed) if incident else ()

    def forget(self, run: str) -> None:
        """Drop the open incidents of `run` (its state is gone: no cleared flags)."""
        for key in [k for k in self._open if k[0] == run]:
            del self._open[key]

    def __len__(self) -> int:
        return len(self._open)


def _num(value: int | None) -> float | None:
    return float(value) if value is not None else None
