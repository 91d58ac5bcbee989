"""The label join of one prediction: what is kept until its outcome, and what an outcome
does when it comes.

A prediction leaves a compact pending record (time, version, segment, score, prediction,
the outcome facets already joined) for the label horizon. An outcome then is:
``joined`` (its facets not joined before are added to the prediction's window), a
``duplicate`` (every facet it carries was joined before: a replayed or repeated outcome
adds nothing, which makes the join idempotent), ``late`` (after the horizon) or an
``orphan`` (no prediction known: never logged, logged under another model, or expired).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import orjson

#: Facets of an outcome and their one-letter codes in the pending record.
FACETS = {"label": "l", "clicked": "c", "converted": "v"}

Verdict = Literal["joined", "duplicate", "late", "orphan"]


@dataclass
class Pending:
    """What is kept of a prediction until its label horizon."""

    t: float
    version: str
    segment: str
    score: float | None
    prediction: float | None
    joined: str = ""
    """Codes of the facets joined so far (``l``, ``c``, ``v``)."""

    def to_bytes(self) -> bytes:
        """Compact JSON as stored."""
        return orjson.dumps(
            {
                "t": self.t,
                "v": self.version,
                "g": self.segment,
                "s": self.score,
                "p": self.prediction,
                "j": self.joined,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Pending:
        """A record stored by `to_bytes`."""
        d = orjson.loads(raw)
        return cls(d["t"], d["v"], d["g"], d["s"], d["p"], d.get("j", ""))


def facets_of(label: float | None, clicked: bool | None, converted: bool | None) -> list[str]:
    """The facets an outcome carries."""
    out = []
    if label is not None:
        out.append("label")
    if clicked is not None:
        out.append("clicked")
    if converted is not None:
        out.append("converted")
    return out


def join(
    pending: Pending | None, facets: list[str], outcome_t: float, horizon_s: float
) -> tuple[Verdict, list[str]]:
    """The verdict on an outcome carrying `facets` at `outcome_t`, and the facets it adds
    (marked joined in `pending`, which the caller stores back)."""
    if pending is None:
        return "orphan", []
    if outcome_t - pending.t > horizon_s:
        return "late", []
    fresh = [f for f in facets if FACETS[f] not in pending.joined]
    if not fresh:
        return "duplicate", []
    pending.joined += "".join(FACETS[f] for f in fresh)
    return "joined", fresh


def pending_day(t: float) -> int:
    """The UTC day (days since the epoch) a prediction's pending record is filed under."""
    return int(t // 86400)


def lookup_days(outcome_t: float, horizon_s: float, now: float) -> list[int]:
    """The days whose pending records an outcome at `outcome_t` may belong to: from the
    horizon before it to the later of it and `now` (a prediction logged after its outcome
    was observed by a skewed clock is still found), newest first."""
    last = pending_day(max(outcome_t, now) + 60)
    first = pending_day(outcome_t - horizon_s - 86400)
    return list(range(last, first - 1, -1))
