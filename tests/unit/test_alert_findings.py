"""The alert engine takes a detector's finding as the stages raise it (an `Alert`, see
`flag_to_alert`) with no conversion between: the transitions of a scenario covering built-in
and user detector rules (pending, `for`, `keep_firing_for`), inhibition, labels, incidents'
series, the resolve timeout and a take-over (`restore` with `detectors`,
`resolve_unasserted`) are the ones recorded from the engine before it took `Alert`s (it took
a `Signal` copied field by field from the finding, commit abc46aa)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from processors.alerting.engine import AlertEngine
from processors.alerting.rules import parse_rules
from processors.flags import Flag, flag_to_alert
from processors.run_stage import RunStage
from processors.series_stage import SeriesStage
from stepstream.contract import Batch, Record, RecordKind

#: What the scenarios below gave at commit abc46aa, feeding the engine
#: `on_signal(signal_of(finding))` (and stage 2 converting stage 1's findings to flags).
RECORDED: dict[str, Any] = json.loads(
    (Path(__file__).parent / "alert_findings_recorded.json").read_text()
)


def text(alert: Any) -> str:
    """An alert's JSON form, compared as text: a NaN value equals itself there."""
    return json.dumps(alert, sort_keys=True)


RULES = """rules:
  - name: slow-spike
    detector: spike
    for: 10s
    keep_firing_for: 30s
    labels:
      team: ml
"""


def run_scenario() -> dict[str, Any]:
    """Findings straight into the engine: built-in and user rules, inhibition, take-over."""
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


def run_chain() -> dict[str, Any]:
    """NaN spreading through ranks and layers twice, a rank going silent and back: stage 1,
    stage 2 (incidents, held 2 s) and the engine."""
    clock = [1000.0]
    stage1 = SeriesStage([50], [10.0], clock=lambda: clock[0], crossrank_metrics=["loss"])
    stage2 = RunStage(clock=lambda: clock[0], incident_hold_s=2.0, heartbeat_interval_s=0.5)
    engine = AlertEngine(parse_rules("rules: []\n"), clock=lambda: clock[0])
    layers = [f"grad/norm/layer{i}" for i in range(6)]
    raised: list[Any] = []
    transitions: list[Any] = []

    def raise_(alerts: list[Any]) -> None:
        raised.extend(alerts)
        for a in alerts:
            transitions.extend(engine.on_finding(a))

    for step in range(120):
        clock[0] = 1000.0 + step * 0.25
        for rank in range(3):
            if rank == 2 and 80 <= step < 100:
                continue  # silent: dead, then back
            broken = (
                (rank == 1 and 40 <= step < 60)
                or 41 <= step < 60
                or (rank == 0 and 70 <= step < 72)
            )
            value = math.nan if broken else 1.0 / (step + 1)
            values = {"loss": value, "grad/global_norm": value, **dict.fromkeys(layers, value)}
            batch = Batch(
                run="r",
                rank=rank,
                world=3,
                incarnation=f"i{rank}",
                records=[
                    Record(
                        seq=step, t=1000.0 + step, step=step, kind=RecordKind.TRAIN, values=values
                    )
                ],
            )
            for summary in stage1.process(batch).summaries:
                raise_(stage2.process(summary, now=clock[0]).alerts)
        raise_(stage2.tick(clock[0] + 0.1))
        if step % 10 == 0:
            raise_(stage2.flush_steps(clock[0]).alerts)
    return {
        "raised": [a.model_dump(mode="json") for a in raised],
        "transitions": [a.model_dump(mode="json") for a in transitions],
    }


def test_the_engine_takes_findings_as_alerts_with_the_recorded_transitions() -> None:
    got = run_scenario()
    want = RECORDED["engine"]
    assert got["taken"] == want["taken"]
    for have, recorded in zip(got["transitions"], want["transitions"], strict=True):
        assert text(have) == text(recorded)
    assert text(got["after"]) == text(want["after"])


def test_stage_1_findings_reach_incidents_and_the_engine_as_recorded() -> None:
    got = run_chain()
    want = RECORDED["chain"]
    for have, recorded in zip(got["raised"], want["raised"], strict=True):
        assert text(have) == text(recorded)  # stage 2's alerts: incidents over stage 1's findings
    for have, recorded in zip(got["transitions"], want["transitions"], strict=True):
        assert text(have) == text(recorded)
