"""Commands that read: `stepstream query` (runs, rolling stats, series, comparisons, views)
and `stepstream schema` (the wire format)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from stepstream.cli._base import (
    JsonFlag,
    RedisUrl,
    StateDir,
    _guard,
    _load,
    app,
    console,
)
from stepstream.errors import StepstreamError


@app.command()
def query(
    run: Annotated[str | None, typer.Option("--run", help="Run id; omit to list runs.")] = None,
    window: Annotated[str | None, typer.Option(help="One window, e.g. 50steps or 10s.")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="Latest value of each series.")] = False,
    series: Annotated[
        str | None, typer.Option("--series", help="A raw series: metric name.")
    ] = None,
    rank: Annotated[
        int | None,
        typer.Option("--rank", help="Rank of --series (default 0; with --compare: the mean)."),
    ] = None,
    from_step: Annotated[int | None, typer.Option("--from-step", help="First step.")] = None,
    to_step: Annotated[int | None, typer.Option("--to-step", help="Last step.")] = None,
    points: Annotated[
        int | None, typer.Option("--points", help="Downsample --series to about N points.")
    ] = None,
    alerts: Annotated[bool, typer.Option("--alerts", help="Alert transitions.")] = False,
    ranks: Annotated[bool, typer.Option("--ranks", help="Run metadata, rank liveness.")] = False,
    nodes: Annotated[
        bool, typer.Option("--nodes", help="Ranks grouped by node, per-node system metrics.")
    ] = False,
    across: Annotated[
        bool, typer.Option("--across-ranks", help="Stats across ranks, quality metrics.")
    ] = False,
    goodput: Annotated[
        bool, typer.Option("--goodput", help="Live goodput: ETTR and badput by cause.")
    ] = False,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare",
            help="Runs side by side, R1,R2 (2-6): --series per run, the mean of its ranks "
            "(or --rank).",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="A served model (with --drift or --performance).")
    ] = None,
    drift: Annotated[
        bool, typer.Option("--drift", help="--model: drift per feature, newest window.")
    ] = False,
    performance: Annotated[
        bool, typer.Option("--performance", help="--model: accuracy, AUC, CTR ... per window.")
    ] = False,
    version: Annotated[
        str | None, typer.Option("--version", help="--model: a version (default: newest).")
    ] = None,
    segment: Annotated[
        str | None, typer.Option("--segment", help="--performance: one segment, e.g. country=DE.")
    ] = None,
    redis_url: RedisUrl = None,
    state_dir: StateDir = None,
    json_out: JsonFlag = False,
) -> None:
    """Print a run's rolling stats from Redis (or the list of runs, or one of the views)."""
    from query import views as query_views
    from query.reader import MetricsReader

    compared = [r.strip() for r in (compare or "").split(",") if r.strip()]
    if compare is not None and (not 2 <= len(compared) <= 6 or series is None):
        sys.stderr.write("error: --compare takes 2-6 runs (R1,R2) and --series METRIC\n")
        raise typer.Exit(2)
    if (drift or performance) and model is None:
        sys.stderr.write("error: --drift and --performance need --model M\n")
        raise typer.Exit(2)

    def go() -> None:
        settings = _load(redis_url=redis_url, state_dir=state_dir)
        reader = MetricsReader.from_settings(settings)
        try:
            if model is not None:
                if performance:
                    view = query_views.performance_view(reader, model, version, segment)
                else:
                    view = query_views.drift_view(reader, model, version)
            elif compared and series is not None:
                view = query_views.compare_view(reader, compared, series, rank, from_step, to_step)
            elif run is None:
                view = query_views.runs_view(reader)
            elif series is not None:
                view = query_views.series_view(
                    reader, run, series, rank or 0, from_step, to_step, points
                )
            elif latest:
                view = query_views.latest_view(reader, run)
            elif alerts:
                view = query_views.alerts_view(reader, run)
            elif ranks:
                view = query_views.ranks_view(reader, run)
            elif nodes:
                view = query_views.nodes_view(reader, run)
            elif across:
                view = query_views.crossrank_view(reader, run)
            elif goodput:
                view = query_views.goodput_view(reader, run)
            else:
                view = query_views.rolling_view(reader, run, window)
        finally:
            reader.close()
        _show(view, json_out)

    _guard(go)


def _show(view: Any, json_out: bool) -> None:
    """Print a view: its JSON with ``--json``, else its tables."""
    if json_out:
        print(view.to_json())
        return
    for renderable in view.tables:
        console.print(renderable)


@app.command()
def models(
    redis_url: RedisUrl = None,
    state_dir: StateDir = None,
    json_out: JsonFlag = False,
) -> None:
    """List the served models (`producers.serving`), newest activity first, with versions."""
    from query import views as query_views
    from query.reader import MetricsReader

    def go() -> None:
        settings = _load(redis_url=redis_url, state_dir=state_dir)
        reader = MetricsReader.from_settings(settings)
        try:
            view = query_views.models_view(reader)
        finally:
            reader.close()
        _show(view, json_out)

    _guard(go)


@app.command()
def schema(
    topic: Annotated[
        str | None, typer.Option(help="Only this topic (full name, or suffix like telemetry).")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Print the JSON Schema of every topic's messages (the wire format; see
    docs/wire-format.md), generated from the contract's models."""
    from stepstream.schema import topic_schemas
    from stepstream.settings import Settings
    from stepstream.topics import Topics

    def go() -> None:
        doc = topic_schemas(Topics(Settings().topic_prefix))
        found = doc["topics"]
        if topic is not None:
            found = {n: t for n, t in found.items() if n == topic or n.endswith("." + topic)}
            if not found:
                raise StepstreamError(
                    f"no topic {topic!r}: choose one of {', '.join(doc['topics'])}"
                )
        if json_out:
            print(json.dumps({"version": doc["version"], "topics": found}, indent=2))
            return
        console.print(f"wire format v{doc['version']} (docs/wire-format.md)")
        for name, entry in found.items():
            console.print(f"\n[bold]{name}[/bold]  key: {entry['key']}  model: {entry['model']}")
            print(json.dumps(entry["schema"], indent=2))

    _guard(go)
