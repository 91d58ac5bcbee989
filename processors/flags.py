"""Flags, their episodes, and the one place a flag becomes an alert message.

A detector reports a condition as a Flag when an episode starts; `Episodes` keeps which
(detector, run, rank, metric) conditions are open so a condition that holds for many
points is reported once and re-arms when it clears. The alerting lifecycle (pending,
firing, resolved) is built later on top of `flag_to_alert`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

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


def evidence(
    value: float | None,
    baseline: float | None,
    threshold: float | None,
    window: float | None,
    **extra: float | None,
) -> dict[str, float | None]:
    """The evidence mapping every flag carries."""
    return {"value": value, "baseline": baseline, "threshold": threshold, "window": window, **extra}


class Episodes:
    """Open episodes by key: `start` is True only for the first point of an episode."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: set[Hashable] = set()

    def start(self, key: Hashable) -> bool:
        """Mark `key` open; True if it was closed (a new episode begins)."""
        if key in self._open:
            return False
        self._open.add(key)
        return True

    def begins(self, key: Hashable, holds: bool) -> bool:
        """Track whether the condition of `key` holds; True only when an episode starts
        now (it holds and did not before). A condition that stops holding re-arms."""
        if not holds:
            self.end(key)
            return False
        return self.start(key)

    def end(self, key: Hashable) -> None:
        """Close the episode of `key`, if open; the next `start` reports again."""
        if self._open:
            self._open.discard(key)

    def is_open(self, key: Hashable) -> bool:
        """True while the episode of `key` is open."""
        return key in self._open

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
    """The alert message of a detector flag (the only Flag -> Alert mapping)."""
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
    )
