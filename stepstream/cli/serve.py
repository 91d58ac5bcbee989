"""`stepstream serve`: the dashboard, the HTTP query API and Prometheus /metrics."""

from __future__ import annotations

from typing import Annotated

import typer

from stepstream.cli._base import (
    RedisUrl,
    StateDir,
    _guard,
    _load,
    app,
    err_console,
)


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port of the HTTP API and dashboard.")] = 8321,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; other than loopback needs STEPSTREAM_UI_TOKEN."),
    ] = "127.0.0.1",
    redis_url: RedisUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Serve the web dashboard (/), the query API as HTTP JSON (OpenAPI at /docs) and
    Prometheus /metrics."""
    from query.dashboard.app import dashboard_options
    from query.dashboard.auth import dashboard_url
    from query.http_api import serve as serve_api
    from query.reader import MetricsReader

    def go() -> None:
        settings = _load(redis_url=redis_url, state_dir=state_dir)
        options = dashboard_options(settings, host)
        err_console.print(
            f"dashboard: {dashboard_url(host, port, options.access)}  "
            "(API docs: /docs, Prometheus: /metrics)",
            soft_wrap=True,
        )
        serve_api(
            lambda: MetricsReader.from_settings(settings),
            host,
            port,
            settings.metrics_max_series,
            options,
            settings.redis_url,
        )

    _guard(go)
