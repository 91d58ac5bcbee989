"""The HTTP query API (FastAPI): the same queries as the Python API, as JSON, and a
Prometheus /metrics endpoint. OpenAPI docs at /docs, the schema at /openapi.json.

Run it with ``stepstream serve --port 8321``. Endpoints are plain (threadpool) functions
because the reader is the blocking redis-py client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Literal

import redis.exceptions as redis_errors
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from query import schemas
from query.nodes import NodeRow, run_nodes
from query.reader import (
    CrossRankRow,
    LatestValue,
    MetricsReader,
    ModelDrift,
    ModelInfo,
    ModelPerformance,
    QualityRow,
    RankLiveness,
    RunInfo,
    RunMeta,
    to_json,
)
from stepstream.contract import Alert, Goodput
from stepstream.errors import ConfigError
from stepstream.failures import explain_redis

if TYPE_CHECKING:
    from query.dashboard.app import DashboardOptions

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"


DOCS_ASSETS = "/docs-assets"


def add_offline_docs(api: FastAPI) -> None:
    """/docs with Swagger UI's JS, CSS and icon served by this server from the installed
    swagger-ui-bundle package: it works on an air-gapped cluster (no CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    api.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @api.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=api.openapi_url or "/openapi.json",
            title=f"{api.title} - docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            oauth2_redirect_url=None,
        )


def create_api(
    reader_factory: Callable[[], MetricsReader],
    metrics_max_series: int = 10_000,
    dashboard: DashboardOptions | None = None,
    redis_url: str = "",
) -> FastAPI:
    """The API over one reader, created when the app starts and closed when it stops;
    with `dashboard`, the web dashboard too (pages at /, see query/dashboard).
    `redis_url` (the reader's, credentials redacted) names the store in errors."""
    state: dict[str, MetricsReader] = {}
    extra: list[Callable[[], AbstractAsyncContextManager[None]]] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["reader"] = reader_factory()
        try:
            async with AsyncExitStack() as stack:
                for enter in extra:
                    await stack.enter_async_context(enter())
                yield
        finally:
            state.pop("reader").close()

    api = FastAPI(
        title="stepstream query API",
        version="1",
        description="Rolling metrics, raw series, rank liveness and alerts of training runs.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's /docs loads Swagger UI from a CDN: served locally below
        redoc_url=None,
    )
    add_offline_docs(api)

    def reader() -> MetricsReader:
        return state["reader"]

    @api.exception_handler(ConfigError)
    async def bad_name(_: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @api.exception_handler(redis_errors.RedisError)
    async def store_failed(_: Request, exc: Exception) -> JSONResponse:
        # The store down or refusing us is the operator's to fix, not a bug of the API: a
        # 503 that says what to check, not a bare 500.
        known = explain_redis(exc, redis_url or "redis://(the configured URL)")
        if known is None:
            detail = f"Redis error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            return JSONResponse(status_code=500, content={"detail": detail})
        return JSONResponse(status_code=503, content={"detail": str(known)})

    @api.get("/runs", response_model=list[RunInfo], summary="Runs, most recently active first")
    def runs() -> list[RunInfo]:
        return reader().runs()

    @api.get("/runs/{run}", response_model=RunMeta, summary="Run metadata and rank liveness")
    def run_meta(run: str, stale_after_s: float = 30.0) -> RunMeta:
        meta = reader().run_meta(run, stale_after_s)
        if meta.world is None and not meta.series and not meta.ranks:
            raise HTTPException(404, f"run {run!r} not found: GET /runs lists stored runs")
        return meta

    @api.get("/runs/{run}/ranks", response_model=list[RankLiveness], summary="Rank liveness")
    def ranks(run: str, stale_after_s: float = 30.0) -> list[RankLiveness]:
        return reader().ranks(run, stale_after_s)

    @api.get(
        "/runs/{run}/nodes",
        response_model=list[NodeRow],
        summary="Ranks grouped by node, with per-node system metrics",
    )
    def nodes(run: str, stale_after_s: float = 30.0) -> list[NodeRow]:
        return run_nodes(reader(), run, stale_after_s)

    @api.get("/runs/{run}/latest", response_model=list[LatestValue], summary="Latest values")
    def latest(run: str) -> list[LatestValue]:
        return reader().latest_values(run)

    # Rolling stats and series are written by to_json as the schemas' pydantic models
    # would be: FastAPI validating and serialising thousands of rows per request took
    # longer than the read.
    @api.get(
        "/runs/{run}/rolling", response_model=list[schemas.RollingRow], summary="Rolling stats"
    )
    def rolling(run: str, window: str | None = None) -> Response:
        return Response(to_json(reader().rolling(run, window)), media_type=JSON)

    @api.get(
        "/runs/{run}/crossrank",
        response_model=list[CrossRankRow],
        summary="Each metric across the ranks at the newest finished step",
    )
    def crossrank(run: str) -> list[CrossRankRow]:
        return reader().crossrank(run)

    @api.get(
        "/runs/{run}/goodput",
        response_model=Goodput | None,
        summary="Live goodput: effective training time ratio and badput by cause",
    )
    def goodput(run: str) -> Goodput | None:
        return reader().goodput(run)

    @api.get(
        "/runs/{run}/quality",
        response_model=list[QualityRow],
        summary="Run-level quality metrics (summed over ranks) by window",
    )
    def quality(run: str) -> list[QualityRow]:
        return reader().quality(run)

    @api.get(
        "/runs/{run}/series/{rank}/{metric:path}",
        response_model=schemas.SeriesResult,
        summary="A raw series by step or event time, downsampled for plotting",
    )
    def series(
        run: str,
        rank: int,
        metric: str,
        by: Literal["step", "time"] = "step",
        start: Annotated[float | None, Query(alias="from")] = None,
        end: Annotated[float | None, Query(alias="to")] = None,
        points: Annotated[int | None, Query(ge=2, le=100_000)] = None,
        method: Literal["lttb", "minmax", "none"] = "lttb",
    ) -> Response:
        if by == "step":
            result = reader().series(
                run,
                metric,
                rank,
                None if start is None else int(start),
                None if end is None else int(end),
                points,
                method,
            )
        else:
            result = reader().series_by_time(run, metric, rank, start, end, points, method)
        return Response(to_json(result), media_type=JSON)

    @api.get("/runs/{run}/alerts", response_model=list[Alert], summary="Alert transitions")
    def alerts(
        run: str, count: Annotated[int, Query(ge=1, le=10_000)] = 100, active: bool = False
    ) -> list[Alert]:
        """The run's newest `count` transitions, oldest first; with `active`, its open
        alerts instead: firing and pending (each `status` says which)."""
        return reader().active_alerts(run) if active else reader().alerts(run, count)

    @api.get("/models", response_model=list[ModelInfo], summary="Served models, newest first")
    def models() -> list[ModelInfo]:
        return reader().models()

    @api.get(
        "/models/{model}/drift",
        response_model=ModelDrift,
        summary="Drift per feature and of the score in a model version's judged windows",
    )
    def model_drift(model: str, version: str | None = None) -> ModelDrift:
        found = reader().drift(model, version)
        if found.version is None:
            raise HTTPException(404, f"model {model!r} not found: GET /models lists them")
        return found

    @api.get(
        "/models/{model}/performance",
        response_model=ModelPerformance,
        summary="Accuracy, precision, recall, F1, AUC, MSE/MAE, CTR and conversion by window",
    )
    def model_performance(
        model: str, version: str | None = None, segment: str | None = None
    ) -> ModelPerformance:
        found = reader().performance(model, version, segment)
        if found.version is None:
            raise HTTPException(404, f"model {model!r} not found: GET /models lists them")
        return found

    @api.get("/metrics", summary="Prometheus exposition of latest values and rolling stats")
    def metrics() -> Response:
        from query.prom_exporter import render_metrics

        return Response(render_metrics(reader(), metrics_max_series), media_type=PROMETHEUS_TEXT)

    if dashboard is not None:
        from query.dashboard.app import add_dashboard

        extra.append(add_dashboard(api, reader, dashboard))
    return api


def serve(
    reader_factory: Callable[[], MetricsReader],
    host: str,
    port: int,
    metrics_max_series: int,
    dashboard: DashboardOptions | None = None,
    redis_url: str = "",
) -> None:
    """Serve the API (and the dashboard, when given) with uvicorn until Ctrl-C."""
    import uvicorn

    uvicorn.run(
        create_api(reader_factory, metrics_max_series, dashboard, redis_url),
        host=host,
        port=port,
        log_level="warning",
        # Open event streams (dashboard tabs) must not hold Ctrl-C up.
        timeout_graceful_shutdown=2,
    )
