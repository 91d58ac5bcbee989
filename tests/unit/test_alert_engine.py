"""The alert engine: rules over detector findings and window stats, silences, inhibition."""

from __future__ import annotations

from processors.alerting.engine import AlertEngine
from processors.alerting.rules import parse_rules
from processors.alerting.silences import Silence
from processors.flags import Flag, flag_to_alert
from stepstream.contract import Alert, WindowStats, WindowUpdate

NOW = 1000.0


def engine(rules_yaml: str = "rules: []\n") -> AlertEngine:
    return AlertEngine(parse_rules(rules_yaml), clock=lambda: NOW)


def finding(detector: str, rank: int, active: bool, step: int, **kw: object) -> Alert:
    """A detector's finding as the stages hand it to the engine (`flag_to_alert`)."""
    return flag_to_alert(
        Flag(
            detector=detector,
            run="r",
            rank=rank,
            metric=kw.pop("metric", "loss"),  # type: ignore[arg-type]
            step=step,
            t=float(step),
            cleared=not active,
            severity="critical",
            summary=f"{detector} on {rank}",
            evidence={"value": 1.0},
        ),
        NOW,
    )


def update(
    rank: int, step: int, mean: float, window: str = "50steps", metric: str = "loss"
) -> WindowUpdate:
    return WindowUpdate(
        run="r",
        rank=rank,
        step=step,
        t=float(step),
        windows={window: {metric: WindowStats(count=1, mean=mean, max=mean)}},
    )


def test_builtin_rule_fires_with_the_detector_and_resolves_when_it_clears() -> None:
    e = engine()
    fired = e.on_finding(finding("nonfinite", 1, True, 40))
    assert [(a.rule, a.status, a.rank, a.step, a.severity) for a in fired] == [
        ("nonfinite", "firing", 1, 40, "critical")
    ]
    assert e.on_finding(finding("nonfinite", 1, True, 41)) == []
    resolved = e.on_finding(finding("nonfinite", 1, False, 45))
    assert [(a.status, a.fingerprint) for a in resolved] == [("resolved", fired[0].fingerprint)]
    assert e.firing() == []


def test_condition_rule_with_for_in_steps_and_template() -> None:
    e = engine("""rules:
  - name: loss-high
    condition: mean(loss, 50 steps) > 4
    for: 2 steps
    severity: warning
    labels: {team: ml}
    summary: "mean loss {{ value }} > {{ threshold }} on rank {{ rank }}"
    action: scale_lr:0.5
""")
    pending = e.on_window_update(update(0, 10, 5.0))
    assert [(a.status, a.step, a.active_since, a.action) for a in pending] == [
        ("pending", 10, 10.0, None)  # shown, but its action waits for firing
    ]
    assert e.on_window_update(update(0, 11, 5.0)) == []  # still pending: no new transition
    fired = e.on_window_update(update(0, 12, 5.5))
    assert len(fired) == 1
    alert = fired[0]
    assert (alert.status, alert.summary, alert.action, alert.labels) == (
        "firing",
        "mean loss 5.5 > 4 on rank 0",
        "scale_lr:0.5",
        {"team": "ml"},
    )
    assert alert.evidence == {"value": 5.5, "threshold": 4.0}
    assert (alert.fingerprint, alert.active_since) == (pending[0].fingerprint, 10.0)
    resolved = e.on_window_update(update(0, 13, 1.0))
    assert [(a.status, a.action) for a in resolved] == [("resolved", None)]


def test_cross_rank_condition_names_the_slow_rank() -> None:
    e = engine("""rules:
  - name: slow-rank
    condition: max(step_time, 60s) > 1.5 * median_across_ranks(step_time)
""")
    out = []
    for rank, p95 in [(0, 1.0), (1, 1.1), (2, 0.9), (3, 3.0)]:
        out += e.on_window_update(update(rank, 5, p95, window="60s", metric="step_time"))
    assert [(a.rule, a.rank) for a in out] == [("slow-rank", 3)]
    assert out[0].evidence["threshold"] == 1.5 * 1.05


def test_selector_limits_rules_to_matching_runs() -> None:
    e = engine("""rules:
  - name: prod-only
    condition: mean(loss, 50 steps) > 1
    selector: {run: "prod-*"}
""")
    assert e.on_window_update(update(0, 1, 9.0)) == []  # run "r" does not match


def test_silence_marks_transitions_suppressed() -> None:
    e = engine()
    e.silences = [Silence(id="s1", matchers={"rule": "nonfinite"}, starts_at=0, ends_at=NOW + 1)]
    fired = e.on_finding(finding("nonfinite", 0, True, 1))
    assert fired[0].suppressed_by == "silence:s1"
    e.silences = [Silence(id="s1", matchers={"rule": "nonfinite"}, starts_at=0, ends_at=NOW)]
    assert e.on_finding(finding("nonfinite", 1, True, 1))[0].suppressed_by is None


def test_dead_rank_inhibits_its_straggler_alert() -> None:
    e = engine()
    e.on_finding(finding("dead_rank", 2, True, 10, metric=None))
    straggler = e.on_finding(finding("straggler", 2, True, 11, metric="data_time"))
    assert straggler[0].suppressed_by == "inhibited:dead_rank"
    other = e.on_finding(finding("straggler", 1, True, 11, metric="data_time"))
    assert other[0].suppressed_by is None


def test_user_rule_overrides_builtin_for_a_detector() -> None:
    e = engine("""rules:
  - name: nan-page
    detector: nonfinite
    severity: critical
    selector: {metric: loss}
""")
    assert [a.rule for a in e.on_finding(finding("nonfinite", 0, True, 1))] == ["nan-page"]
    assert e.on_finding(finding("nonfinite", 0, True, 1, metric="lr")) == []


def test_hot_reload_keeps_state_of_kept_rules() -> None:
    text = "rules:\n  - name: a\n    condition: mean(loss, 50 steps) > 1\n"
    e = engine(text)
    e.on_window_update(update(0, 1, 5.0))
    e.set_rules(parse_rules(text + "  - name: b\n    condition: max(loss, 50 steps) > 100\n"))
    assert e.on_window_update(update(0, 2, 5.0)) == []  # still firing, not re-fired
    assert [a.status for a in e.on_window_update(update(0, 3, 0.0))] == ["resolved"]


def test_nonfinite_alert_resolves_when_the_series_is_finite_again() -> None:
    from processors.series_stage import SeriesStage
    from stepstream.contract import Batch, Record

    # The stage's clock is near the records' event times (older ones are past_time).
    stage = SeriesStage([5], [3.0], clock=lambda: 110.0, stats_interval_s=0)
    e = engine()
    transitions = []
    for step, loss in enumerate([1.0, float("nan"), float("nan"), 0.5]):
        record = Record(seq=step, t=100.0 + step, step=step, values={"loss": loss})
        result = stage.process_many([Batch(run="r", rank=1, incarnation="i", records=[record])])
        for flag in result.alerts:
            transitions += e.on_finding(flag)
    assert [(a.status, a.step) for a in transitions] == [("firing", 1), ("resolved", 3)]
    assert transitions[0].fingerprint == transitions[1].fingerprint
    assert e.firing() == []


def test_detector_alert_without_new_evidence_resolves_after_the_timeout() -> None:
    now = [1000.0]
    e = AlertEngine(parse_rules("rules: []\n"), clock=lambda: now[0])
    e.on_finding(finding("spike", 0, True, 5))
    now[0] += 299.0
    assert e.resolve_quiet(300.0) == []
    e.on_finding(finding("spike", 0, True, 9))  # fresh evidence restarts the quiet period
    now[0] += 299.0
    assert e.resolve_quiet(300.0) == []
    now[0] += 2.0
    resolved = e.resolve_quiet(300.0)
    assert [(a.rule, a.status, a.rank) for a in resolved] == [("spike", "resolved", 0)]
    assert e.firing() == []


def test_a_detectors_cleared_flag_resolves_its_alert_without_the_timeout() -> None:
    from processors.detectors import SpikeDetector

    now = [1000.0]
    e = AlertEngine(parse_rules("rules: []\n"), clock=lambda: now[0])
    detector = SpikeDetector()
    transitions = []
    for step, loss in enumerate([1.0, 1.01, 1.02] * 10 + [9.0, 1.01]):
        for flag in detector.observe("r", 1, "loss", step, 100.0 + step, loss):
            transitions += e.on_finding(flag_to_alert(flag, now[0]))
        now[0] += 0.1  # far less than any resolve timeout
    assert [(a.rule, a.status, a.rank, a.metric, a.step) for a in transitions] == [
        ("spike", "firing", 1, "loss", 30),
        ("spike", "resolved", 1, "loss", 31),
    ]
    firing, resolved = transitions
    assert resolved.fingerprint == firing.fingerprint
    assert resolved.raised_at - firing.raised_at < 0.2
    # The resolved notice carries the detector's account of the clearing point.
    assert resolved.summary.startswith("loss spike on rank 1 cleared at step 31")
    assert resolved.evidence["value"] == 1.01 and resolved.action is None
    assert e.firing() == [] and e.resolve_quiet(0.0) == []


def test_detector_rule_for_and_keep_firing_for_elapse_between_findings() -> None:
    now = [1000.0]
    e = AlertEngine(
        parse_rules("""rules:
  - name: slow-spike
    detector: spike
    for: 10s
    keep_firing_for: 30s
"""),
        clock=lambda: now[0],
    )
    pending = e.on_finding(finding("spike", 0, True, 5))  # pending: for 10 s
    assert [(a.rule, a.status, a.rank) for a in pending] == [("slow-spike", "pending", 0)]
    assert e.firing() == [] and e.pending() == pending
    now[0] += 9.0
    assert e.tick() == []
    now[0] += 1.5
    fired = e.tick()  # no new finding: the level held for 10 s
    assert [(a.rule, a.status, a.rank) for a in fired] == [("slow-spike", "firing", 0)]
    assert e.on_finding(finding("spike", 0, False, 20)) == []  # cleared: kept firing 30 s
    now[0] += 29.0
    assert e.tick() == []
    now[0] += 2.0
    resolved = e.tick()
    assert [(a.status, a.fingerprint) for a in resolved] == [("resolved", fired[0].fingerprint)]
    assert e.tick() == [] and e.firing() == []


def test_a_detector_start_cleared_within_for_never_fires_and_is_forgotten() -> None:
    now = [1000.0]
    e = AlertEngine(
        parse_rules("rules:\n  - name: s\n    detector: spike\n    for: 10s\n"),
        clock=lambda: now[0],
    )
    pending = e.on_finding(finding("spike", 0, True, 5))
    assert [a.status for a in pending] == ["pending"]
    now[0] += 5.0
    withdrawn = e.on_finding(finding("spike", 0, False, 10))
    # Withdrawn, not resolved: it never fired, and must leave the stored active set.
    assert [(a.status, a.fingerprint, a.step, a.active_since) for a in withdrawn] == [
        ("withdrawn", pending[0].fingerprint, 10, None)
    ]
    now[0] += 60.0
    assert e.tick() == [] and e.resolve_quiet(0.0) == []
    assert e._tracked == {} and e.pending() == []  # nothing kept of an unfired episode


def test_restored_firing_alert_is_not_paged_again_and_resolves_on_clear() -> None:
    before = engine()
    (fired,) = before.on_finding(finding("spike", 0, True, 5))
    after = engine()  # a restarted worker
    assert after.restore([fired, fired.model_copy(update={"status": "resolved"})]) == 1
    assert after.on_finding(finding("spike", 0, True, 9)) == []  # still firing: no new page
    (resolved,) = after.on_finding(finding("spike", 0, False, 12))
    assert (resolved.status, resolved.fingerprint, resolved.step) == (
        "resolved",
        fired.fingerprint,
        12,
    )
    assert after.restore([fired]) == 1 and after.restore([fired]) == 0  # once per fingerprint


def test_restored_detector_alert_without_evidence_resolves_on_the_timeout() -> None:
    now = [1000.0]
    (fired,) = engine().on_finding(finding("dead_rank", 1, True, 5, metric=None))
    after = AlertEngine(parse_rules("rules: []\n"), clock=lambda: now[0])
    after.restore([fired])
    now[0] += 301.0
    (resolved,) = after.resolve_quiet(300.0)
    assert (resolved.rule, resolved.status, resolved.rank) == ("dead_rank", "resolved", 1)
    assert resolved.fingerprint == fired.fingerprint


def test_restored_condition_alert_resolves_when_the_condition_no_longer_holds() -> None:
    text = "rules:\n  - name: high\n    condition: mean(loss, 50 steps) > 1\n"
    (fired,) = engine(text).on_window_update(update(0, 1, 5.0))
    after = engine(text)
    after.restore([fired])
    assert after.on_window_update(update(0, 2, 5.0)) == []
    (resolved,) = after.on_window_update(update(0, 3, 0.5))
    assert (resolved.rule, resolved.status, resolved.fingerprint) == (
        "high",
        "resolved",
        fired.fingerprint,
    )


def test_a_holding_detector_alert_stays_firing_while_its_run_reports() -> None:
    now = [1000.0]
    e = AlertEngine(parse_rules("rules: []\n"), clock=lambda: now[0])
    (fired,) = e.on_finding(finding("dead_rank", 1, True, 5, metric=None))
    for _ in range(10):  # the other ranks go on for 10 minutes
        now[0] += 60.0
        e.on_window_update(update(0, 100, 1.0))
        assert e.resolve_quiet(300.0) == []
    assert [a.fingerprint for a in e.firing()] == [fired.fingerprint]
    now[0] += 299.0  # then the whole run falls silent
    assert e.resolve_quiet(300.0) == []
    now[0] += 2.0
    (resolved,) = e.resolve_quiet(300.0)
    assert (resolved.status, resolved.fingerprint) == ("resolved", fired.fingerprint)
    assert resolved.summary.endswith("(run r silent for 300s)")


def test_an_incidents_series_reach_the_alert() -> None:
    e = engine()
    opened = Flag(
        detector="nonfinite",
        run="r",
        rank=1,
        metric="loss",
        step=40,
        t=40.0,
        severity="critical",
        summary="loss is NaN",
        affected=("rank 1: loss",),
    )
    (fired,) = e.on_finding(flag_to_alert(opened, NOW))
    assert fired.affected == ["rank 1: loss"]
    ended = Flag(
        detector="nonfinite",
        run="r",
        rank=1,
        metric="loss",
        step=60,
        t=60.0,
        cleared=True,
        severity="critical",
        summary="cleared",
        affected=("rank 1: loss", "rank 0: loss"),
    )
    (resolved,) = e.on_finding(flag_to_alert(ended, NOW))
    assert resolved.status == "resolved" and resolved.affected == ["rank 1: loss", "rank 0: loss"]


def test_a_taken_over_alert_not_reasserted_resolves_after_the_window_once_its_run_reports() -> None:
    now = [1000.0]
    (fired,) = engine().on_finding(finding("spike", 0, True, 5))
    after = AlertEngine(parse_rules("rules: []\n"), clock=lambda: now[0])
    assert after.restore([fired], reassert_s=10.0) == 1
    now[0] += 30.0
    assert after.resolve_unasserted() == []  # its run silent since: the timeout's to judge
    after.note_activity(fired.run)
    now[0] += 1.0
    (resolved,) = after.resolve_unasserted()
    assert (resolved.status, resolved.fingerprint) == ("resolved", fired.fingerprint)
    assert "not re-asserted" in resolved.summary
    assert after.resolve_unasserted() == [] and after.resolve_quiet(300.0) == []


def test_a_taken_over_alert_its_detector_reasserts_stays_firing_without_a_page() -> None:
    now = [1000.0]
    (fired,) = engine().on_finding(finding("spike", 0, True, 5))
    after = AlertEngine(parse_rules("rules: []\n"), clock=lambda: now[0])
    after.restore([fired], reassert_s=10.0)
    now[0] += 2.0
    after.note_activity(fired.run)
    assert after.on_finding(finding("spike", 0, True, 9)) == []  # re-asserted: no new page
    now[0] += 60.0
    assert after.resolve_unasserted() == []


def test_a_taken_over_alert_of_a_slow_detector_waits_for_the_resolve_timeout() -> None:
    now = [1000.0]
    (fired,) = engine().on_finding(finding("memory_leak", 0, True, 5, metric=None))
    after = AlertEngine(parse_rules("rules: []\n"), clock=lambda: now[0])
    after.restore([fired], reassert_s=10.0)
    now[0] += 60.0
    after.note_activity(fired.run)
    assert after.resolve_unasserted() == []  # a leak takes 40 s of samples to re-learn


def test_an_alert_held_before_a_rebalance_is_restored_without_a_reassert_window() -> None:
    # A stage-2 finding (a dead rank): its run stayed on this worker, its detector's
    # episode with it, and that episode will not repeat its start.
    now = [1000.0]
    e = AlertEngine(parse_rules("rules: []\n"), clock=lambda: now[0])
    (fired,) = e.on_finding(finding("dead_rank", 1, True, 5, metric=None))
    e.forget_all()  # a rebalance
    assert e.restore([fired], reassert_s=10.0) == 1
    now[0] += 60.0
    e.note_activity(fired.run)
    assert e.resolve_unasserted() == []
    (resolved,) = e.on_finding(finding("dead_rank", 1, False, 12, metric=None))
    assert resolved.status == "resolved"


FOR_3_STEPS = """rules:
  - name: loss-high
    condition: mean(loss, 50 steps) > 4
    for: 3 steps
"""


def test_a_pending_condition_that_stops_is_withdrawn_not_resolved() -> None:
    e = engine(FOR_3_STEPS)
    (pending,) = e.on_window_update(update(0, 10, 5.0))
    assert (pending.status, pending.active_since) == ("pending", 10.0)
    assert e.on_window_update(update(0, 11, 5.0)) == []
    (withdrawn,) = e.on_window_update(update(0, 12, 1.0))  # stops before its 3 steps
    assert (withdrawn.status, withdrawn.fingerprint, withdrawn.step) == (
        "withdrawn",
        pending.fingerprint,
        12,
    )
    assert withdrawn.action is None and e.pending() == [] and e.firing() == []
    # A new episode pends from its own start: `for` counts afresh.
    (again,) = e.on_window_update(update(0, 20, 5.0))
    assert (again.status, again.active_since) == ("pending", 20.0)
    assert e.on_window_update(update(0, 22, 5.0)) == []
    assert [a.status for a in e.on_window_update(update(0, 23, 5.0))] == ["firing"]


def test_a_pending_alert_inhibits_nothing() -> None:
    e = engine("rules:\n  - name: dead_rank\n    detector: dead_rank\n    for: 30s\n")
    (pending,) = e.on_finding(finding("dead_rank", 2, True, 10, metric=None))
    assert pending.status == "pending"
    straggler = e.on_finding(finding("straggler", 2, True, 11, metric="data_time"))
    # Only a firing dead rank silences its straggler alert (Alertmanager inhibits on firing).
    assert [(a.status, a.suppressed_by) for a in straggler] == [("firing", None)]


def test_a_pending_condition_of_a_silent_run_is_withdrawn_on_the_resolve_timeout() -> None:
    now = [1000.0]
    e = AlertEngine(parse_rules(FOR_3_STEPS), clock=lambda: now[0])
    (pending,) = e.on_window_update(update(0, 10, 5.0))
    now[0] += 299.0
    assert e.resolve_quiet(300.0) == []
    now[0] += 2.0
    (withdrawn,) = e.resolve_quiet(300.0)
    assert (withdrawn.status, withdrawn.fingerprint) == ("withdrawn", pending.fingerprint)
    assert "silent for 300s" in withdrawn.summary and e.pending() == []


def test_a_restored_pending_alert_fires_when_for_elapses_since_its_start() -> None:
    (pending,) = engine(FOR_3_STEPS).on_window_update(update(0, 10, 5.0))
    after = engine(FOR_3_STEPS)  # a restarted worker, reading the active set
    assert after.restore([pending]) == 1 and after.pending() == [pending]
    assert after.on_window_update(update(0, 12, 5.0)) == []  # no second pending transition
    (fired,) = after.on_window_update(update(0, 13, 5.0))  # 3 steps after step 10
    assert (fired.status, fired.fingerprint, fired.active_since) == (
        "firing",
        pending.fingerprint,
        10.0,
    )


def test_removing_a_rule_withdraws_its_pending_alerts() -> None:
    e = engine(FOR_3_STEPS)
    (pending,) = e.on_window_update(update(0, 10, 5.0))
    kept = e.set_rules(parse_rules(FOR_3_STEPS))  # reloaded unchanged: still pending
    assert kept == [] and e.pending() == [pending]
    (withdrawn,) = e.set_rules(parse_rules("rules: []\n"))
    assert (withdrawn.status, withdrawn.fingerprint) == ("withdrawn", pending.fingerprint)
    assert "rule was removed" in withdrawn.summary and e.pending() == []


def test_a_stage_1_finding_held_before_a_rebalance_still_needs_re_asserting() -> None:
    # Its run's summaries stayed here, its rank's telemetry may have moved: the detector
    # that owed the clear may be gone.
    now = [1000.0]
    e = AlertEngine(parse_rules("rules: []\n"), clock=lambda: now[0])
    (fired,) = e.on_finding(finding("nonfinite", 0, True, 5))
    e.forget_all()
    e.restore([fired], reassert_s=10.0)
    now[0] += 11.0
    e.note_activity(fired.run)
    (resolved,) = e.resolve_unasserted()
    assert resolved.status == "resolved" and "not re-asserted" in resolved.summary


def test_a_worker_takes_over_only_the_kind_of_alerts_it_raises_for_a_run() -> None:
    # A run's detector alerts are raised where its summaries are read, its condition-rule
    # alerts where its ranks' window updates are made: two workers, possibly. The one with
    # only window updates of the run must not resolve the dead rank its owner holds.
    text = "rules:\n  - name: high\n    condition: mean(loss, 50 steps) > 1\n"
    now = [1000.0]
    before = AlertEngine(parse_rules(text), clock=lambda: now[0])
    (dead,) = before.on_finding(finding("dead_rank", 1, True, 5, metric=None))
    (high,) = before.on_window_update(update(0, 1, 5.0))
    windows_only = AlertEngine(parse_rules(text), clock=lambda: now[0])
    assert windows_only.restore([dead, high], reassert_s=10.0, detectors=False) == 1
    now[0] += 30.0
    windows_only.on_window_update(update(0, 2, 5.0))  # its run reports: no re-assert due
    now[0] += 1.0
    assert windows_only.resolve_unasserted() == []
    assert [a.rule for a in windows_only.firing()] == ["high"]
    summaries_owner = AlertEngine(parse_rules(text), clock=lambda: now[0])
    assert summaries_owner.restore([dead, high], reassert_s=10.0, detectors=True) == 1
    assert [a.rule for a in summaries_owner.firing()] == ["dead_rank"]
