"""Incidents: one alert per run and detector for a fault that touches many series."""

from __future__ import annotations

import math

from processors.flags import Flag, flag_to_alert
from processors.incidents import Incidents
from processors.run_stage import RunStage
from processors.series_stage import SeriesStage
from stepstream.contract import Alert, Batch, Record, RecordKind


def flag(
    rank: int,
    metric: str,
    step: int,
    cleared: bool = False,
    detector: str = "nonfinite",
    labels: dict[str, str] | None = None,
) -> Alert:
    """A detector's finding as incidents get it: its flag as an alert (`flag_to_alert`)."""
    return flag_to_alert(
        Flag(
            detector=detector,
            run="r",
            rank=rank,
            metric=metric,
            step=step,
            t=float(step),
            severity="critical",
            summary=f"{metric} on rank {rank}",
            evidence={"value": None},
            cleared=cleared,
            labels=labels or {},
        ),
        0.0,
    )


def test_one_incident_per_run_and_detector_open_until_its_last_series_clears() -> None:
    incidents = Incidents()
    opened = incidents.apply(flag(1, "loss", 40))
    assert opened is not None and opened.affected == ["rank 1: loss"]
    assert opened.evidence["first_rank"] == 1.0 and opened.evidence["first_step"] == 40.0
    for rank in range(3):
        for layer in range(10):
            assert incidents.apply(flag(rank, f"grad/norm/l{layer}", 41)) is None
    assert incidents.apply(flag(0, "loss", 41)) is None
    other = incidents.apply(flag(2, "loss", 41, detector="spike"))  # another detector
    assert other is not None and other.rule == "spike"
    assert len(incidents.affected("r", "nonfinite")) == 32
    # Every gradient series clears; the losses are still NaN: the incident goes on.
    for rank in range(3):
        for layer in range(10):
            assert incidents.apply(flag(rank, f"grad/norm/l{layer}", 50, cleared=True)) is None
    assert incidents.apply(flag(1, "loss", 60, cleared=True)) is None
    ended = incidents.apply(flag(0, "loss", 61, cleared=True))
    assert ended is not None and ended.status == "resolved"
    # It ends the alert the opening raised: same rank and metric (so the fingerprint).
    assert (ended.rank, ended.metric, ended.step) == (1, "loss", 61)
    assert ended.evidence["affected_series"] == 32.0
    # A new fault later is a new incident.
    again = incidents.apply(flag(2, "loss", 90))
    assert again is not None and again.status == "firing"


def test_a_cleared_flag_with_no_incident_passes_through() -> None:
    assert Incidents().apply(flag(0, "loss", 5, cleared=True)) is not None


def batch(rank: int, step: int, values: dict[str, float]) -> Batch:
    return Batch(
        run="r",
        rank=rank,
        world=3,
        incarnation=f"i{rank}",
        records=[
            Record(seq=step, t=1000.0 + step, step=step, kind=RecordKind.TRAIN, values=values)
        ],
    )


def test_a_nan_spreading_to_every_rank_and_layer_is_one_alert_per_detector() -> None:
    stage1 = SeriesStage([50], [10.0], clock=lambda: 1000.0, crossrank_metrics=["loss"])
    stage2 = RunStage(clock=lambda: 1000.0)
    layers = [f"grad/norm/layer{i}" for i in range(12)]
    alerts = []
    for step in range(60):
        for rank in range(3):
            # rank 1's loss goes NaN at step 40; the all-reduce spreads it at step 41
            broken = (rank == 1 and step >= 40) or step >= 41
            value = math.nan if broken else 1.0 / (step + 1)
            values = {"loss": value, "grad/global_norm": value, **dict.fromkeys(layers, value)}
            for summary in stage1.process(batch(rank, step, values)).summaries:
                alerts += stage2.process(summary, now=float(step)).alerts
        alerts += stage2.tick(float(step) + 0.5)
    firing = [(a.rule, a.rank, a.metric, a.step) for a in alerts if a.status == "firing"]
    assert firing == [("nonfinite", 1, "loss", 40), ("nonfinite_origin", 1, "loss", 40)]
    nonfinite = next(a for a in alerts if a.rule == "nonfinite")
    assert len(nonfinite.affected) == 1  # only rank 1's loss when it opened
    # Still NaN at step 59 on every rank: nothing resolved.
    assert [a for a in alerts if a.status == "resolved"] == []


def test_a_flapping_fault_within_the_hold_is_one_incident() -> None:
    incidents = Incidents(hold_s=5.0)
    assert incidents.apply(flag(1, "loss", 40), now=100.0) is not None
    assert incidents.apply(flag(1, "loss", 41, cleared=True), now=100.2) is None
    assert incidents.tick(103.0) == []
    # spikes again 3 s after clearing: the same incident, no new page
    assert incidents.apply(flag(1, "loss", 55), now=103.2) is None
    assert incidents.apply(flag(1, "loss", 56, cleared=True), now=103.4) is None
    assert incidents.tick(108.3) == []
    (ended,) = incidents.tick(108.4)
    assert ended.status == "resolved" and (ended.rank, ended.step) == (1, 56)
    assert incidents.apply(flag(1, "loss", 90), now=120.0) is not None  # a new incident


def test_a_rank_local_series_names_an_incident_opened_in_the_same_step() -> None:
    # watch() reads the gradient norms before the training loop logs its loss: both are
    # NaN at step 200, and the loss is the one that says where it started.
    incidents = Incidents()
    raised = incidents.apply_all(
        [
            flag(0, "grad/norm/fc.weight", 200),
            flag(0, "grad/global_norm", 200),
            flag(0, "loss", 200),
        ]
    )
    assert [(f.metric, f.step) for f in raised] == [("loss", 200)]
    assert "rank 0: loss" in raised[0].affected
    # its end names the same series, so it resolves the same alert
    for metric in ("grad/norm/fc.weight", "grad/global_norm"):
        assert incidents.apply_all([flag(0, metric, 210, cleared=True)]) == []
    (ended,) = incidents.apply_all([flag(0, "loss", 211, cleared=True)])
    assert ended.status == "resolved" and ended.metric == "loss"
    # a later step does not rename what was already raised
    later = Incidents()
    first = later.apply_all([flag(0, "grad/global_norm", 5)])
    assert first[0].metric == "grad/global_norm"
    assert later.apply_all([flag(0, "loss", 6)]) == []


def test_an_open_series_flagged_again_or_restated_makes_the_incident_heard_again() -> None:

    from processors.flags import RESTATED

    inc = Incidents()
    opening = inc.apply(flag(0, "loss", 5))
    assert opening is not None and inc.apply(flag(1, "loss", 5)) is None  # joins quietly
    # Rank 0's detector restarted cold (its partition moved) and starts its episode again:
    assert inc.apply(flag(0, "loss", 9)) == opening
    restated = flag(1, "loss", 5, labels={RESTATED: "1"})
    assert inc.apply(restated) == opening
    # A restated flag that opens an incident (a cold stage 2) opens it unmarked.
    fresh = flag(2, "x", 3, detector="spike", labels={RESTATED: "1"})
    raised = inc.apply(fresh)
    assert raised is not None and RESTATED not in raised.labels


def test_a_rebalanced_stage_restates_each_ranks_open_episodes_once() -> None:
    s = SeriesStage(window_steps=[5], window_seconds=[], clock=lambda: 1100.0)
    s.process(batch(0, 1, {"loss": 1.0}))
    opened = s.process(batch(0, 2, {"loss": math.nan}))
    assert [a.rule for a in opened.alerts] == ["nonfinite"]
    s.rebalanced()
    again = s.process(batch(0, 3, {"loss": math.nan}))  # the episode goes on: no new start
    (summary,) = again.summaries
    assert [(a.rule, a.metric, a.status) for a in summary.flags] == [
        ("nonfinite", "loss", "firing")
    ]
    later = s.process(batch(0, 4, {"loss": math.nan}))
    assert later.summaries[0].flags == []  # once per rank and rebalance


def test_end_run_closes_every_open_incident_of_the_run_at_once() -> None:
    incidents = Incidents(hold_s=5.0)
    assert incidents.apply(flag(0, "loss", 3), now=1.0) is not None
    incidents.apply(flag(1, "perf/step_time_s", 3, detector="straggler"), now=1.0)
    cleared = flag(1, "perf/step_time_s", 4, cleared=True, detector="straggler")
    assert incidents.apply(cleared, now=2.0) is None  # held for 5 s
    elsewhere = flag(0, "loss", 3).model_copy(update={"run": "other"})
    incidents.apply(elsewhere, now=1.0)
    ended = incidents.end_run("r", 50.0, "run r finished: every rank closed")
    # The open one ends with the run; the held one with the clear it was holding.
    assert sorted((f.rule, f.status, f.summary) for f in ended) == [
        ("nonfinite", "resolved", "run r finished: every rank closed"),
        ("straggler", "resolved", "perf/step_time_s on rank 1"),
    ]
    assert incidents.affected("r", "nonfinite") == () and len(incidents) == 1
    assert incidents.end_run("r", 60.0, "again") == []
