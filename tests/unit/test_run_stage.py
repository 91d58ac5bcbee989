"""Stage 2 and the cross-rank detectors: per-step stats across ranks, stragglers, desync,
dead and hung ranks, DP mismatch and the origin of a non-finite value."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

from processors.detectors import (
    DesyncDetector,
    DPMismatchDetector,
    Flag,
    LivenessDetector,
    LivenessParams,
    NonFiniteOrigin,
    StragglerDetector,
    StragglerParams,
)
from processors.flags import flag_to_alert
from processors.run_stage import FINISHED_QUIET_S, RunStage, crossrank_stats
from stepstream.contract import Alert, RankSummary, StepPoint


def summary(
    rank: int,
    steps: dict[int, dict[str, float]],
    world: int = 4,
    nonfinite: list[StepPoint] | None = None,
) -> RankSummary:
    return RankSummary(
        run="r",
        rank=rank,
        world=world,
        last_step=max(steps) if steps else None,
        last_t=float(max(steps)) if steps else 0.0,
        records=len(steps),
        steps=[StepPoint(step=s, t=100.0 + s + rank * 1e-3, values=v) for s, v in steps.items()],
        nonfinite=nonfinite or [],
    )


def test_crossrank_stats_match_statistics_module() -> None:
    values = {0: {"loss": 1.0}, 1: {"loss": 3.0}, 2: {"loss": 2.5, "x": math.nan}, 3: {"loss": 0.5}}
    stats = crossrank_stats(values)["loss"]
    data = [1.0, 3.0, 2.5, 0.5]
    assert stats.ranks == 4 and stats.mean == statistics.fmean(data)
    assert stats.std is not None and math.isclose(stats.std, statistics.pstdev(data))
    assert (stats.min, stats.argmin, stats.max, stats.argmax) == (0.5, 3, 3.0, 1)
    assert "x" not in crossrank_stats(values)


def test_steps_finish_when_every_rank_reported_or_the_run_moved_on() -> None:
    stage = RunStage(lag_s=3.0, clock=lambda: 0.0)
    out = []
    for rank in range(3):
        out += stage.process(summary(rank, {0: {"loss": float(rank)}}, world=3), 0.0).crossrank
    # A rank's records of a step may come in two messages: a step is finished once every
    # rank has moved past it.
    assert out == []
    for rank in range(3):
        out += stage.process(summary(rank, {1: {"loss": 1.0}}, world=3), 0.0).crossrank
    assert [(u.step, u.stats["loss"].ranks, u.stats["loss"].mean) for u in out] == [(0, 3, 1.0)]
    # Rank 2 stops at step 1; from there steps finish once they waited 3 s (processor
    # time), however far the others are ahead (ranks in other partitions can be hundreds
    # of fast steps apart on arrival).
    late = []
    for step in range(2, 7):
        for rank in (0, 1):
            at = float(step)  # one step a second
            late += stage.process(summary(rank, {step: {"loss": 1.0}}, world=3), at).crossrank
    assert [(u.step, u.stats["loss"].ranks) for u in late] == [(1, 3), (2, 2), (3, 2)]
    # A rank far behind on arrival is still counted when its data comes within the wait.
    behind = RunStage(lag_s=3.0, clock=lambda: 0.0)
    for step in range(200):
        behind.process(summary(0, {step: {"loss": 1.0}}, world=2), 0.0)
    got = []
    for step in range(200):
        got += behind.process(summary(1, {step: {"loss": 2.0}}, world=2), 0.5).crossrank
    assert len(got) == 199 and all(u.stats["loss"].ranks == 2 for u in got)


def rank_times(rng: random.Random, slow: int | None, ranks: int = 4) -> dict[int, dict[str, float]]:
    out = {}
    for r in range(ranks):
        data = 0.02 + rng.gauss(0, 0.003)
        compute = 0.08 + rng.gauss(0, 0.005)
        if r == slow:
            data += 0.1
        out[r] = {"perf/data_wait_s": data, "perf/forward_s": compute, "perf/step_time_s": 0.2}
    return out


def test_straggler_is_named_and_healthy_ranks_are_not() -> None:
    rng = random.Random(1)
    d = StragglerDetector()
    for step in range(200):
        assert d.observe_step("r", step, float(step), rank_times(rng, None)) == []
    flags = []
    for step in range(200, 230):
        flags += [
            (f.rank, step) for f in d.observe_step("r", step, float(step), rank_times(rng, 2))
        ]
    assert len(flags) == 1 and flags[0][0] == 2
    assert flags[0][1] <= 200 + 10 + 2  # half of the 20-step window, 3 verdicts


def test_straggler_with_two_ranks() -> None:
    rng = random.Random(2)
    d = StragglerDetector()
    flags = []
    for step in range(30):
        flags += d.observe_step("r", step, float(step), rank_times(rng, 1, ranks=2))
    # min_points = 10, then confirm_steps = 3 slow verdicts
    assert [f.rank for f in flags] == [1] and flags[0].step == 11


def lockstep(t: float) -> int:
    return int(t * 500)  # 2 ms steps


def test_desync_stays_quiet_on_fast_lockstep_ranks_reporting_at_different_times() -> None:
    # Two ranks in lockstep at 2 ms a step, each reporting every 0.2 s, half a flush apart:
    # their newest reported steps are 50-100 apart all the time.
    d = DesyncDetector()
    spreads = []
    for i in range(600):
        t = i * 0.1
        rank = i % 2
        assert d.observe("r", rank, lockstep(t), t) is None
        spreads.append(lockstep(t) - lockstep(t - 0.1))
    assert min(spreads) >= 50


def test_desync_names_a_rank_falling_behind_in_time_and_clears() -> None:
    d = DesyncDetector()
    flags = []
    for i in range(1000):
        t = i * 0.1
        fast = min(int(t * 100), 4000)  # rank 0 stops at step 4000 (t = 40)
        slow = int(t * 100) if t < 10 else int(1000 + (t - 10) * 50)  # half speed from t=10
        for rank, step in ((0, fast), (1, slow)):
            flag = d.observe("r", rank, step, t)
            if flag is not None:
                flags.append((round(t, 1), flag))
    assert [(f.rank, f.cleared) for _, f in flags] == [(1, False), (1, True)]
    (t_start, start), (_, end) = flags
    # 50 steps behind from t=11; 5 s behind the lead (lag = (t-10)/2) after t=20
    assert 20.0 < t_start <= 20.3
    assert start.evidence["lag_s"] is not None and start.evidence["lag_s"] > 5.0
    assert start.step is not None and 1500 <= start.step <= 1520
    # rank 1 gets within 50 steps of the stopped lead at step 3950
    assert end.step is not None and 3950 <= end.step <= 3960


def test_dead_and_hung_ranks_and_a_finished_run() -> None:
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=1.0, dead_after=3, hung_after_s=10))
    for now in range(0, 20):
        for rank in range(3):
            if rank == 1 and now > 5:
                continue  # rank 1 dies after t=5
            step = now if rank != 2 or now < 8 else 8  # rank 2 hangs at step 8
            d.seen("r", rank, 3, step, float(now))
        flags = d.tick(float(now) + 0.5)
        for f in flags:
            if f.detector == "dead_rank":
                assert (f.rank, now) == (1, 8)  # silent since 5: 3 s later
                assert f.evidence["threshold"] == 3.0
            else:
                assert (f.detector, f.rank, now) == ("hung_rank", 2, 18)
    # Everyone stops: the run ended, nobody is reported dead.
    d2 = LivenessDetector(LivenessParams(heartbeat_interval_s=1.0))
    for rank in range(2):
        d2.seen("r2", rank, 2, 10, 0.0)
    assert d2.tick(100.0) == []


def dp_step(d: DPMismatchDetector, *args: Any) -> Flag | None:
    """One step of the DP mismatch detector over one replica group: its flag, if any."""
    flags = d.observe_step(*args)
    assert len(flags) <= 1
    return flags[0] if flags else None


def test_dp_mismatch() -> None:
    d = DPMismatchDetector()
    same = {r: {"grad/global_norm": 1.2345678 + r * 1e-9} for r in range(4)}
    assert dp_step(d, "r", 1, 1.0, same) is None
    bad = {**same, 3: {"grad/global_norm": 1.25}}
    flag = dp_step(d, "r", 2, 2.0, bad)
    assert flag is not None and flag.rank == 3 and flag.severity == "critical"
    two = dp_step(
        DPMismatchDetector(),
        "r",
        2,
        2.0,
        {0: {"grad/global_norm": 1.0}, 1: {"grad/global_norm": 1.1}},
    )
    assert two is not None and two.rank is None


def test_dp_mismatch_between_two_ranks_names_the_one_that_left_the_agreed_norms() -> None:
    d = DPMismatchDetector()
    for step, norm in enumerate([1.0, 1.2, 0.9, 1.1, 1.05]):
        assert (
            dp_step(
                d,
                "r",
                step,
                float(step),
                {0: {"grad/global_norm": norm}, 1: {"grad/global_norm": norm}},
            )
            is None
        )
    # rank 0 corrupted after the all-reduce: its norm is 5x; rank 1 is still usual
    flag = dp_step(d, "r", 5, 5.0, {0: {"grad/global_norm": 5.2}, 1: {"grad/global_norm": 0.95}})
    assert flag is not None and flag.rank == 0 and flag.evidence["named_by"] == 2.0
    flag = dp_step(
        DPMismatchDetector(),
        "r",
        5,
        5.0,
        {0: {"grad/global_norm": 0.95}, 1: {"grad/global_norm": 0.1}},
    )
    assert flag is not None and flag.rank is None  # no agreed history: no culprit


def test_nonfinite_origin_names_the_earliest_rank_even_if_it_reports_last() -> None:
    stage = RunStage(clock=lambda: 0.0)
    alerts = []
    nan = math.nan
    # The all-reduce spread rank 1's NaN at step 40 to every rank at step 41.
    for rank in (0, 2, 3):
        point = StepPoint(step=41, t=141.0, values={"loss": nan})
        alerts += stage.process(summary(rank, {41: {"loss": nan}}, nonfinite=[point]), 1.0).alerts
    assert [a.rule for a in alerts if a.rule == "nonfinite_origin"] == []
    point = StepPoint(step=40, t=140.0, values={"loss": nan})
    alerts += stage.process(summary(1, {40: {"loss": nan}, 41: {}}, nonfinite=[point]), 1.2).alerts
    origin = [a for a in alerts if a.rule == "nonfinite_origin"]
    assert [(a.rank, a.step) for a in origin] == [(1, 40)]
    assert origin[0].evidence["ranks_affected"] == 4


def test_nonfinite_origin_settles_on_timeout_without_every_rank() -> None:
    stage = RunStage(clock=lambda: 0.0)
    point = StepPoint(step=7, t=7.0, values={"loss": math.inf})
    assert not stage.process(summary(0, {7: {}}, world=2, nonfinite=[point]), 10.0).alerts
    assert stage.tick(11.0) == []
    assert [(a.rule, a.rank) for a in stage.tick(13.5)] == [("nonfinite_origin", 0)]


def test_nonfinite_origin_clears_once_every_rank_is_past_the_rearm_steps() -> None:
    detector = NonFiniteOrigin()
    verdict = detector.nonfinite("r", 1, 2, "loss", 40, 140.0, math.nan, now=0.0)
    assert verdict is None  # the ranks have not caught up yet
    assert detector.progress("r", 1, 41, now=0.1) is None
    verdict = detector.progress("r", 0, 41, now=0.1)
    assert verdict is not None and (verdict.rank, verdict.step, verdict.cleared) == (1, 40, False)
    assert detector.progress("r", 1, 61, now=1.0, t=161.0) is None  # rank 0 still at 41
    assert detector.progress("r", 0, 60, now=1.0, t=160.0) is None  # 60 is not past 40 + 20
    cleared = detector.progress("r", 0, 61, now=1.1, t=161.0)
    assert cleared is not None and cleared.cleared
    assert (cleared.detector, cleared.rank, cleared.metric, cleared.step, cleared.t) == (
        "nonfinite_origin",
        1,
        "loss",
        61,
        161.0,
    )
    assert detector.progress("r", 1, 90, now=2.0) is None  # reported once


# Episodes end with a cleared flag -------------------------------------------------------


def check_episode(flags: list[Flag], expected: list[tuple[bool, int]], detector: str) -> None:
    """Flags are `expected` (cleared, step) in order and all name one (detector, run, rank,
    metric) and severity, so the cleared flag resolves the very alert the start raised."""
    assert [(f.cleared, f.step) for f in flags] == expected
    assert len({(f.detector, f.run, f.rank, f.metric, f.severity) for f in flags}) == 1
    assert flags[0].detector == detector
    for flag in flags:
        assert {"value", "baseline", "threshold", "window"} <= set(flag.evidence)
        if flag.cleared:
            assert "cleared" in flag.summary or "again" in flag.summary, flag.summary


def fixed_times(slow: int | None) -> dict[int, dict[str, float]]:
    return {
        r: {"perf/data_wait_s": 0.22 if r == slow else 0.02, "perf/forward_s": 0.08}
        for r in range(3)
    }


def test_straggler_starts_clears_and_starts_again() -> None:
    d = StragglerDetector(StragglerParams(window=5, min_points=3))
    flags: list[Flag] = []
    for step in range(20):
        slow = 1 if 5 <= step < 10 or step >= 15 else None
        flags += d.observe_step("r", step, float(step), fixed_times(slow))
    # Rank 1's median over 5 steps is slow once 3 of them are: steps 7 and 17, named
    # after 3 slow verdicts (confirm_steps): 9 and 19; it is back to normal once 3 are
    # normal again: step 12.
    check_episode(flags, [(False, 9), (True, 12), (False, 19)], "straggler")
    assert {f.rank for f in flags} == {1}
    assert [(f.evidence["value"], f.evidence["baseline"]) for f in flags] == [
        (0.22 + 0.08, 0.02 + 0.08),
        (0.02 + 0.08, 0.02 + 0.08),
        (0.22 + 0.08, 0.02 + 0.08),
    ]


def test_dp_mismatch_starts_clears_and_starts_again() -> None:
    d = DPMismatchDetector()
    same = {r: {"grad/global_norm": 1.5} for r in range(4)}
    bad = {**same, 3: {"grad/global_norm": 1.6}}
    flags = [
        dp_step(d, "r", step, float(step), ranks)
        for step, ranks in enumerate([same, bad, bad, same, same, bad])
    ]
    got = [f for f in flags if f is not None]
    check_episode(got, [(False, 1), (True, 3), (False, 5)], "dp_mismatch")
    assert [f.rank for f in got] == [3, 3, 3]
    assert [(f.evidence["value"], f.evidence["baseline"]) for f in got] == [
        (1.6, 1.5),
        (1.5, 1.5),
        (1.6, 1.5),
    ]


def test_dead_rank_clears_when_heard_from_and_dies_again() -> None:
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=1.0, hung_after_s=100))
    flags: list[Flag] = []
    for now in range(20):
        for rank in range(2):
            if rank == 1 and (5 < now < 10 or now > 12):
                continue  # silent after t=5, back at t=10, silent again after t=12
            flags += d.seen("r", rank, 2, now, float(now))
        flags += d.tick(now + 0.5)
    # Default dead_after 2.5 intervals: silent since 5, dead at the tick of 7.5; heard
    # from at 10 (its step then); silent since 12, dead at 14.5.
    check_episode(flags, [(False, 5), (True, 10), (False, 12)], "dead_rank")
    assert {f.rank for f in flags} == {1}
    assert [(f.t, f.evidence["value"]) for f in flags] == [(5.0, 2.5), (10.0, 5.0), (12.0, 2.5)]
    assert flags[1].evidence["threshold"] == 2.5


def test_hung_rank_clears_when_its_step_moves() -> None:
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=1.0, hung_after_s=10))
    flags: list[Flag] = []
    for now in range(30):
        flags += d.seen("r", 0, 2, now, float(now))
        flags += d.seen("r", 1, 2, min(now, 3) if now < 16 else 4, float(now))  # stuck at 3, 4
        flags += d.tick(now + 0.5)
    # Step 3 since t=3: hung at the tick of 13.5; moves at 16; stuck at 4, hung at 26.5.
    check_episode(flags, [(False, 3), (True, 4), (False, 4)], "hung_rank")
    assert [(f.rank, f.t) for f in flags] == [(1, 13.0), (1, 16.0), (1, 26.0)]
    assert flags[1].evidence["value"] == 13.0  # stuck 13 s before the step moved


def test_a_forgotten_run_gives_no_cleared_flag() -> None:
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=1.0))
    for now in range(10):
        d.seen("r", 0, 2, now, float(now))
        if now <= 5:
            d.seen("r", 1, 2, now, float(now))
    assert [(f.detector, f.rank) for f in d.tick(9.0)] == [("dead_rank", 1)]
    assert d.tick(40.0) == []  # every rank silent for 10x dead_after: the run is forgotten
    assert d.seen("r", 1, 2, 50, 41.0) == []  # back, but its alert is not this episode's
    assert d.seen("r", 0, 2, 50, 41.0) == []


def test_dead_after_default_is_two_and_a_half_intervals() -> None:
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=2.0))
    for rank in range(2):
        d.seen("r", rank, 2, 1, 0.0)
    d.seen("r", 0, 2, 2, 4.9)
    assert d.tick(4.99) == []
    d.seen("r", 0, 2, 3, 5.0)
    assert [(f.rank, f.evidence["threshold"]) for f in d.tick(5.0)] == [(1, 5.0)]


def test_run_stage_turns_a_dead_rank_return_into_a_resolved_alert() -> None:
    stage = RunStage(heartbeat_interval_s=1.0, clock=lambda: 7.0)
    for now in range(6):
        for rank in range(2):
            stage.process(summary(rank, {now: {"loss": 1.0}}, world=2), float(now))
    stage.process(summary(0, {6: {"loss": 1.0}}, world=2), 6.0)
    stage.process(summary(0, {7: {"loss": 1.0}}, world=2), 7.0)
    fired = stage.tick(7.6)
    assert [(a.rule, a.rank, a.status) for a in fired] == [("dead_rank", 1, "firing")]
    back = stage.process(summary(1, {8: {"loss": 1.0}}, world=2), 8.0).alerts
    assert [(a.rule, a.rank, a.status, a.step) for a in back] == [("dead_rank", 1, "resolved", 8)]
    assert back[0].fingerprint == fired[0].fingerprint
    assert "heard from again" in back[0].summary
    assert stage.tick(8.2) == []


def test_run_stage_resolves_a_straggler_through_the_finished_steps() -> None:
    stage = RunStage(
        detector_params={"straggler": {"window": 5, "min_points": 3}}, clock=lambda: 0.0
    )
    alerts = []
    for step in range(14):  # step 12 is finished when the ranks report step 13
        slow = 1 if 5 <= step < 10 else None
        for rank, values in fixed_times(slow).items():
            alerts += stage.process(summary(rank, {step: values}, world=3), 0.0).alerts
    assert [(a.rule, a.rank, a.status, a.step) for a in alerts] == [
        ("straggler", 1, "firing", 9),
        ("straggler", 1, "resolved", 12),
    ]
    assert alerts[0].fingerprint == alerts[1].fingerprint


def test_nonfinite_origin_names_no_rank_when_every_rank_went_nan_in_the_same_step() -> None:
    # A gradient overflow in backward: every rank's loss is NaN from the next step on, all
    # in one step. Event times differ by jitter only, so naming one would be a guess.
    detector = NonFiniteOrigin()
    for rank, t in ((1, 141.002), (0, 141.0)):
        assert detector.nonfinite("r", rank, 2, "loss", 41, t, math.nan, now=0.0) is None
    detector.progress("r", 0, 42, now=0.1)
    verdict = detector.progress("r", 1, 42, now=0.1)
    assert verdict is not None and verdict.rank is None and verdict.step == 41
    assert verdict.evidence["ranks_tied"] == 2.0
    # Post-all-reduce values are never judged: a NaN gradient norm opens nothing.
    other = NonFiniteOrigin()
    assert other.nonfinite("r", 0, 2, "grad_norm", 5, 5.0, math.nan, now=0.0) is None
    assert other.tick(10.0) == []


def test_the_last_step_of_an_ended_run_is_finished_by_the_timer() -> None:
    stage = RunStage(lag_s=5.0, clock=lambda: 0.0)
    for step in range(3):
        for rank in (0, 1):
            stage.process(summary(rank, {step: {"loss": 1.0}}, world=2), 10.0)
    # Nobody moves past step 2 any more: it waits, then the timer finishes it.
    assert stage.flush_steps(14.9).crossrank == []
    assert [u.step for u in stage.flush_steps(15.0).crossrank] == [2]
    assert stage.flush_steps(20.0).crossrank == []


def closing(rank: int, step: int, world: int = 2) -> RankSummary:
    """A rank's closing heartbeat (``monitor.close()``) as stage 1 summarises it."""
    return RankSummary(
        run="r", rank=rank, world=world, last_step=step, last_t=100.0 + step, status="closing"
    )


def test_a_finished_run_ends_its_incidents_once_it_stays_quiet() -> None:
    # Rank 0's loss went NaN at step 3 and the run closed one step later: the origin's
    # episode waits 20 more steps to clear, and nothing would ever end it; the soak found
    # such alerts firing for finished runs until the resolve timeout (300 s).
    stage = RunStage(clock=lambda: 0.0, lag_s=5.0, incident_hold_s=5.0)
    nan = math.nan
    alerts = []
    for rank in (0, 1):
        loss = nan if rank == 0 else 1.0
        point = [StepPoint(step=3, t=103.0, values={"loss": nan})] if rank == 0 else None
        steps = {3: {"loss": loss}, 4: {"loss": 1.0}}
        alerts += stage.process(summary(rank, steps, world=2, nonfinite=point), 1.0).alerts
    assert [(a.rule, a.status) for a in alerts] == [("nonfinite_origin", "firing")]
    assert stage.flush_steps(1.5).alerts == []  # still running: the episode stays open
    crossrank, ended = [], []
    for rank in (0, 1):
        out = stage.process(closing(rank, 4), 2.0)
        crossrank += out.crossrank
        ended += out.alerts
    # Every rank closed: step 4, which no rank moved past, waits the 5 s like any other
    # (a rank's values can come after its close); the open incident waits for the run
    # to stay quiet (a rank's last flags may come seconds after another rank's close).
    assert crossrank == [] and ended == []
    assert [u.step for u in stage.flush_steps(7.0).crossrank] == [4]
    assert stage.flush_steps(2.0 + FINISHED_QUIET_S - 0.5).alerts == []
    ended = stage.flush_steps(2.0 + FINISHED_QUIET_S).alerts
    assert [(a.rule, a.status, a.rank) for a in ended] == [("nonfinite_origin", "resolved", 0)]
    assert "finished" in ended[0].summary
    assert stage.flush_steps(20.4).alerts == [] and stage.tick(20.0) == []
    # A rank that comes back (a restart) runs the detectors afresh: a new NaN is a new
    # incident, and it stays open while the run is not finished again.
    point = [StepPoint(step=30, t=130.0, values={"loss": nan})]
    back = summary(0, {30: {"loss": nan}}, world=2, nonfinite=point)
    stage.process(back.model_copy(update={"status": "running"}), 30.0)
    again = stage.tick(40.0)
    assert [(a.rule, a.status) for a in again] == [("nonfinite_origin", "firing")]
    assert stage.flush_steps(40.2).alerts == []


def flag_alert(rank: int, step: int = 5) -> Alert:
    """Stage 1's non-finite finding for `rank`'s loss, as it rides in a summary."""
    flag = Flag(
        detector="nonfinite",
        run="r",
        rank=rank,
        metric="loss",
        step=step,
        t=100.0 + step,
        severity="critical",
        summary=f"loss is NaN on rank {rank}",
        evidence={"value": None},
    )
    return flag_to_alert(flag, 0.0)


def test_ranks_that_report_one_after_another_keep_one_incident() -> None:
    # Three ranks publish a NaN one after another, each closing before the next starts,
    # and a late rank's flags arrive after every rank closed: one incident, one page,
    # ended once the run stayed quiet.
    stage = RunStage(clock=lambda: 0.0, lag_s=5.0, incident_hold_s=5.0)
    nan = math.nan
    out = []
    for rank in (0, 1, 2):
        point = [StepPoint(step=5, t=105.0, values={"loss": nan})]
        flags = [flag_alert(rank)]
        body = summary(rank, {5: {"loss": nan}}, world=3, nonfinite=point)
        out += stage.process(body.model_copy(update={"flags": flags}), 1.0 + rank * 0.1).alerts
        out += stage.process(closing(rank, 5, world=3), 1.05 + rank * 0.1).alerts
        out += stage.flush_steps(1.08 + rank * 0.1).alerts
    late = summary(1, {}, world=3).model_copy(update={"flags": [flag_alert(1, step=6)]})
    out += stage.process(late, 3.0).alerts
    out += stage.flush_steps(3.0 + FINISHED_QUIET_S).alerts
    seen = [(a.fingerprint, a.status) for a in out if a.rule == "nonfinite"]
    # one incident (one fingerprint), firing (restated as flags come) until the end
    assert len({fp for fp, _ in seen}) == 1
    assert [status for _, status in seen if status == "resolved"] == ["resolved"]
    assert seen[-1][1] == "resolved" and seen[0][1] == "firing"
