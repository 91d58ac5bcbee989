"""Flags, their episodes, and the one place a flag becomes an alert message.

A detector reports a condition twice: a Flag when an episode starts and a Flag with
``cleared=True`` when it ends because the condition stopped holding. `Episodes` keeps which
(detector, run, rank, metric) conditions are open, with the flag that opened each, so a
condition that holds for many points is reported once, re-arms when it clears, and its end
names exactly what its start named (the alert fingerprint is computed from those fields).
`flag_to_alert` is the one conversion of a flag: into the `Alert` message it travels as from
then on, a *finding* (stage 1's in the rank summaries, stage 2's incidents, the alert
engine's input); the alerting lifecycle (pending, firing, resolved) is built on findings.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Hashable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from stepstream.contract import Alert, Severity


@dataclass(frozen=True, slots=True)
class Flag:
    """A detector's finding: which detector, where (run, rank, metric), when, and why.

    `evidence` always holds ``value``, ``baseline``, ``threshold`` and ``window`` (None where
    a detector has no such number) plus detector-specific figures.
    """

    detector: str
    run: str
    rank: int | None
    metric: str | None
    step: int | None
    t: float
    severity: Severity
    summary: str
    evidence: dict[str, float | None] = field(default_factory=dict)
    cleared: bool = False
    """True when the flag reports the end of an episode (the condition cleared)."""
    affected: tuple[str, ...] = ()
    """For an incident: the series it covers (``rank 1: loss``), the first one first."""
    description: str = ""
    """Longer text for the alert (a hung rank's captured stack), bounded by the detector."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Labels inhibition and silences match besides rule, run, rank and metric (the node)."""


def evidence(
    value: float | None,
    baseline: float | None,
    threshold: float | None,
    window: float | None,
    **extra: float | None,
) -> dict[str, float | None]:
    """The evidence mapping every flag carries."""
    return {"value": value, "baseline": baseline, "threshold": threshold, "window": window, **extra}


def moment(step: int | None, t: float) -> str:
    """Where a point lies, for summaries: ``step 230``, or its event time without a step."""
    return f"step {step}" if step is not None else f"t={t:.3f}"


def cleared_flag(
    opening: Flag,
    step: int | None,
    t: float,
    summary: str,
    evidence: dict[str, float | None],
) -> Flag:
    """The flag reporting that the episode `opening` started has ended at (`step`, `t`).

    Detector, run, rank, metric and severity are the opening flag's, so the end resolves
    the very alert the start raised whatever the detector would name now (e.g. the laggard
    rank of a desync may have changed since).
    """
    return dataclasses.replace(
        opening, step=step, t=t, summary=summary, evidence=evidence, cleared=True
    )


#: A (run, rank) whose state is being dropped (see `forget_ranks`).
RankKey = tuple[str, int]


def forget_ranks(mapping: MutableMapping[Any, Any], ranks: Collection[RankKey]) -> int:
    """Drop the entries of `mapping` whose key is a (run, rank, ...) tuple of one of
    `ranks`, in one pass over the mapping; how many were dropped. The detectors' state is
    keyed this way, and a processor that never dropped it grew with every run it saw."""
    if not ranks or not mapping:
        return 0
    gone = [k for k in mapping if isinstance(k, tuple) and k[:2] in ranks]
    for key in gone:
        del mapping[key]
    return len(gone)


#: Label of a flag a stage restates after a rebalance: an episode it holds open, sent
#: again so that the alert engine of the run's new owner hears it (see
#: `processors.incidents`, which strips it).
RESTATED = "restated"


class Episodes:
    """Open episodes by key, each with the flag that opened it.

    A detector checks `is_open` before building a flag (so a condition that holds for many
    points builds one flag), opens the episode with `start`, and when the condition stops
    holding `close`s it into a cleared flag (or `end`s it, for bookkeeping, getting back
    the opening flag).
    """

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[Hashable, Flag] = {}

    def start(self, key: Hashable, flag: Flag) -> Flag:
        """Open the episode of `key` with `flag` (the first flag of the episode); return it."""
        self._open[key] = flag
        return flag

    def end(self, key: Hashable) -> Flag | None:
        """Close the episode of `key`; the flag that opened it, or None if none was open.
        Callers that close for bookkeeping (state forgotten) ignore the result."""
        if not self._open:  # the common case on every healthy point: nothing open at all
            return None
        return self._open.pop(key, None)

    def forget(self, ranks: Collection[RankKey]) -> None:
        """Drop the open episodes of `ranks` (keys starting with (run, rank)) without a
        cleared flag: their alerts resolve on the alert engine's quiet timeout."""
        forget_ranks(self._open, ranks)

    def forget_run(self, run: str) -> None:
        """Drop the open episodes of `run` (keyed by the run, or by tuples starting with
        it) without a cleared flag."""
        for key in [k for k in self._open if k == run or (isinstance(k, tuple) and k[0] == run)]:
            del self._open[key]

    def opened(self, run: str, rank: int) -> list[Flag]:
        """The opening flags of the open episodes of one rank, marked RESTATED."""
        return [
            dataclasses.replace(flag, labels={**flag.labels, RESTATED: "1"})
            for key, flag in self._open.items()
            if isinstance(key, tuple) and key[:2] == (run, rank)
        ]

    def open_of(self, run: str, rank: int) -> list[Hashable]:
        """The keys of the open episodes of one rank (keys starting with (run, rank))."""
        return [k for k in self._open if isinstance(k, tuple) and k[:2] == (run, rank)]

    def is_open(self, key: Hashable) -> bool:
        """True while the episode of `key` is open."""
        return bool(self._open) and key in self._open

    def close(
        self,
        key: Hashable,
        step: int | None,
        t: float,
        summary: str,
        evidence: dict[str, float | None],
    ) -> Flag:
        """End the open episode of `key` and return its cleared flag (see `cleared_flag`).
        Check `is_open` first, so the summary is only built for an episode that ends."""
        return cleared_flag(self._open.pop(key), step, t, summary, evidence)

    def __len__(self) -> int:
        return len(self._open)


def fingerprint(
    rule: str,
    run: str,
    rank: int | None,
    metric: str | None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Stable alert id of (rule, run, rank, metric, labels): receivers dedup on it."""
    extra = "\x1f".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))
    raw = f"{rule}\x1f{run}\x1f{rank}\x1f{metric}\x1f{extra}".encode()
    return hashlib.sha1(raw).hexdigest()[:16]


def flag_to_alert(flag: Flag, raised_at: float) -> Alert:
    """The alert message of a detector flag, its finding (the only Flag -> Alert mapping;
    nothing maps back: incidents and the alert engine take the finding as it is)."""
    return Alert(
        fingerprint=fingerprint(flag.detector, flag.run, flag.rank, flag.metric),
        rule=flag.detector,
        status="resolved" if flag.cleared else "firing",
        severity=flag.severity,
        run=flag.run,
        rank=flag.rank,
        metric=flag.metric,
        step=flag.step,
        t=flag.t,
        raised_at=raised_at,
        summary=flag.summary,
        evidence=flag.evidence,
        affected=list(flag.affected),
        description=flag.description,
        labels=dict(flag.labels),
    )
