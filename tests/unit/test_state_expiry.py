"""Processors forget idle ranks and runs: memory is bounded by the runs active within
`STEPSTREAM_STATE_IDLE_S`, and a publisher that comes back starts cold."""

from __future__ import annotations

import gc
import math
import tracemalloc
from collections.abc import Callable

from processors.run_stage import RunStage
from processors.series_stage import SeriesStage
from stepstream import vocabulary as vocab
from stepstream.contract import Batch, RankSummary, Record, RecordKind, StepPoint

IDLE_S = 3600.0


class Clock:
    """A settable processor clock."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def job_batch(run: str, rank: int, first: int, n: int = 30, seq0: int | None = None) -> Batch:
    """`n` steps of a rank touching every per-series detector: losses, gradient norms, a
    learning rate, step times, memory, a NaN, an error log line, and a seq gap."""
    records = []
    seq = first if seq0 is None else seq0
    for step in range(first, first + n):
        values = {
            "loss": 2.0 / (1 + step / 50),
            "val_loss": 1.0 + step / 100,
            "grad_norm": 1.0 + (step % 7) / 10,
            "grad_norm/layer1.weight": 0.5 + (step % 5) / 10,
            "lr": 0.1,
            "perf/step_s": 0.05,
            "samples_per_s": 1000.0,
            "sys/rss_bytes": 1e9 + step * 1e6,
            "custom": math.nan if step % 11 == 0 else float(step),
        }
        records.append(Record(seq=seq, t=1_000.0 + step, step=step, values=values))
        seq += 2 if step % 13 == 0 else 1  # a gap now and then: telemetry loss state
    records.append(
        Record(
            seq=seq,
            t=1_000.0 + first + n,
            kind=RecordKind.LOG,
            values={vocab.LOG_LEVEL.name: 40.0},
            text="boom",
        )
    )
    return Batch(run=run, rank=rank, world=2, node="n", incarnation="i", records=records)


def traced(fill: Callable[[], None], expire: Callable[[], None]) -> tuple[int, int]:
    """Bytes still allocated after `fill`, and after `expire` too (one tracemalloc
    session, which sees only what was allocated while it ran)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill()
        gc.collect()
        filled = tracemalloc.get_traced_memory()[0] - before
        expire()
        gc.collect()
        return filled, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_series_stage_forgets_idle_ranks_and_their_detector_state() -> None:
    clock = Clock()
    stage = SeriesStage([20], [30.0], clock=clock, crossrank_metrics=["loss"])
    # Warm what is shared by every run (caches by metric name) before measuring.
    stage.process_many([job_batch("warm", 0, 0)])
    clock.now += IDLE_S
    stage.expire(clock.now, IDLE_S)

    def many_runs() -> None:
        for i in range(40):
            for rank in range(2):
                stage.process_many([job_batch(f"run{i}", rank, 0), job_batch(f"run{i}", rank, 30)])

    def expire() -> None:
        assert stage.held() == 80
        clock.now += IDLE_S - 1
        stage.process_many([job_batch("run0", 0, 60, seq0=1000)])  # one rank stays active
        clock.now += 1
        stage.expire(clock.now, IDLE_S)

    held, left = traced(many_runs, expire)
    assert held > 500_000, held  # the test measures something
    assert stage.held() == 1
    # All but one rank's state is gone: what is left is about one rank's of 80.
    assert left < 0.05 * held, (held, left)


def test_a_rank_that_comes_back_after_expiry_starts_cold() -> None:
    clock = Clock()
    stage = SeriesStage([20], [30.0], clock=clock)
    first = stage.process_many([job_batch("r", 0, 0)])
    assert first.lost > 0  # the seq gaps of the job
    clock.now += IDLE_S
    assert stage.expire(clock.now, IDLE_S) == [("r", 0)]
    # seq 0 again is no duplicate: the dedup watermark was forgotten with the rank, and the
    # windows start empty (count = the new batch's points only).
    again = stage.process_many([job_batch("r", 0, 100, n=5, seq0=0)])
    assert again.duplicates == 0
    assert again.update is not None
    assert again.update.windows["20steps"]["loss"].count == 5


def test_expire_keeps_ranks_heard_within_the_idle_time() -> None:
    clock = Clock()
    stage = SeriesStage([20], [30.0], clock=clock)
    stage.process_many([job_batch("r", 0, 0), job_batch("r", 1, 0)])
    clock.now += IDLE_S / 2
    stage.process_many([job_batch("r", 1, 30, seq0=100)])
    clock.now += IDLE_S / 2
    assert stage.expire(clock.now, IDLE_S) == [("r", 0)]
    assert stage.held() == 1
    # The run keeps its metric-name cap while one of its ranks is held.
    assert stage.admitted("r", "loss")


def run_summary(run: str, rank: int, first: int, n: int = 30) -> RankSummary:
    return RankSummary(
        run=run,
        rank=rank,
        world=2,
        last_step=first + n - 1,
        last_t=1_000.0 + first + n,
        records=n,
        steps=[
            StepPoint(
                step=s,
                t=1_000.0 + s,
                values={"loss": 1.0 + rank, vocab.DATA_WAIT.name: 0.01, "perf/step_s": 0.05},
            )
            for s in range(first, first + n)
        ],
    )


def test_run_stage_forgets_idle_runs() -> None:
    clock = Clock()
    stage = RunStage(clock=clock)
    stage.process(run_summary("warm", 0, 0), clock.now)
    clock.now += IDLE_S
    stage.expire(clock.now, IDLE_S)

    def many_runs() -> None:
        for i in range(40):
            for first in (0, 30, 60):
                for rank in range(2):
                    stage.process(run_summary(f"run{i}", rank, first), clock.now)

    def expire() -> None:
        assert stage.held() == 40
        clock.now += IDLE_S
        stage.expire(clock.now, IDLE_S)

    held, left = traced(many_runs, expire)
    assert held > 200_000, held
    assert stage.held() == 0
    assert left < 0.05 * held, (held, left)
