"""Stage 1 logic: dedup, gaps, windows per series and the non-finite detector."""

from __future__ import annotations

import math
import statistics

from processors.series_stage import SeriesStage, fingerprint
from stepstream.contract import Batch, Record, RecordKind


def batch(records: list[Record], rank: int = 0, incarnation: str = "i1") -> Batch:
    return Batch(
        run="r1", rank=rank, world=2, node="n", pid=1, incarnation=incarnation, records=records
    )


def rec(seq: int, step: int, kind: RecordKind = RecordKind.TRAIN, **values: float) -> Record:
    return Record(seq=seq, t=1000.0 + step, step=step, kind=kind, values=values)


def stage() -> SeriesStage:
    return SeriesStage(window_steps=[5], window_seconds=[3.0], clock=lambda: 42.0)


def test_window_update_holds_stats_of_each_window() -> None:
    s = stage()
    result = s.process(batch([rec(i, i, loss=float(i)) for i in range(8)]))
    assert result.update is not None
    steps5 = result.update.windows["5steps"]["loss"]
    assert (steps5.count, steps5.mean, steps5.min, steps5.max, steps5.last) == (
        5,
        statistics.fmean([3, 4, 5, 6, 7]),
        3.0,
        7.0,
        7.0,
    )
    secs3 = result.update.windows["3s"]["loss"]
    assert (secs3.count, secs3.mean) == (3, 6.0)
    assert result.update.latest == {"loss": 7.0}
    assert (result.update.step, result.update.t) == (7, 1007.0)


def test_duplicates_by_seq_are_ignored_and_gaps_counted() -> None:
    s = stage()
    s.process(batch([rec(0, 0, loss=1.0), rec(1, 1, loss=2.0)]))
    replay = s.process(batch([rec(0, 0, loss=100.0), rec(1, 1, loss=100.0), rec(4, 4, loss=3.0)]))
    assert (replay.duplicates, replay.lost) == (2, 2)
    assert replay.update is not None
    assert replay.update.windows["5steps"]["loss"].mean == 2.0  # (1 + 2 + 3) / 3


def test_new_incarnation_restarts_seq_but_keeps_history() -> None:
    s = stage()
    s.process(batch([rec(0, 0, loss=1.0)]))
    result = s.process(batch([rec(0, 1, loss=3.0)], incarnation="i2"))
    assert result.duplicates == 0
    assert result.update is not None
    assert result.update.windows["5steps"]["loss"].mean == 2.0


def test_nan_raises_one_alert_per_episode_and_rearms() -> None:
    s = stage()
    first = s.process(batch([rec(0, 0, loss=1.0), rec(1, 1, loss=math.nan)], rank=1))
    assert [(a.rule, a.rank, a.step, a.metric) for a in first.alerts] == [
        ("nonfinite", 1, 1, "loss")
    ]
    alert = first.alerts[0]
    assert alert.fingerprint == fingerprint("nonfinite", "r1", 1, "loss")
    assert alert.raised_at == 42.0 and math.isnan(alert.evidence["value"] or 0.0)
    assert "NaN" in alert.summary and "rank 1" in alert.summary
    still = s.process(batch([rec(2, 2, loss=math.nan)], rank=1))
    assert still.alerts == []
    finite = s.process(batch([rec(3, 3, loss=0.5)], rank=1))
    assert [(a.rule, a.status, a.step, a.fingerprint) for a in finite.alerts] == [
        ("nonfinite", "resolved", 3, alert.fingerprint)
    ]
    assert finite.alerts[0].evidence["value"] == 0.5
    assert finite.update is not None and finite.update.windows["5steps"]["loss"].flags is None
    again = s.process(batch([rec(4, 4, loss=math.inf)], rank=1))
    assert [(a.step, a.status) for a in again.alerts] == [(4, "firing")]


def test_ranks_are_separate_series() -> None:
    s = stage()
    s.process(batch([rec(0, 0, loss=1.0)], rank=0))
    result = s.process(batch([rec(0, 0, loss=5.0)], rank=1))
    assert result.update is not None
    assert result.update.windows["5steps"]["loss"].mean == 5.0


def test_log_records_are_not_windowed() -> None:
    s = stage()
    result = s.process(batch([rec(0, 0, RecordKind.LOG, level=40.0)]))
    assert result.update is None


def big_stage(**kw: object) -> SeriesStage:
    from processors.validation import Limits

    return SeriesStage(
        window_steps=[5],
        window_seconds=[3.0],
        clock=lambda: 2000.0,
        crossrank_metrics=["loss", "data_time"],
        limits=Limits(max_records=50, max_future_s=60.0, max_metrics_per_run=3),
        **kw,
    )  # type: ignore[arg-type]


def test_absurd_batches_are_rejected_with_a_reason_and_counted() -> None:
    s = big_stage()
    future = s.process_many(
        [
            batch([Record(seq=0, t=2000.0 + 3600, step=0, values={"loss": 1.0})]),
            batch([rec(i, i, loss=1.0) for i in range(51)], rank=1),
            batch([Record(seq=0, t=math.inf, step=0, values={"loss": 1.0})], rank=2),
            batch([rec(0, 0, loss=2.0)], rank=3),
        ]
    )
    assert [(i, r.reason) for i, r in future.rejected] == [
        (0, "future_time"),
        (1, "too_many_records"),
        (2, "absurd_time"),
    ]
    assert [u.rank for u in future.updates] == [3]
    assert s.rejected == {"future_time": 1, "too_many_records": 1, "absurd_time": 1}


def test_cardinality_cap_keeps_known_names_and_dead_letters_the_rest() -> None:
    s = big_stage()
    result = s.process(batch([rec(0, 0, a=1.0, b=2.0, c=3.0, d=4.0, e=5.0)]))
    assert [r.reason for _, r in result.rejected] == ["cardinality"]
    assert "d, e" in result.rejected[0][1].detail
    assert result.update is not None and set(result.update.latest) == {"a", "b", "c"}


def test_summaries_carry_crossrank_values_per_step_and_every_rank_local_nonfinite() -> None:
    s = big_stage()
    records = [
        rec(0, 0, loss=1.0, data_time=0.1),
        rec(1, 1, loss=math.nan, grad_norm=math.nan),
        rec(2, 2, loss=math.nan),
        rec(3, 3, loss=2.0),
    ]
    result = s.process(batch(records))
    (summ,) = result.summaries
    assert next((p.step, p.values.get("loss")) for p in summ.steps) == (0, 1.0)
    # Cross-rank values travel under their vocabulary names: an alias meets the SDK's name.
    assert summ.steps[0].values == {"loss": 1.0, "perf/data_wait_s": 0.1}
    # Every step a rank-local value stays non-finite; never the post-all-reduce grad norm.
    assert [(p.step, list(p.values)) for p in summ.nonfinite] == [(1, ["loss"]), (2, ["loss"])]
    assert (summ.last_step, summ.records) == (3, 4)
    # The detector findings ride in the summary, for stage 2 to group.
    assert [(a.rule, a.metric, a.status) for a in summ.flags] == [
        ("nonfinite", "loss", "firing"),
        ("nonfinite", "grad_norm", "firing"),
        ("nonfinite", "loss", "resolved"),
    ]


def test_flags_go_into_the_window_records() -> None:
    s = big_stage()
    result = s.process(batch([rec(0, 0, loss=1.0), rec(1, 1, loss=math.nan)]))
    assert result.update is not None
    assert result.update.windows["5steps"]["loss"].flags == ["nonfinite"]


def test_many_batches_give_one_update_per_rank_with_stats_once() -> None:
    s = big_stage()
    result = s.process_many([batch([rec(i, i, loss=float(i))]) for i in range(4)])
    assert len(result.updates) == 1 and len(result.summaries) == 1
    assert [p.step for p in result.summaries[0].steps] == [0, 1, 2, 3]
    assert (result.summaries[0].records, result.summaries[0].last_step) == (4, 3)
    stats = result.updates[0].windows["5steps"]["loss"]
    assert (stats.count, stats.mean, stats.p50, stats.slope) == (4, 1.5, 1.5, 1.0)


def test_seq_gap_raises_telemetry_loss() -> None:
    s = big_stage()
    s.process(batch([rec(0, 0, loss=1.0)]))
    result = s.process(batch([rec(5, 5, loss=1.0)]))
    assert [a.rule for a in result.alerts] == ["telemetry_loss"]


def test_stats_rate_limit_holds_back_and_flush_delivers() -> None:
    now = [100.0]
    s = SeriesStage(window_steps=[5], window_seconds=[], clock=lambda: now[0], stats_interval_s=1.0)
    first = s.process(batch([rec(0, 0, loss=1.0)]))
    assert first.update is not None and "loss" in first.update.windows["5steps"]
    now[0] = 100.5
    second = s.process(batch([rec(1, 1, loss=3.0)]))
    assert second.update is not None and second.update.latest == {"loss": 3.0}
    assert second.update.windows["5steps"] == {}  # held back
    assert s.flush(100.9) == []
    # Due, but held back only 0.5 s ago: a series still arriving gets its stats from its
    # next value; the flush is for one that went quiet.
    assert s.flush(101.0) == []
    (flushed,) = s.flush(101.5)
    assert flushed.latest == {"loss": 3.0} and flushed.step == 1
    assert flushed.windows["5steps"]["loss"].mean == 2.0
    assert s.flush(105.0) == []
    now[0] = 100.6  # a flagged series is computed at once
    nan = s.process(batch([rec(2, 2, loss=math.nan)]))
    assert nan.update is not None and nan.update.windows["5steps"]["loss"].nonfinite == 1


def test_spike_alert_resolves_at_the_next_normal_point() -> None:
    s = stage()
    s.process(batch([rec(i, i, loss=1.0 + 0.01 * (i % 3)) for i in range(25)]))
    spiked = s.process(batch([rec(25, 25, loss=9.0)]))
    assert [(a.rule, a.status, a.rank, a.metric, a.step) for a in spiked.alerts] == [
        ("spike", "firing", 0, "loss", 25)
    ]
    assert spiked.update is not None and spiked.update.windows["5steps"]["loss"].flags == ["spike"]
    normal = s.process(batch([rec(26, 26, loss=1.01), rec(27, 27, loss=9.0)]))
    # One batch: the spike clears at 26 and a new episode starts at 27, in that order.
    assert [(a.rule, a.status, a.step) for a in normal.alerts] == [
        ("spike", "resolved", 26),
        ("spike", "firing", 27),
    ]
    assert {a.fingerprint for a in [*spiked.alerts, *normal.alerts]} == {
        fingerprint("spike", "r1", 0, "loss")
    }
    assert normal.alerts[0].summary.startswith("loss spike on rank 0 cleared at step 26")
    assert normal.alerts[0].evidence["value"] == 1.01


def test_telemetry_loss_resolves_after_a_window_without_gaps() -> None:
    s = SeriesStage(
        window_steps=[5],
        window_seconds=[],
        clock=lambda: 42.0,
        detector_params={"telemetry_loss": {"window_batches": 2}},
    )
    got = []
    for seqs in ([0], [3], [4], [5], [6], [9]):
        result = s.process(batch([rec(q, q, loss=1.0) for q in seqs]))
        got += [(a.rule, a.status, a.step) for a in result.alerts]
    # Lost 1-2 at the batch of seq 3; two batches without loss by seq 5; lost 7-8.
    assert got == [
        ("telemetry_loss", "firing", 3),
        ("telemetry_loss", "resolved", 5),
        ("telemetry_loss", "firing", 9),
    ]


def test_error_burst_resolves_on_a_later_record_of_any_kind() -> None:
    s = SeriesStage(
        window_steps=[5],
        window_seconds=[],
        clock=lambda: 2000.0,
        detector_params={"error_burst": {"window_s": 10.0, "count": 2}},
    )
    logs = [rec(q, q, RecordKind.LOG, level=40.0) for q in range(2)]  # t = 1000, 1001
    fired = s.process(batch(logs))
    assert [(a.rule, a.status, a.step) for a in fired.alerts] == [("error_burst", "firing", 1)]
    # Train records only; the window of 10 s holds no error from t = 1011 on.
    assert s.process(batch([rec(2, 10, loss=1.0)])).alerts == []
    resolved = s.process(batch([rec(3, 11, loss=1.0)])).alerts
    assert [(a.rule, a.status, a.step, a.t) for a in resolved] == [
        ("error_burst", "resolved", 11, 1011.0)
    ]
    assert resolved[0].fingerprint == fired.alerts[0].fingerprint


def test_forgotten_series_restart_cold_without_a_seq_gap() -> None:
    stage = SeriesStage(window_steps=[5], window_seconds=[])
    stage.process(_gap_batch(0, 10))
    assert stage.forget([("r", 0), ("r", 9)]) == 1
    # another worker read seq 10..99 meanwhile: no telemetry_loss for them
    result = stage.process(_gap_batch(100, 5))
    assert not [a for a in result.alerts if a.rule == "telemetry_loss"]
    stage2 = SeriesStage(window_steps=[5], window_seconds=[])
    stage2.process(_gap_batch(0, 10))
    assert [a.rule for a in stage2.process(_gap_batch(100, 5)).alerts] == ["telemetry_loss"]


def _gap_batch(first_seq: int, n: int) -> Batch:
    import time as _time

    now = _time.time()
    return Batch(
        run="r",
        rank=0,
        world=1,
        incarnation="i1",
        records=[
            Record(seq=first_seq + i, t=now, step=first_seq + i, kind="train", values={"x": 1.0})
            for i in range(n)
        ],
    )


def test_a_forged_seq_jump_is_dead_lettered_and_later_records_still_count() -> None:
    s = stage()
    s.process(batch([rec(i, i, loss=1.0) for i in range(5)]))
    forged = s.process(batch([rec(10**15, 5, loss=9.0)]))
    assert [(i, r.reason) for i, r in forged.rejected] == [(0, "seq_jump")]
    assert [(a.rule, a.labels["reason"]) for a in forged.alerts] == [
        ("telemetry_rejected", "seq_jump")
    ]
    # The batch was refused whole: a summary still carries the finding to stage 2.
    assert [[a.rule for a in m.flags] for m in forged.summaries] == [["telemetry_rejected"]]
    # The publisher's next genuine records are not taken for duplicates.
    genuine = s.process(batch([rec(i, i, loss=2.0) for i in range(5, 8)]))
    assert (genuine.duplicates, genuine.rejected) == (0, [])
    assert genuine.update is not None and genuine.update.latest == {"loss": 2.0}
    # One alert per run and reason, however often it happens.
    again = s.process(batch([rec(10**15, 9, loss=9.0)]))
    assert [r.reason for _, r in again.rejected] == ["seq_jump"] and again.alerts == []


def test_ranks_summarized_together_get_the_stats_each_would_get_alone() -> None:
    # Stage 1 stacks the due series of every rank of a call into one set of reductions;
    # ranks of different lengths, values and a non-finite point must not mix.
    def wide() -> SeriesStage:  # windows long enough to be stacked (see MANY_FROM)
        return SeriesStage(window_steps=[50], window_seconds=[30.0], clock=lambda: 1050.0)

    together, alone = wide(), wide()
    batches = []
    for rank in range(5):
        points = 12 + 7 * rank  # each rank its own window length
        records = [
            rec(i, i, loss=(rank + 1) * 0.5 + math.sin(i * (rank + 1)), lr=0.1 * rank)
            for i in range(points)
        ]
        if rank == 3:
            records.append(rec(points, points, loss=math.nan))
        batches.append(batch(records, rank=rank))
    merged = {u.rank: u for u in together.process_many(batches).updates}
    for b in batches:
        single = alone.process(b).updates[0]
        assert merged[b.rank].windows.keys() == single.windows.keys()
        for name, stats in single.windows.items():
            for metric, want in stats.items():
                got = merged[b.rank].windows[name][metric]
                assert got.count == want.count and got.nonfinite == want.nonfinite
                for field in ("mean", "std", "p50", "p95", "ema", "slope", "min", "max"):
                    a, w = getattr(got, field), getattr(want, field)
                    assert (a is None and w is None) or math.isclose(
                        a, w, rel_tol=1e-9, abs_tol=1e-12
                    )
    assert merged[3].windows[next(iter(merged[3].windows))]["loss"].nonfinite == 1


def test_the_stats_interval_stretches_when_the_stage_holds_more_series_than_its_budget() -> None:
    now = [100.0]
    s = SeriesStage(
        window_steps=[5],
        window_seconds=[],
        clock=lambda: now[0],
        stats_interval_s=1.0,
        stats_budget_per_s=4.0,
    )
    # 2 ranks x 3 series: within the budget's 4 series a second at 1 s.
    for rank in (0, 1):
        s.process(batch([rec(0, 0, a=1.0, b=1.0, c=1.0)], rank=rank))
    assert s.interval_s(now[0]) == 1.0
    # 4 ranks x 3 series = 12 series at 4 a second: each is recomputed every 3 s.
    for rank in (2, 3):
        s.process(batch([rec(0, 0, a=1.0, b=1.0, c=1.0)], rank=rank))
    now[0] = 101.0
    assert s.interval_s(now[0]) == 3.0
    first = s.process(batch([rec(1, 1, a=2.0)], rank=0))
    assert first.update is not None and first.update.windows["5steps"]["a"].mean == 1.5
    now[0] = 103.5  # 2.5 s later: within the stretched interval, held back
    held = s.process(batch([rec(2, 2, a=3.0)], rank=0))
    assert held.update is not None and held.update.windows["5steps"] == {}
    now[0] = 104.1
    due = s.process(batch([rec(3, 3, a=4.0)], rank=0))
    assert due.update is not None and due.update.windows["5steps"]["a"].mean == 2.5
    # Without a budget the interval stays put whatever the series count.
    fixed = SeriesStage(
        window_steps=[5], window_seconds=[], clock=lambda: 0.0, stats_interval_s=1.0
    )
    fixed.process(batch([rec(0, 0, **{f"m{i}": 1.0 for i in range(50)})]))
    assert fixed.interval_s(5.0) == 1.0
