"""Prometheus exposition of the latest rolling stats, with bounded cardinality.

One gauge family ``stepstream_rolling{run, rank, metric, window, stat}`` holds every
numeric stat (extra stats processors add appear as new ``stat`` values, no code change),
and ``stepstream_latest{run, rank, metric}`` the latest values. At most `max_series`
(run, rank, metric[, window]) series are exported per scrape, most recently active runs
first; ``stepstream_exporter_series_dropped`` counts the rest so a cap is never silent.
``stepstream_alerts{run, rank, alertname, severity, alertstate}`` is 1 per open alert,
``alertstate`` firing or pending, as Prometheus's ``ALERTS`` series.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class RollingCollector(Collector):
    """Collects from a MetricsReader on every scrape."""

    def __init__(self, reader: Any, max_series: int, max_runs: int = 100) -> None:
        self._reader = reader
        self._max_series = max_series
        self._max_runs = max_runs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauge families of one scrape."""
        rolling = GaugeMetricFamily(
            "stepstream_rolling",
            "Rolling window statistic of a training metric.",
            labels=["run", "rank", "metric", "window", "stat"],
        )
        latest = GaugeMetricFamily(
            "stepstream_latest",
            "Latest value of a training metric.",
            labels=["run", "rank", "metric"],
        )
        ettr = GaugeMetricFamily(
            "stepstream_goodput_ettr",
            "Effective training time ratio of a run (productive / wall seconds).",
            labels=["run"],
        )
        badput = GaugeMetricFamily(
            "stepstream_badput_seconds",
            "Seconds of a run's wall time lost, by cause (slowest_rank also by rank).",
            labels=["run", "cause", "rank"],
        )
        # Prometheus's own ALERTS series: 1 per open alert, pending ones included with
        # alertstate="pending" (one HVALS per run, outside the series cap like goodput).
        alerts = GaugeMetricFamily(
            "stepstream_alerts",
            "Open alerts of a run (1 each), like Prometheus's ALERTS: firing or pending.",
            labels=["run", "rank", "alertname", "severity", "alertstate"],
        )
        active_alerts = getattr(self._reader, "active_alerts", None)
        exported = dropped = 0
        runs = self._reader.runs()
        dropped_runs = max(0, len(runs) - self._max_runs)
        for info in runs[: self._max_runs]:
            found = self._reader.goodput(info.run)
            if found is not None:  # one run's few gauges: outside the series cap
                if found.ettr is not None:
                    ettr.add_metric([info.run], found.ettr)
                for cause, seconds in found.badput_s.items():
                    badput.add_metric([info.run, cause, ""], seconds)
                for rank, seconds in found.slowest_by_rank.items():
                    badput.add_metric([info.run, "slowest_rank", rank], seconds)
            for alert in active_alerts(info.run) if callable(active_alerts) else ():
                rank = "" if alert.rank is None else str(alert.rank)
                alerts.add_metric([info.run, rank, alert.rule, alert.severity, alert.status], 1)
            for (rank, metric), value in sorted(self._reader.latest(info.run).items()):
                if exported >= self._max_series:
                    dropped += 1
                    continue
                exported += 1
                latest.add_metric([info.run, str(rank), metric], value)
            for row in self._reader.rolling(info.run):
                if exported >= self._max_series:
                    dropped += 1
                    continue
                exported += 1
                labels = [info.run, str(row.rank), row.metric, row.window]
                for stat, value in row.stats.numbers().items():
                    rolling.add_metric([*labels, stat], value)
        yield rolling
        yield latest
        yield ettr
        yield badput
        yield alerts
        yield from self._models()
        series = GaugeMetricFamily(
            "stepstream_exporter_series", "Series exported in this scrape.", value=exported
        )
        yield series
        yield GaugeMetricFamily(
            "stepstream_exporter_series_dropped",
            "Series left out of this scrape by the cap (STEPSTREAM_METRICS_MAX_SERIES).",
            value=dropped,
        )
        yield GaugeMetricFamily(
            "stepstream_exporter_runs_dropped",
            "Runs left out of this scrape by the run cap.",
            value=dropped_runs,
        )

    def _models(self) -> Iterator[GaugeMetricFamily]:
        """Served models: each version's metrics over all windows and its newest drift."""
        performance = GaugeMetricFamily(
            "stepstream_model_metric",
            "A served model version's metric over all its windows (accuracy, auc, ctr ...).",
            labels=["model", "version", "metric"],
        )
        drift = GaugeMetricFamily(
            "stepstream_model_drift",
            "A feature's drift in a model version's newest judged window (js, psi, threshold).",
            labels=["model", "version", "feature", "stat"],
        )
        models = getattr(self._reader, "models", None)
        for info in (models() if callable(models) else [])[: self._max_runs]:
            perf = self._reader.performance(info.model)
            for name, value in (perf.total or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    performance.add_metric([info.model, str(perf.version), name], value)
            report = self._reader.drift(info.model).latest or {}
            rows = dict(report.get("features") or {})
            if report.get("score"):
                rows["__score__"] = report["score"]
            for feature, figures in rows.items():
                for stat in ("js", "psi", "threshold"):
                    value = figures.get(stat)
                    if isinstance(value, int | float):
                        drift.add_metric([info.model, str(perf.version), feature, stat], value)
        yield performance
        yield drift


def render_metrics(reader: Any, max_series: int) -> bytes:
    """The Prometheus text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RollingCollector(reader, max_series))
    return generate_latest(registry)
