"""Stage 1 logic: dedup, gaps, windows per series and the non-finite detector."""

from __future__ import annotations

import math
import statistics

from processors.series_stage import SeriesStage, fingerprint
from stepstream.contract import Batch, Record, RecordKind


def batch(records: list[Record], rank: int = 0, incarnation: str = "i1") -> Batch:
    return Batch(run="r1", rank=rank, world=2, node="n", pid=1, incarnation=incarnation,
                 records=records)


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
        5, statistics.fmean([3, 4, 5, 6, 7]), 3.0, 7.0, 7.0)
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
    assert [(a.rule, a.rank, a.step, a.metric) for a in first.alerts] == [("nonfinite", 1, 1, "loss")]
    alert = first.alerts[0]
    assert alert.fingerprint == fingerprint("nonfinite", "r1", 1, "loss")
    assert alert.raised_at == 42.0 and math.isnan(alert.evidence["value"] or 0.0)
    assert "NaN" in alert.summary and "rank 1" in alert.summary
    still = s.process(batch([rec(2, 2, loss=math.nan)], rank=1))
    assert still.alerts == []
    s.process(batch([rec(3, 3, loss=0.5)], rank=1))
    again = s.process(batch([rec(4, 4, loss=math.inf)], rank=1))
    assert [a.step for a in again.alerts] == [4]


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
