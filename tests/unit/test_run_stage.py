"""Stage 2 and the cross-rank detectors: per-step stats across ranks, stragglers, desync,
dead and hung ranks, DP mismatch and the origin of a non-finite value."""

from __future__ import annotations

import math
import random
import statistics

from processors.detectors import (
    DesyncDetector,
    DPMismatchDetector,
    LivenessDetector,
    LivenessParams,
    StragglerDetector,
)
from processors.run_stage import RunStage, crossrank_stats
from stepstream.contract import RankSummary, StepPoint


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
    stage = RunStage(lag_steps=3, clock=lambda: 0.0)
    out = []
    for rank in range(3):
        out += stage.process(summary(rank, {0: {"loss": float(rank)}}, world=3), 0.0).crossrank
    assert [(u.step, u.stats["loss"].ranks, u.stats["loss"].mean) for u in out] == [(0, 3, 1.0)]
    # Rank 2 stops; step 1 is finished with two ranks once the others are 3 steps on.
    late = []
    for step in range(1, 6):
        for rank in (0, 1):
            late += stage.process(summary(rank, {step: {"loss": 1.0}}, world=3), 0.0).crossrank
    assert [u.step for u in late] == [1, 2]
    assert all(u.stats["loss"].ranks == 2 for u in late)


def rank_times(rng: random.Random, slow: int | None, ranks: int = 4) -> dict[int, dict[str, float]]:
    out = {}
    for r in range(ranks):
        data = 0.02 + rng.gauss(0, 0.003)
        compute = 0.08 + rng.gauss(0, 0.005)
        if r == slow:
            data += 0.1
        out[r] = {"data_time": data, "compute_time": compute, "step_time": 0.2}
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
    assert flags[0][1] <= 200 + 10  # half of the 20-step window


def test_straggler_with_two_ranks() -> None:
    rng = random.Random(2)
    d = StragglerDetector()
    flags = []
    for step in range(30):
        flags += d.observe_step("r", step, float(step), rank_times(rng, 1, ranks=2))
    assert [f.rank for f in flags] == [1] and flags[0].step == 4  # min_points


def test_desync() -> None:
    d = DesyncDetector()
    assert d.observe("r", 0.0, {0: 100, 1: 90, 2: 95}) is None
    flag = d.observe("r", 0.0, {0: 200, 1: 120, 2: 199})
    assert flag is not None and flag.rank == 1 and flag.evidence["value"] == 80
    assert d.observe("r", 0.0, {0: 201, 1: 120, 2: 200}) is None  # same episode


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


def test_dp_mismatch() -> None:
    d = DPMismatchDetector()
    same = {r: {"grad_norm": 1.2345678 + r * 1e-9} for r in range(4)}
    assert d.observe_step("r", 1, 1.0, same) is None
    bad = {**same, 3: {"grad_norm": 1.25}}
    flag = d.observe_step("r", 2, 2.0, bad)
    assert flag is not None and flag.rank == 3 and flag.severity == "critical"
    two = DPMismatchDetector().observe_step(
        "r", 2, 2.0, {0: {"grad_norm": 1.0}, 1: {"grad_norm": 1.1}}
    )
    assert two is not None and two.rank is None


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


def test_dead_after_default_is_two_and_a_half_intervals() -> None:
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=2.0))
    for rank in range(2):
        d.seen("r", rank, 2, 1, 0.0)
    d.seen("r", 0, 2, 2, 4.9)
    assert d.tick(4.99) == []
    d.seen("r", 0, 2, 3, 5.0)
    assert [(f.rank, f.evidence["threshold"]) for f in d.tick(5.0)] == [(1, 5.0)]
