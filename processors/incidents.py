"""Incidents: one fault is one alert per run and detector, not one per series.

A NaN loss on one rank spreads through the all-reduce to every rank and every layer's
gradient norm: per series, that is dozens of flags for one fault, and someone paged for it
would get dozens of pages. `Incidents` groups the findings of a run by detector: the first
finding of a quiet (run, detector) opens the incident and is the one that is raised (its
rank, metric and step are the first seen, and name the alert); findings of further series
join it silently and are listed in `Alert.affected`; the incident ends, with one resolved
finding, when the last of its series has cleared and no series of it was found again for
`hold_s` seconds (a loss that spikes, clears and spikes again a few steps later is one
incident, one page). So the alert stays firing while any series still holds the condition.

A finding is a detector's flag as the alert message it travels as (`flag_to_alert`): status
``firing`` when its episode starts, ``resolved`` when it ends, `rule` naming the detector.
Pure logic, fed in stage 2 (keyed by run, so every rank of a run meets in one process)
with stage 1's findings, which travel in the rank summaries, and stage 2's own.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from processors.flags import RESTATED
from stepstream.contract import Alert
from stepstream.vocabulary import NODE_LABEL, is_rank_local

#: Series listed in an incident's `affected` (the count goes on in the evidence).
MAX_LISTED = 50


def series_label(finding: Alert) -> str:
    """How an incident lists one of its series: ``rank 1: loss`` (or the parts it has)."""
    node = finding.labels.get(NODE_LABEL)
    if finding.rank is None and node:  # a lost node: its ranks are in its `affected`
        ranks = f" ({', '.join(finding.affected)})" if finding.affected else ""
        return f"node {node}{ranks}"
    where = f"rank {finding.rank}" if finding.rank is not None else "run"
    return f"{where}: {finding.metric}" if finding.metric else where


def cleared(finding: Alert) -> bool:
    """True when `finding` reports the end of an episode (its condition cleared)."""
    return finding.status == "resolved"


@dataclass
class _Incident:
    opening: Alert
    open: set[Hashable] = field(default_factory=set)
    listed: list[str] = field(default_factory=list)
    seen: set[Hashable] = field(default_factory=set)
    #: Once every series cleared: (when the incident ends, the last cleared finding).
    closing: tuple[float, Alert] | None = None


class Incidents:
    """Open incidents by (run, detector); see the module docstring. `hold_s`: how long an
    incident whose series all cleared waits for a new finding before it ends."""

    def __init__(self, max_listed: int = MAX_LISTED, hold_s: float = 0.0) -> None:
        self.max_listed = max_listed
        self.hold_s = hold_s
        self._open: dict[tuple[str, str], _Incident] = {}

    def apply(self, finding: Alert, now: float = 0.0) -> Alert | None:
        """What to raise for `finding` at `now` (processor clock), if any: the
        incident's opening finding, its resolved one once its last series cleared (at once
        without a hold; else from `tick`), or None while the incident goes on. What it
        returns carries `raised_at` of the findings it was made of: the caller stamps it."""
        key = (finding.run, finding.rule)
        member = (finding.rank, finding.metric, finding.labels.get(NODE_LABEL))
        incident = self._open.get(key)
        if cleared(finding):
            if incident is None:
                # Nothing open here (e.g. this worker took the run over after a restart):
                # let the end through, so an alert restored from Redis resolves.
                return finding
            incident.open.discard(member)
            if incident.open:
                return None
            if self.hold_s > 0:
                incident.closing = (now + self.hold_s, finding)
                return None
            del self._open[key]
            return self._closed(incident, finding)
        restated = RESTATED in finding.labels
        if restated:
            finding = finding.model_copy(
                update={"labels": {k: v for k, v in finding.labels.items() if k != RESTATED}}
            )
        if incident is None:
            incident = self._open[key] = _Incident(opening=finding)
            self._join(incident, finding, member)
            return self._opened(incident, finding)
        again = restated or member in incident.open
        incident.closing = None  # flagged again within the hold: the same incident
        self._join(incident, finding, member)
        # A series that starts again while open is a detector restarted cold (its
        # partition moved) or restating its episode after a rebalance: the alert engine
        # hears the incident again, so an alert it took over is re-asserted, not resolved
        # for want of news (it pages nothing: the alert is firing already).
        return incident.opening if again else None

    def apply_all(self, findings: list[Alert], now: float = 0.0) -> list[Alert]:
        """`apply` each of `findings` (in order); the findings to raise. Of those that open
        an incident together (the same step, in one call), the one on a rank-local signal
        names it: the loss that went NaN, not the gradient norm that `watch()` read just
        before it."""
        out: list[Alert] = []
        fresh: dict[tuple[str, str], int] = {}
        for finding in findings:
            key = (finding.run, finding.rule)
            existed = key in self._open
            raised = self.apply(finding, now)
            if raised is not None:
                if not cleared(raised) and not existed:
                    fresh[key] = len(out)
                out.append(raised)
                continue
            at = fresh.get(key)
            if at is None or cleared(finding):
                continue
            opener = out[at]
            if (
                finding.step == opener.step
                and finding.metric is not None
                and is_rank_local(finding.metric)
                and (opener.metric is None or not is_rank_local(opener.metric))
            ):
                out[at] = self._opened(self._open[key], finding)
        return out

    def _opened(self, incident: _Incident, finding: Alert) -> Alert:
        """The opening finding of `incident`, named by `finding`."""
        opened = finding.model_copy(
            update={
                "affected": list(incident.listed),
                "evidence": {
                    **finding.evidence,
                    "first_rank": _num(finding.rank),
                    "first_step": _num(finding.step),
                },
            }
        )
        incident.opening = opened
        return opened

    def tick(self, now: float) -> list[Alert]:
        """Resolved findings of the incidents whose hold ran out by `now`."""
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

    def _join(self, incident: _Incident, finding: Alert, member: Hashable) -> None:
        incident.open.add(member)
        if member not in incident.seen:
            incident.seen.add(member)
            if len(incident.listed) < self.max_listed:
                incident.listed.append(series_label(finding))

    def _closed(self, incident: _Incident, last: Alert) -> Alert:
        """The end of `incident`: its opening finding, resolved where `last` cleared (so
        it names what the opening named, and ends the very alert it raised)."""
        count = len(incident.seen)
        summary = last.summary
        if count > 1:
            summary = f"{summary} (incident over: all {count} affected series cleared)"
        return incident.opening.model_copy(
            update={
                "status": "resolved",
                "step": last.step,
                "t": last.t,
                "summary": summary,
                "evidence": {**last.evidence, "affected_series": float(count)},
                "affected": list(incident.listed),
            }
        )

    def forget(self, run: str, detectors: Iterable[str] | None = None) -> None:
        """Drop the open incidents of `run` (of `detectors`, or all) without an end:
        the detector forgot their episodes (the run went quiet, or moved to another
        worker), so no clear will come, and a stale incident would swallow new findings."""
        wanted = None if detectors is None else set(detectors)
        for key in [k for k in self._open if k[0] == run]:
            if wanted is None or key[1] in wanted:
                del self._open[key]

    def end_run(self, run: str, t: float, summary: str) -> list[Alert]:
        """The ends of every open incident of `run` at event time `t`, at once: the run
        finished (every rank closed), so none of its series will clear or be found again,
        and an incident left open would keep its alert firing until the resolve timeout.
        One already closing ends with the clear it was holding."""
        out = []
        for key in [k for k in self._open if k[0] == run]:
            incident = self._open.pop(key)
            if incident.closing is not None:
                last = incident.closing[1]
            else:
                opening = incident.opening
                last = opening.model_copy(
                    update={"status": "resolved", "t": max(t, opening.t), "summary": summary}
                )
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
