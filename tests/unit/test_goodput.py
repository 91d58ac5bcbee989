"""Live goodput (processors.goodput): effective training time ratio and badput by cause
from a run's finished steps, and through stage 2."""

from __future__ import annotations

import pytest

from processors.goodput import GoodputMeter
from processors.run_stage import RunStage
from stepstream import vocabulary as vocab
from stepstream.contract import RankSummary, StepPoint

DATA, FWD, STEP = vocab.DATA_WAIT.name, vocab.FORWARD.name, vocab.STEP_TIME.name
EVAL, CKPT = vocab.EVAL_TIME.name, vocab.CHECKPOINT_TIME.name


def step_values(
    world: int, data: float = 0.01, fwd: float = 0.02, slow: dict[int, float] | None = None
) -> dict[int, dict[str, float]]:
    local = {r: {DATA: data, FWD: fwd + (slow or {}).get(r, 0.0)} for r in range(world)}
    wall = max(v[DATA] + v[FWD] for v in local.values()) + 0.07
    for v in local.values():
        v[STEP] = wall
    return local


def test_badput_by_cause_adds_up_to_the_wall_time() -> None:
    meter = GoodputMeter()
    t = 0.0
    for step in range(100):
        ranks = step_values(3, slow={2: 0.05} if step >= 50 else None)
        if step == 30:  # rank 0 evaluates 2 s, declared: every rank's step holds it
            ranks[0][EVAL] = 2.0
            ranks[0][DATA] += 2.0
            for v in ranks.values():
                v[STEP] += 2.0
        if step == 60:  # rank 1 checkpoints 3 s
            ranks[1][CKPT] = 3.0
            ranks[1][DATA] += 3.0
            for v in ranks.values():
                v[STEP] += 3.0
        if step == 80:  # a 30 s stall (nothing declared)
            for v in ranks.values():
                v[STEP] += 30.0
        t += ranks[0][STEP]
        assert meter.add_step(step, t, ranks)
    got = meter.snapshot("r")
    assert got.steps == 100
    assert got.badput_s["eval"] == pytest.approx(2.0)
    assert got.badput_s["checkpoint"] == pytest.approx(3.0)
    assert got.badput_s["data_wait"] == pytest.approx(100 * 0.01)
    assert got.badput_s["slowest_rank"] == pytest.approx(50 * 0.05)
    assert got.slowest_by_rank == {"2": pytest.approx(50 * 0.05)}
    assert got.badput_s["hang_stall"] == pytest.approx(30.0, abs=0.01)
    assert got.productive_s == pytest.approx(50 * 0.09 + 50 * 0.09, abs=0.01)
    assert got.wall_s == pytest.approx(got.productive_s + sum(got.badput_s.values()))
    assert got.ettr == pytest.approx(got.productive_s / got.wall_s)


def summary(rank: int, step: int, t: float, values: dict[str, float], inc: str) -> RankSummary:
    return RankSummary(
        run="r",
        rank=rank,
        world=2,
        last_step=step,
        last_t=t,
        incarnation=inc,
        steps=[StepPoint(step=step, t=t, values=values)],
    )


def test_stage_two_counts_a_restart_gap_and_carries_goodput_on_each_step() -> None:
    stage = RunStage(clock=lambda: 0.0)
    t, last = 0.0, None
    for step in range(40):
        inc = "a" if step < 20 else "b"  # both ranks restart between steps 19 and 20
        t += 0.1 + (60.0 if step == 20 else 0.0)  # a minute of restart
        for rank, values in step_values(2).items():
            values[STEP] = 0.1
            for update in stage.process(summary(rank, step, t, values, inc), t).crossrank:
                assert update.goodput is not None
                last = update.goodput
    assert last is not None and last.step == 38  # step 39 waits for a later one
    assert last.badput_s["restart"] == pytest.approx(60.0, abs=0.01)
    assert last.badput_s["hang_stall"] == 0.0
    assert last.ettr is not None and last.ettr < 0.1


def test_a_hang_in_progress_shows_in_the_goodput_while_no_step_finishes() -> None:
    stage = RunStage(clock=lambda: 0.0, goodput_refresh_s=5.0)
    t = 0.0
    for step in range(30):
        t += 0.1
        for rank, values in step_values(2).items():
            values[STEP] = 0.1
            stage.process(summary(rank, step, t, values, "a"), t)
    seen = []
    for second in range(1, 31):  # both ranks hang: only heartbeats, no step moves
        for rank in range(2):
            beat = RankSummary(run="r", rank=rank, world=2, last_step=29, last_t=t + second)
            stage.process(beat, t + second)
        seen += [u.goodput for u in stage.flush_steps(t + second).crossrank if u.goodput]
    assert 5 <= len(seen) <= 7  # every 5 s of the ranks' event time
    last = seen[-1]
    # Step 29 finished once it waited lag_s; the hang runs from its event time to the
    # newest heartbeat the last refresh covered.
    assert last.step == 29 and last.badput_s["hang_stall"] == pytest.approx(last.t - t)
    assert last.badput_s["hang_stall"] >= 25
    assert last.ettr is not None and last.ettr < 0.1
