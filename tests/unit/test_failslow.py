"""Fail-slow ranks and job slowdowns (processors.detectors.failslow, .slowdown): the quiet
faults that cost large jobs most, as pure detectors and through stage 2."""

from __future__ import annotations

import math
import random

import pytest

from processors.detectors import (
    FailSlowDetector,
    SlowdownDetector,
    SlowdownParams,
    StragglerDetector,
)
from processors.flags import Flag
from processors.run_stage import RunStage
from stepstream import vocabulary as vocab
from stepstream.contract import RankSummary, StepPoint

DATA, FWD, STEP, COMPUTE = (
    vocab.DATA_WAIT.name,
    vocab.FORWARD.name,
    vocab.STEP_TIME.name,
    vocab.COMPUTE.name,
)


def ddp_step(
    rng: random.Random,
    world: int,
    *,
    forward: float = 0.005,
    data: float = 0.001,
    jitter: float = 0.05,
    slow: dict[int, float] | None = None,
    slow_phase: str = FWD,
    declared: dict[int, float] | None = None,
) -> dict[int, dict[str, float]]:
    """One DDP step's per-rank times: each rank's forward and data wait drawn with
    `jitter` (log-normal), `slow` ranks' `slow_phase` times (1 + shift), the step time
    equalised by the all-reduce (the slowest rank's local time + 2 ms), `declared`
    eval/checkpoint seconds a rank spent inside its data wait."""
    local: dict[int, dict[str, float]] = {}
    for r in range(world):
        f = forward * math.exp(rng.gauss(0, jitter))
        d = data * math.exp(rng.gauss(0, jitter))
        shift = (slow or {}).get(r, 0.0)
        if slow_phase == FWD:
            f *= 1 + shift
        else:
            d *= 1 + shift
        d += (declared or {}).get(r, 0.0)
        local[r] = {DATA: d, FWD: f}
    step = max(v[DATA] + v[FWD] for v in local.values()) + 0.002
    for r, v in local.items():
        v[STEP] = step
        v[COMPUTE] = step - v[DATA]
        if declared and r in declared:
            v[vocab.CHECKPOINT_TIME.name] = declared[r]
    return local


def firing(flags: list[Flag]) -> list[Flag]:
    return [f for f in flags if not f.cleared]


@pytest.mark.parametrize("shift", [0.1, 0.2, 0.4])
@pytest.mark.parametrize("world", [2, 4])
def test_a_rank_slower_by_20_percent_is_named_within_100_steps(shift: float, world: int) -> None:
    rng = random.Random(world * 10 + int(shift * 10))
    d = FailSlowDetector()
    flags: list[Flag] = []
    for step in range(300):
        flags += d.observe_step("r", step, float(step), ddp_step(rng, world))
    assert flags == []
    for step in range(300, 400):
        flags += d.observe_step("r", step, float(step), ddp_step(rng, world, slow={1: shift}))
    assert [(f.rank, f.metric) for f in firing(flags)] == [(1, "forward")]
    flag = flags[0]
    assert flag.step is not None and flag.step - 300 < 100
    # The size of the shift and what it costs the peers per step.
    assert flag.evidence["shift_pct"] == pytest.approx(shift * 100, abs=6)
    assert flag.evidence["cost_s_per_step"] == pytest.approx(0.005 * shift, rel=0.35)
    assert "rank 1 is fail-slow in forward" in flag.summary and "peers wait" in flag.summary


def test_a_shift_on_a_rank_already_a_little_slow_is_measured_from_the_newest_steps() -> None:
    # Rank 1 runs 2 % slower than its peers from the start (a slower host, under the
    # threshold), which keeps the CUSUM above zero; from step 300 its forward is 10 %
    # slower still. The shift is judged on the newest steps, not diluted by 300 old ones.
    rng = random.Random(11)
    d = FailSlowDetector()
    flags: list[Flag] = []
    for step in range(500):
        shift = 0.02 if step < 300 else 1.02 * 1.10 - 1
        ranks = ddp_step(rng, 4, jitter=0.02, slow={1: shift})
        flags += d.observe_step("r", step, float(step), ranks)
    assert [(f.rank, f.metric, f.cleared) for f in flags] == [(1, "forward", False)]
    assert flags[0].step is not None and 300 < flags[0].step < 400
    assert flags[0].evidence["shift_pct"] == pytest.approx(12.2, abs=3)  # against the peers
    assert flags[0].evidence["onset_step"] == pytest.approx(300, abs=5)


def test_a_slow_data_pipeline_is_named_in_the_data_phase_and_clears() -> None:
    rng = random.Random(3)
    d = FailSlowDetector()
    flags: list[Flag] = []
    for step in range(400):
        slow = {2: 0.3} if 100 <= step < 250 else None
        ranks = ddp_step(rng, 3, data=0.004, slow=slow, slow_phase=DATA)
        flags += d.observe_step("r", step, float(step), ranks)
    assert [(f.rank, f.metric, f.cleared) for f in flags] == [
        (2, "data", False),
        (2, "data", True),
    ]
    assert flags[1].step is not None and 250 <= flags[1].step < 330


@pytest.mark.parametrize("jitter", [0.3, 0.7])
def test_heavy_jitter_with_equal_means_stays_quiet(jitter: float) -> None:
    # Variable sequence lengths: every rank's forward varies up to 2x step to step, with
    # the same mean on every rank.
    rng = random.Random(int(jitter * 100))
    d = FailSlowDetector()
    for step in range(10_000):
        assert d.observe_step("r", step, float(step), ddp_step(rng, 4, jitter=jitter)) == []


def test_a_rank_slower_for_a_stretch_of_a_loaded_machine_is_not_fail_slow() -> None:
    # Measured live at load average 5-6: one of two ranks' 10 ms forward ran 10 % slower
    # for 56 steps, then not. Fail-slow is sustained: this is not named.
    rng = random.Random(13)
    d = FailSlowDetector()
    for step in range(600):
        slow = {0: 0.10} if 300 <= step < 356 else None
        ranks = ddp_step(rng, 2, forward=0.010, jitter=0.02, slow=slow)
        assert d.observe_step("r", step, float(step), ranks) == []


def test_a_small_systematic_difference_is_not_fail_slow() -> None:
    # A rank 4 % slower for good (a slightly slower host, a rank that also logs) is
    # under the shift that costs the job; the CUSUM rises but the shift's size holds it.
    rng = random.Random(5)
    d = FailSlowDetector()
    for step in range(3000):
        ranks = ddp_step(rng, 2, jitter=0.02, slow={0: 0.04})
        assert d.observe_step("r", step, float(step), ranks) == []


def test_declared_work_in_the_data_wait_is_not_slowness() -> None:
    # Rank 0 evaluates 3 ms in every step from step 100 (a small declared eval between
    # steps) and checkpoints 12 s every 50 steps: its data wait holds both, declared.
    rng = random.Random(6)
    d = FailSlowDetector()
    for step in range(600):
        declared = {0: 12.0 if step % 50 == 49 else 0.003} if step >= 100 else None
        ranks = ddp_step(rng, 3, declared=declared)
        assert d.observe_step("r", step, float(step), ranks) == []


def test_peers_are_ranks_of_the_same_role_and_sharded_forwards_are_not_judged() -> None:
    rng = random.Random(7)
    d = FailSlowDetector()
    # Pipeline stage 1 (ranks 2, 3) does twice the forward of stage 0 by design.
    roles = {0: (0, 0), 1: (0, 0), 2: (1, 0), 3: (1, 0)}
    for step in range(500):
        ranks = ddp_step(rng, 4)
        for r in (2, 3):
            ranks[r][FWD] *= 2
        assert d.observe_step("r", step, float(step), ranks, roles) == []
    # Under FSDP2 the forward holds all-gathers: a slower forward names nobody.
    sharded = FailSlowDetector()
    for step in range(300):
        ranks = ddp_step(rng, 2, slow={1: 0.5} if step >= 100 else None)
        assert sharded.observe_step("r", step, float(step), ranks, sharded=True) == []


def test_job_slowdown_on_every_rank_names_the_phase() -> None:
    rng = random.Random(8)
    d = SlowdownDetector()
    flags: list[Flag] = []
    for step in range(400):
        # The input pipeline of every rank gets 3x slower (a shared file system).
        data = 0.012 if step >= 250 else 0.004
        flags += d.observe_step("r", step, step * 0.1, ddp_step(rng, 4, data=data))
    assert len(firing(flags)) == 1
    flag = flags[0]
    assert flag.rank is None and flag.metric == "data" and "every rank" in flag.summary
    assert flag.evidence["rate_drop_pct"] == pytest.approx(42, abs=8)
    assert flag.step is not None and 250 < flag.step < 250 + 100


def test_a_slowdown_that_starts_while_the_baseline_is_taken_is_still_named() -> None:
    # Every rank's input gets 3x slower at step 90: 60 of the 100 baseline steps (51-150)
    # are slow, so their median is the slow rate; their fastest 50-step stretch is not.
    rng = random.Random(12)
    d = SlowdownDetector()
    flags: list[Flag] = []
    for step in range(300):
        data = 0.012 if step >= 90 else 0.004
        flags += d.observe_step("r", step, step * 0.1, ddp_step(rng, 4, data=data))
    assert [(f.metric, f.cleared) for f in flags] == [("data", False)]
    assert flags[0].evidence["rate_drop_pct"] == pytest.approx(42, abs=10)
    assert "every rank" in flags[0].summary


def test_job_slowdown_from_one_rank_names_that_rank() -> None:
    rng = random.Random(9)
    d = SlowdownDetector(SlowdownParams(sustain_s=0.0))
    flags: list[Flag] = []
    for step in range(400):
        slow = {3: 1.0} if step >= 250 else None
        flags += d.observe_step("r", step, float(step), ddp_step(rng, 4, slow=slow))
    assert [(f.rank, f.metric) for f in firing(flags)] == [(3, "forward")]
    assert "rank 3 only" in flags[0].summary


def test_collective_slowdown_is_compute_on_every_rank_and_clears() -> None:
    rng = random.Random(10)
    d = SlowdownDetector(SlowdownParams(sustain_s=0.0))
    flags: list[Flag] = []
    for step in range(600):
        ranks = ddp_step(rng, 2)
        if 250 <= step < 400:  # a slower network: the all-reduce takes 5 ms more
            for v in ranks.values():
                v[STEP] += 0.005
                v[COMPUTE] += 0.005
        flags += d.observe_step("r", step, float(step), ranks)
    assert [(f.rank, f.metric, f.cleared) for f in flags] == [
        (None, "compute", False),
        (None, "compute", True),
    ]


def test_warmup_declared_phases_and_jitter_are_not_slowdowns() -> None:
    rng = random.Random(11)
    d = SlowdownDetector(SlowdownParams(sustain_s=0.0))
    for step in range(2000):
        ranks = ddp_step(rng, 3, jitter=0.3)
        if step < 40:  # warm-up: first steps 10x slower
            for v in ranks.values():
                v[STEP] *= 10
        if step >= 300:  # rank 0 evaluates 10 ms a step, declared: peers wait for it
            ranks = ddp_step(rng, 3, jitter=0.3, declared={0: 0.01})
        if step % 100 == 99:  # rank 0 evaluates 8 s inside monitor.phase("eval")
            ranks = ddp_step(rng, 3, declared={0: 8.0})
            for v in ranks.values():
                v[STEP] += 8.0
        assert d.observe_step("r", step, float(step), ranks) == []


def beat(rank: int, world: int, steps: dict[int, dict[str, float]]) -> RankSummary:
    return RankSummary(
        run="r",
        rank=rank,
        world=world,
        last_step=max(steps),
        last_t=float(max(steps)),
        records=len(steps),
        steps=[StepPoint(step=s, t=100.0 + s * 0.05, values=v) for s, v in steps.items()],
    )


def test_stage_two_raises_fail_slow_and_slowdown_alerts() -> None:
    rng = random.Random(12)
    stage = RunStage(clock=lambda: 0.0)
    alerts = []
    for step in range(700):
        # Rank 2's forward 45 % slower from step 300 (under the straggler's 1.5x and
        # under a job slowdown), then every rank's input pipeline 3x slower.
        data = 0.012 if step >= 500 else 0.004
        ranks = ddp_step(rng, 3, data=data, slow={2: 0.45} if step >= 300 else None)
        for rank, values in ranks.items():
            alerts += stage.process(beat(rank, 3, {step: values}), step * 0.05).alerts
    got = [(a.rule, a.rank, a.metric) for a in alerts if a.status == "firing"]
    assert got == [("fail_slow", 2, "forward"), ("job_slowdown", None, "data")]


def test_straggler_stays_quiet_under_heavy_jitter_with_equal_means() -> None:
    # Variable sequence lengths: each rank's forward 0.25-1.75x of 10 ms per step; the
    # 20-step medians drift 30 % and 3 ms apart by chance, within their own noise.
    rng = random.Random(13)
    d = StragglerDetector()
    for step in range(5000):
        ranks = {
            r: {DATA: 0.0002, FWD: 0.010 * rng.uniform(0.25, 1.75), STEP: 0.03} for r in range(3)
        }
        assert d.observe_step("r", step, float(step), ranks) == []
