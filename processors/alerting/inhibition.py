"""Inhibition: an alert that explains others mutes them while it fires.

A dead rank makes its own straggler and throughput alerts noise; a NaN on a run makes the
loss spikes that follow it noise. Only notifications are muted; the state machine runs on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from processors.alerting.matchers import match_all
from stepstream import vocabulary as vocab


@dataclass(frozen=True, slots=True)
class InhibitRule:
    """While an alert matching `source` fires, alerts matching `target` that agree with it
    on every label in `equal` are muted."""

    source: dict[str, str]
    target: dict[str, str]
    equal: tuple[str, ...]


DEFAULT_INHIBIT_RULES = (
    InhibitRule(
        source={"rule": f"{vocab.DEAD_RANK}|{vocab.HUNG_RANK}"},
        target={"rule": "straggler|fail_slow|throughput*|rank_desync"},
        equal=("run", "rank"),
    ),
    # A lost node explains the dead ranks on it, and the rest of the run waiting for them
    # in the collective (hung, slow, out of step).
    InhibitRule(
        source={"rule": vocab.NODE_LOST},
        target={"rule": vocab.DEAD_RANK},
        equal=("run", vocab.NODE_LABEL),
    ),
    InhibitRule(
        source={"rule": vocab.NODE_LOST},
        target={"rule": f"{vocab.HUNG_RANK}|straggler|fail_slow|throughput*|rank_desync"},
        equal=("run",),
    ),
    InhibitRule(source={"rule": "nonfinite"}, target={"rule": "spike"}, equal=("run",)),
)


def inhibited_by(
    labels: Mapping[str, str],
    firing: Iterable[Mapping[str, str]],
    rules: Iterable[InhibitRule] = DEFAULT_INHIBIT_RULES,
) -> Mapping[str, str] | None:
    """The firing alert (labels) that inhibits `labels`, or None."""
    firing = list(firing)
    for rule in rules:
        if not match_all(rule.target, labels):
            continue
        for source in firing:
            if source is labels or not match_all(rule.source, source):
                continue
            if all(source.get(name) == labels.get(name) for name in rule.equal):
                return source
    return None
