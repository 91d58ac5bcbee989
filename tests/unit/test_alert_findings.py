"""The alert engine takes a detector's finding as the stages raise it (an `Alert`, see
`flag_to_alert`) with no conversion between: the transitions of a scenario covering built-in
and user detector rules (pending, `for`, `keep_firing_for`), inhibition, labels, incidents'
series, the resolve timeout and a take-over (`restore` with `detectors`,
`resolve_unasserted`) are the ones recorded from the engine before it took `Alert`s (it took
a `Signal` copied field by field from the finding, commit abc46aa)."""

from __future__ import annotations

from typing import Any

from processors.alerting.engine import AlertEngine
from processors.alerting.rules import parse_rules
from processors.flags import Flag, flag_to_alert

RULES = """rules:
  - name: slow-spike
    detector: spike
    for: 10s
    keep_firing_for: 30s
    labels:
      team: ml
"""


def run_scenario() -> dict[str, Any]:
    now = [1000.0]
    e = AlertEngine(parse_rules(RULES), clock=lambda: now[0])
    out: list[Any] = []

    def f(
        detector: str, rank: int, metric: str | None, step: int, cleared: bool = False, **kw: Any
    ) -> None:
        flag = Flag(
            detector=detector,
            run="r",
            rank=rank,
            metric=metric,
            step=step,
            t=100.0 + step,
            severity=kw.pop("severity", "critical"),
            summary=f"{detector} {'cleared' if cleared else 'on'} {rank} at {step}",
            evidence={"value": float(step), "baseline": 1.0, "threshold": None, "window": 20.0},
            cleared=cleared,
            **kw,
        )
        out.extend(e.on_finding(flag_to_alert(flag, now[0])))

    f(
        "dead_rank",
        2,
        None,
        10,
        labels={"node": "b"},
        affected=("rank 2",),
        description="stack of 2",
    )
    f("straggler", 2, "data_time", 11, severity="warning")
    f("straggler", 1, "data_time", 11, severity="warning")
    f("nonfinite", 1, "loss", 12, affected=("rank 1: loss", "rank 0: loss"))
    f("nonfinite", 1, "loss", 13)  # still holding: nothing new
    f("spike", 0, "loss", 14)  # pending for 10 s
    now[0] += 9.0
    out.extend(e.tick())
    now[0] += 1.5
    out.extend(e.tick())  # fires
    f("spike", 0, "loss", 20, cleared=True)  # kept firing 30 s
    now[0] += 31.0
    out.extend(e.tick())  # resolves
    f("nonfinite", 1, "loss", 30, cleared=True)
    firing = e.firing()
    # A worker taking the run over restores detector alerts only, re-asserted within 5 s.
    after = AlertEngine(parse_rules(RULES), clock=lambda: now[0])
    taken = after.restore(firing, 5.0, detectors=True)
    none = after.restore(firing, 5.0, detectors=False)
    out_after: list[Any] = []
    after.note_activity("r")
    now[0] += 6.0
    out_after.extend(after.resolve_unasserted())
    now[0] += 400.0
    out.extend(e.resolve_quiet(300.0))
    return {
        "taken": [taken, none],
        "transitions": [a.model_dump(mode="json") for a in out],
        "after": [a.model_dump(mode="json") for a in out_after],
    }


#: Recorded at commit abc46aa: `engine.on_signal(signal_of(finding))` for each finding.
RECORDED: dict[str, Any] = {
    "after": [
        {
            "action": None,
            "active_since": None,
            "affected": ["rank 2"],
            "description": "stack of 2",
            "evidence": {"baseline": 1.0, "threshold": None, "value": 10.0, "window": 20.0},
            "fingerprint": "1eb55ab3593a6a57",
            "labels": {"node": "b"},
            "metric": None,
            "raised_at": 1047.5,
            "rank": 2,
            "rule": "dead_rank",
            "run": "r",
            "severity": "critical",
            "status": "resolved",
            "step": 10,
            "summary": "dead_rank on 2 at 10 (not re-asserted after run r moved to another "
            "worker: its condition is no longer seen)",
            "suppressed_by": None,
            "t": 110.0,
            "v": 1,
        }
    ],
    "taken": [3, 0],
    "transitions": [
        {
            "action": None,
            "active_since": 110.0,
            "affected": ["rank 2"],
            "description": "stack of 2",
            "evidence": {"baseline": 1.0, "threshold": None, "value": 10.0, "window": 20.0},
            "fingerprint": "1eb55ab3593a6a57",
            "labels": {"node": "b"},
            "metric": None,
            "raised_at": 1000.0,
            "rank": 2,
            "rule": "dead_rank",
            "run": "r",
            "severity": "critical",
            "status": "firing",
            "step": 10,
            "summary": "dead_rank on 2 at 10",
            "suppressed_by": None,
            "t": 110.0,
            "v": 1,
        },
        {
            "action": None,
            "active_since": 111.0,
            "affected": [],
            "description": "",
            "evidence": {"baseline": 1.0, "threshold": None, "value": 11.0, "window": 20.0},
            "fingerprint": "8920b7e458f7d3f5",
            "labels": {},
            "metric": "data_time",
            "raised_at": 1000.0,
            "rank": 2,
            "rule": "straggler",
            "run": "r",
            "severity": "warning",
            "status": "firing",
            "step": 11,
            "summary": "straggler on 2 at 11",
            "suppressed_by": "inhibited:dead_rank",
            "t": 111.0,
            "v": 1,
        },
        {
            "action": None,
            "active_since": 111.0,
            "affected": [],
            "description": "",
            "evidence": {"baseline": 1.0, "threshold": None, "value": 11.0, "window": 20.0},
            "fingerprint": "c8f453268a6dad12",
            "labels": {},
            "metric": "data_time",
            "raised_at": 1000.0,
            "rank": 1,
            "rule": "straggler",
            "run": "r",
            "severity": "warning",
            "status": "firing",
            "step": 11,
            "summary": "straggler on 1 at 11",
            "suppressed_by": None,
            "t": 111.0,
            "v": 1,
        },
        {
            "action": None,
            "active_since": 112.0,
            "affected": ["rank 1: loss", "rank 0: loss"],
            "description": "",
            "evidence": {"baseline": 1.0, "threshold": None, "value": 12.0, "window": 20.0},
            "fingerprint": "b6b1e382093a63ef",
            "labels": {},
            "metric": "loss",
            "raised_at": 1000.0,
            "rank": 1,
            "rule": "nonfinite",
            "run": "r",
            "severity": "critical",
            "status": "firing",
            "step": 12,
            "summary": "nonfinite on 1 at 12",
            "suppressed_by": None,
            "t": 112.0,
            "v": 1,
        },
        {
            "action": None,
            "active_since": 114.0,
            "affected": [],
            "description": "",
            "evidence": {"baseline": 1.0, "threshold": None, "value": 14.0, "window": 20.0},
            "fingerprint": "690b82a3631debaf",
            "labels": {"team": "ml"},
            "metric": "loss",
            "raised_at": 1000.0,
            "rank": 0,
            "rule": "slow-spike",
            "run": "r",
            "severity": "warning",
            "status": "pending",
            "step": 14,
            "summary": "spike on 0 at 14",
            "suppressed_by": None,
            "t": 114.0,
            "v": 1,
        },
        {
            "action": None,
            "active_since": 114.0,
            "affected": [],
            "description": "",
            "evidence": {"baseline": 1.0, "threshold": None, "value": 14.0, "window": 20.0},
            "fingerprint": "690b82a3631debaf",
            "labels": {"team": "ml"},
            "metric": "loss",
            "raised_at": 1010.5,
            "rank": 0,
            "rule": "slow-spike",
            "run": "r",
            "severity": "warning",
            "status": "firing",
            "step": None,
            "summary": "spike on 0 at 14",
            "suppressed_by": None,
            "t": 124.5,
            "v": 1,
        },
        {
            "action": None,
            "active_since": None,
            "affected": [],
            "description": "",
            "evidence": {"baseline": 1.0, "threshold": None, "value": 20.0, "window": 20.0},
            "fingerprint": "690b82a3631debaf",
            "labels": {"team": "ml"},
            "metric": "loss",
            "raised_at": 1041.5,
            "rank": 0,
            "rule": "slow-spike",
            "run": "r",
            "severity": "warning",
            "status": "resolved",
            "step": None,
            "summary": "spike cleared 0 at 20",
            "suppressed_by": None,
            "t": 151.0,
            "v": 1,
        },
        {
            "action": None,
            "active_since": None,
            "affected": [],
            "description": "",
            "evidence": {"baseline": 1.0, "threshold": None, "value": 30.0, "window": 20.0},
            "fingerprint": "b6b1e382093a63ef",
            "labels": {},
            "metric": "loss",
            "raised_at": 1041.5,
            "rank": 1,
            "rule": "nonfinite",
            "run": "r",
            "severity": "critical",
            "status": "resolved",
            "step": 30,
            "summary": "nonfinite cleared 1 at 30",
            "suppressed_by": None,
            "t": 130.0,
            "v": 1,
        },
        {
            "action": None,
            "active_since": None,
            "affected": ["rank 2"],
            "description": "stack of 2",
            "evidence": {"baseline": 1.0, "threshold": None, "value": 10.0, "window": 20.0},
            "fingerprint": "1eb55ab3593a6a57",
            "labels": {"node": "b"},
            "metric": None,
            "raised_at": 1447.5,
            "rank": 2,
            "rule": "dead_rank",
            "run": "r",
            "severity": "critical",
            "status": "resolved",
            "step": 10,
            "summary": "dead_rank on 2 at 10 (run r silent for 300s)",
            "suppressed_by": None,
            "t": 110.0,
            "v": 1,
        },
        {
            "action": None,
            "active_since": None,
            "affected": [],
            "description": "",
            "evidence": {"baseline": 1.0, "threshold": None, "value": 11.0, "window": 20.0},
            "fingerprint": "8920b7e458f7d3f5",
            "labels": {},
            "metric": "data_time",
            "raised_at": 1447.5,
            "rank": 2,
            "rule": "straggler",
            "run": "r",
            "severity": "warning",
            "status": "resolved",
            "step": 11,
            "summary": "straggler on 2 at 11 (run r silent for 300s)",
            "suppressed_by": None,
            "t": 111.0,
            "v": 1,
        },
        {
            "action": None,
            "active_since": None,
            "affected": [],
            "description": "",
            "evidence": {"baseline": 1.0, "threshold": None, "value": 11.0, "window": 20.0},
            "fingerprint": "c8f453268a6dad12",
            "labels": {},
            "metric": "data_time",
            "raised_at": 1447.5,
            "rank": 1,
            "rule": "straggler",
            "run": "r",
            "severity": "warning",
            "status": "resolved",
            "step": 11,
            "summary": "straggler on 1 at 11 (run r silent for 300s)",
            "suppressed_by": None,
            "t": 111.0,
            "v": 1,
        },
    ],
}


def test_the_engine_takes_findings_as_alerts_with_the_recorded_transitions() -> None:
    got = run_scenario()
    assert got["taken"] == RECORDED["taken"]
    assert len(got["transitions"]) == len(RECORDED["transitions"])
    for have, want in zip(got["transitions"], RECORDED["transitions"], strict=True):
        assert have == want
    assert got["after"] == RECORDED["after"]
