"""Query result models and the Prometheus exporter, without Redis."""

from __future__ import annotations

import math

from query.prom_exporter import render_metrics
from query.reader import RollingRow, RollingStats, RunInfo


def test_rolling_stats_keep_extra_numeric_fields_generically() -> None:
    stats = RollingStats.model_validate(
        {"count": 3, "mean": 1.5, "std": 0.25, "p95": "NaN", "slope": None, "note": "x"}
    )
    numbers = stats.numbers()
    assert numbers["std"] == 0.25 and numbers["count"] == 3.0
    assert math.isnan(numbers["p95"])
    assert "note" not in numbers and "slope" not in numbers and "min" not in numbers
    assert (
        '"p95":"NaN"' in RollingRow(rank=0, metric="m", window="w", stats=stats).model_dump_json()
    )


class FakeReader:
    """Two runs of 3 ranks x 2 metrics x 1 window."""

    def runs(self) -> list[RunInfo]:
        return [RunInfo(run=r, last_activity=1.0) for r in ("a", "b")]

    def latest(self, run: str) -> dict[tuple[int, str], float]:
        return {(rank, m): 1.0 for rank in range(3) for m in ("loss", "lr")}

    def rolling(self, run: str) -> list[RollingRow]:
        stats = RollingStats.model_validate({"count": 5, "mean": 2.0, "ema": 1.0})
        return [
            RollingRow(rank=rank, metric=m, window="50steps", stats=stats)
            for rank in range(3)
            for m in ("loss", "lr")
        ]


def test_metrics_export_every_stat_with_labels() -> None:
    text = render_metrics(FakeReader(), max_series=1000).decode()
    assert (
        'stepstream_rolling{metric="loss",rank="2",run="b",stat="ema",window="50steps"} 1.0' in text
    )
    assert 'stepstream_latest{metric="lr",rank="0",run="a"} 1.0' in text
    assert "stepstream_exporter_series 24.0" in text
    assert "stepstream_exporter_series_dropped 0.0" in text


def test_metrics_cardinality_is_capped_and_counted() -> None:
    text = render_metrics(FakeReader(), max_series=10).decode()
    assert "stepstream_exporter_series 10.0" in text
    assert "stepstream_exporter_series_dropped 14.0" in text
    assert text.count("stepstream_latest{") + text.count('stat="count"') == 10
