"""What `stepstream query` shows: each view as JSON-ready data and as rich tables.

The CLI stays thin: it picks a view and prints either side of it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from query.reader import MetricsReader, RollingRow, to_json

# Stats shown first, in this order; any other numeric stat (std, p95 ...) follows.
_KNOWN_STATS = ("count", "mean", "min", "max", "last", "nonfinite")


@dataclass
class View:
    """One query's result: `data` (models or Structs of query.reader) for --json,
    `tables` for people."""

    data: Any
    tables: list[Any] = field(default_factory=list)

    def to_json(self) -> str:
        """JSON as pydantic writes it, so NaN and Infinity become strings as on the wire."""
        return to_json(self.data).decode()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def local_time(t: float) -> str:
    """Unix seconds as a table shows them, in local time (JSON keeps the seconds)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def runs_view(reader: MetricsReader) -> View:
    """Every run, most recently active first."""
    runs = reader.runs()
    table = Table("run", "world", "last activity")
    for info in runs:
        table.add_row(info.run, str(info.world or "?"), local_time(info.last_activity))
    return View(runs, [table])


def rolling_tables(
    run: str, rows: list[RollingRow], stats: Sequence[str] | None = None
) -> list[Table]:
    """One table per window; columns for `stats`, else every stat any row has."""
    by_window: dict[str, list[RollingRow]] = {}
    for row in rows:
        by_window.setdefault(row.window, []).append(row)
    tables = []
    for window, group in by_window.items():
        numbers = [row.stats.numbers() for row in group]
        extra = sorted({k for n in numbers for k in n} - set(_KNOWN_STATS))
        columns = list(stats) if stats else [*_KNOWN_STATS, *extra]
        table = Table(title=f"run {run} · window {window}")
        table.add_column("rank", justify="right")
        table.add_column("metric")
        for col in columns:
            table.add_column("non-finite" if col == "nonfinite" else col, justify="right")
        for row, n in zip(group, numbers, strict=True):
            cells = [
                str(int(n[c])) if c in ("count", "nonfinite") and c in n else _fmt(n.get(c))
                for c in columns
            ]
            table.add_row(str(row.rank), row.metric, *cells)
        tables.append(table)
    return tables


def rolling_view(reader: MetricsReader, run: str, window: str | None) -> View:
    """Rolling stats of a run, one table per window."""
    rows = reader.rolling(run, window)
    tables: list[Any] = rolling_tables(run, rows)
    if not rows:
        tables = [f"no rolling stats for run {run!r} (see 'stepstream query')"]
    return View(rows, tables)


def goodput_view(reader: MetricsReader, run: str) -> View:
    """The run's live goodput: ETTR, badput by cause, the slowest ranks' share."""
    found = reader.goodput(run)
    if found is None:
        return View(None, [f"run {run}: no goodput yet (no step every rank reported has finished)"])
    ettr = f"{found.ettr * 100:.1f} %" if found.ettr is not None else "-"
    table = Table(
        "cause",
        "seconds",
        "% of wall",
        title=f"run {run} · goodput at step {found.step}: ETTR {ettr} "
        f"({found.productive_s:.1f} s productive of {found.wall_s:.1f} s, {found.steps} steps)",
    )
    wall = found.wall_s or 1.0
    for cause, seconds in found.badput_s.items():
        table.add_row(cause, f"{seconds:.2f}", f"{seconds / wall * 100:.1f}")
    for rank, seconds in found.slowest_by_rank.items():
        table.add_row(
            f"  slowest_rank: rank {rank}", f"{seconds:.2f}", f"{seconds / wall * 100:.1f}"
        )
    return View(found, [table])


def crossrank_view(reader: MetricsReader, run: str) -> View:
    """Each metric across the ranks at the newest finished step, and quality windows."""
    rows = reader.crossrank(run)
    quality = reader.quality(run)
    table = Table(
        "metric",
        "step",
        "ranks",
        "mean",
        "min",
        "max",
        "std",
        "slowest/lowest rank",
        "highest rank",
        title=f"run {run} · across ranks",
    )
    for row in rows:
        table.add_row(
            row.metric,
            str(row.step),
            str(row.ranks),
            _fmt(row.mean),
            _fmt(row.min),
            _fmt(row.max),
            _fmt(row.std),
            str(row.argmin),
            str(row.argmax),
        )
    tables: list[Any] = [table]
    if quality:
        scores = Table("window", "metric", "examples", "value", title=f"run {run} · quality")
        for q in quality:
            count = "-" if q.stats.count is None else str(q.stats.count)
            scores.add_row(q.window, q.metric, count, _fmt(q.stats.mean))
        tables.append(scores)
    if not rows and not quality:
        tables = [f"no cross-rank stats for run {run!r} yet (they follow finished steps)"]
    return View([*rows, *quality], tables)


def latest_view(reader: MetricsReader, run: str) -> View:
    """Latest value of every series of a run."""
    rows = reader.latest_values(run)
    table = Table("rank", "metric", "latest", title=f"run {run} · latest")
    for row in rows:
        table.add_row(str(row.rank), row.metric, _fmt(row.value))
    return View(rows, [table])


def series_view(
    reader: MetricsReader,
    run: str,
    metric: str,
    rank: int,
    from_step: int | None,
    to_step: int | None,
    points: int | None,
) -> View:
    """One raw series by step, downsampled when `points` is given."""
    result = reader.series(run, metric, rank, from_step, to_step, points)
    title = (
        f"run {run} · rank {rank} · {metric} · {len(result.points)} of "
        f"{result.stored} points ({result.method})"
    )
    table = Table("step", "value", title=title)
    for point in result.points:
        table.add_row(str(point.step), _fmt(point.value))
    return View(result, [table])


def compare_view(
    reader: MetricsReader,
    runs: Sequence[str],
    metric: str,
    rank: int | None,
    from_step: int | None = None,
    to_step: int | None = None,
) -> View:
    """One metric of several runs side by side: per run the mean over its ranks at each
    step (or `rank`'s series); the table has a row per step and a column per run."""
    lines = []
    by_step: dict[int, dict[str, float]] = {}
    for run in runs:
        steps, values = reader.run_line(run, metric, rank, from_step, to_step)
        step_list, value_list = steps.tolist(), values.tolist()
        lines.append({"run": run, "steps": step_list, "values": value_list})
        for step, value in zip(step_list, value_list, strict=True):
            by_step.setdefault(step, {})[run] = value
    data = {"metric": metric, "rank": rank, "runs": lines}
    what = "mean of ranks" if rank is None else f"rank {rank}"
    table = Table("step", *runs, title=f"{metric} · {what} · {len(runs)} runs")
    for step in sorted(by_step):
        row = by_step[step]
        table.add_row(str(step), *(_fmt(row.get(run)) for run in runs))
    tables: list[Any] = [table]
    empty = [line["run"] for line in lines if not line["steps"]]
    if empty:
        tables.append(f"no {metric!r} points for run(s) {', '.join(empty)}")
    return View(data, tables)


def alerts_view(reader: MetricsReader, run: str) -> View:
    """Alert transitions of a run, oldest first."""
    alerts = reader.alerts(run)
    table = Table(
        "t",
        "status",
        "severity",
        "rule",
        "rank",
        "metric",
        "step",
        "summary",
        title=f"run {run} · alerts",
    )
    for a in alerts:
        table.add_row(
            f"{a.t:.3f}",
            a.status,
            a.severity,
            a.rule,
            str(a.rank),
            str(a.metric),
            str(a.step),
            a.summary,
        )
    return View(alerts, [table])


#: System metrics shown as columns of the nodes table (all of them are in --json).
NODE_COLUMNS = (
    ("host cpu %", "sys/host_cpu_pct"),
    ("host mem %", "sys/host_mem_pct"),
    ("ranks' cpu %", "sys/proc_cpu_pct"),
    ("ranks' rss GB", "sys/proc_rss_bytes"),
)


def nodes_view(reader: MetricsReader, run: str, stale_after_s: float = 30.0) -> View:
    """Ranks grouped by node, with per-node system metrics."""
    from query.nodes import run_nodes

    rows = run_nodes(reader, run, stale_after_s)
    table = Table(
        "node",
        "ranks",
        "alive",
        "steps",
        *(title for title, _ in NODE_COLUMNS),
        title=f"run {run} · nodes",
    )
    for row in rows:
        steps = "-" if row.step_min is None else f"{row.step_min}..{row.step_max}"
        cells = []
        for _, metric in NODE_COLUMNS:
            value = row.system.get(metric)
            if value is not None and metric.endswith("_bytes"):
                value /= 1e9
            cells.append(_fmt(value))
        alive = "?" if row.alive is None else f"{row.alive}/{len(row.ranks)}"
        table.add_row(row.node or "?", ",".join(map(str, row.ranks)), alive, steps, *cells)
    tables: list[Any] = [table]
    if not rows:
        tables = [f"no ranks stored for run {run!r} (see 'stepstream query')"]
    return View(rows, tables)


def ranks_view(reader: MetricsReader, run: str, stale_after_s: float = 30.0) -> View:
    """Run metadata and rank liveness."""
    meta = reader.run_meta(run, stale_after_s)
    table = Table(
        "rank",
        "node",
        "step",
        "last event",
        "age s",
        "alive",
        title=f"run {run} · world {meta.world} · windows {', '.join(meta.windows)}",
    )
    for r in meta.ranks:
        alive = "[green]yes" if r.alive else "[red]no"
        table.add_row(str(r.rank), r.node, str(r.step), f"{r.t:.3f}", _fmt(r.age_s), alive)
    return View(meta, [table])


# -- served models (issue 23) --------------------------------------------------------


def models_view(reader: MetricsReader) -> View:
    """Every served model, most recently active first, with its versions."""
    models = reader.models()
    table = Table("model", "versions (newest first)", "last prediction (unix s)")
    for m in models:
        table.add_row(m.model, ", ".join(m.versions), f"{m.last_t:.0f}")
    return View(models, [table])


def drift_view(reader: MetricsReader, model: str, version: str | None) -> View:
    """Drift of a model version in its newest judged window, feature by feature."""
    drift = reader.drift(model, version)
    tables: list[Any] = []
    latest = drift.latest
    if latest is not None:
        table = Table(
            "feature",
            "kind",
            "n",
            "PSI",
            "JS",
            "threshold",
            "KS ± bound",
            "W1 ± bound",
            "drift",
            "missing/type/range/unseen",
            title=f"{model} {drift.version}: window at {latest['start']} "
            f"({latest['predictions']} predictions, reference: {latest['reference']})",
        )
        rows = dict(latest["features"])
        if latest.get("score"):
            rows["(score)"] = latest["score"]
        for name, f in rows.items():
            ks = f.get("ks") or {}
            w1 = f.get("wasserstein") or {}
            q = f.get("quality") or {}
            table.add_row(
                name,
                str(f.get("kind", "")),
                str(f.get("n", 0)),
                _fmt(f.get("psi")),
                _fmt(f.get("js")),
                _fmt(f.get("threshold")),
                f"{_fmt(ks.get('value'))} ± {_fmt(ks.get('error_bound'))}" if ks else "-",
                f"{_fmt(w1.get('value'))} ± {_fmt(w1.get('error_bound'))}" if w1 else "-",
                "DRIFT" if f.get("drift") else "",
                "/".join(str(q.get(k, 0)) for k in ("missing", "type", "range", "unseen")),
            )
        tables.append(table)
    history = Table("window start", "predictions", "drifted", title="recent windows")
    for h in drift.history:
        history.add_row(str(h["start"]), str(h["predictions"]), ", ".join(h["drifted"]) or "-")
    tables.append(history)
    if drift.firing:
        tables.append(f"firing drift alerts: {', '.join(drift.firing)}")
    return View(drift, tables)


_PERF_COLUMNS = (
    "predictions",
    "labeled",
    "label_coverage",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "auc",
    "mse",
    "mae",
    "ctr",
    "conversion_rate",
)


def performance_view(
    reader: MetricsReader, model: str, version: str | None, segment: str | None
) -> View:
    """Model and user metrics of a model version: over all windows and in the newest
    windows (metrics as rows, so the table fits a terminal)."""
    perf = reader.performance(model, version, segment)
    columns: list[tuple[str, dict[str, Any]]] = []
    if perf.total is not None:
        columns.append(("all windows", perf.total))
    columns.extend((str(w["start"]), w) for w in perf.windows[-4:])
    table = Table(
        "metric",
        *(name for name, _ in columns),
        title=f"{model} {perf.version} segment {perf.segment}",
    )
    for metric in _PERF_COLUMNS:
        cells = []
        for _, metrics in columns:
            value = metrics.get(metric)
            cells.append(
                _fmt(value)
                if isinstance(value, float)
                else str(value if value is not None else "-")
            )
        table.add_row(metric, *cells)
    extra = f"segments: {', '.join(perf.segments) or '-'}; outcomes: {perf.outcomes or '-'}"
    return View(perf, [table, extra])
