"""The dashboard's pages, JSON endpoints and live event stream, added to the query API.

Pages are static HTML/CSS/JS shipped in this package (no CDN, no Node); their data comes
from ``/ui/api/...`` endpoints built on the same reader as the HTTP API, and live changes
from ``/ui/api/events`` (server-sent events fed by one Redis subscription, see hub.py).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from query.dashboard.auth import TOKEN_HEADER, TOKEN_QUERY, Access, resolve_access
from query.dashboard.hub import UpdateHub, overflow_frame, sse_frame
from query.dashboard.shaping import (
    alert_incidents,
    chart_line,
    check_matchers,
    glob_filter,
    metric_entries,
    rank_grid,
    run_row,
    section_list,
    silence_matchers,
)
from query.reader import MetricsReader
from stepstream.keys import check_run_id

if TYPE_CHECKING:
    from stepstream.settings import Settings

STATIC = "/ui/static"
TOKEN_COOKIE = "stepstream_ui_token"
KEEPALIVE_S = 15.0
MAX_CHART_RANKS = 1024
MIN_COMPARE, MAX_COMPARE = 2, 6
# Pages may load only from this server: scripts, styles, images, connections.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class DashboardOptions:
    """How the dashboard is served: access rules and where live updates come from."""

    access: Access
    hub_client: Callable[[], Any] | None = None
    """Makes an async redis client for the live-update subscription; None: no push."""
    stale_after_s: float = 30.0


class SilenceRequest(BaseModel):
    """A silence posted by a page."""

    matchers: dict[str, str] | None = None
    fingerprint_of: str | None = Field(
        None, description="Silence this run's alert (by fingerprint): its run, rule, rank."
    )
    run: str | None = None
    duration_s: float = Field(3600.0, gt=0, le=30 * 86400)
    comment: str = Field("", max_length=500)
    created_by: str = Field("dashboard", max_length=100)


def static_dir() -> Any:
    """The installed static files (package data, also from a wheel)."""
    return resources.files("query.dashboard") / "static"


def _presented(request: Request) -> str | None:
    header = request.headers.get(TOKEN_HEADER)
    if header:
        return header
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get(TOKEN_QUERY) or request.cookies.get(TOKEN_COOKIE)


def add_dashboard(
    api: FastAPI, reader: Callable[[], MetricsReader], options: DashboardOptions
) -> Callable[[], Any]:
    """Add the dashboard to `api`; returns the async context manager factory the app's
    lifespan enters (it holds the live-update subscription)."""
    access = options.access
    hub: UpdateHub | None = None

    @api.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Response:
        path = request.url.path
        needs = access.reads_need_token and not path.startswith(STATIC)
        if needs and not access.allows(_presented(request)):
            return JSONResponse(
                status_code=401,
                content={
                    "detail": "this server needs its token: open the URL with ?token=..., "
                    f"or send the {TOKEN_HEADER} header (STEPSTREAM_UI_TOKEN)"
                },
            )
        response: Response = await call_next(request)
        if not path.startswith(("/docs", "/docs-assets")):
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "no-referrer")
        # A token in the URL becomes a cookie for the page's later reads (navigation and
        # EventSource cannot send headers); writes still need the header.
        presented = request.query_params.get(TOKEN_QUERY)
        if presented and access.allows(presented) and access.reads_need_token:
            response.set_cookie(TOKEN_COOKIE, presented, httponly=True, samesite="strict")
        return response

    def require_write_token(request: Request) -> None:
        if not access.allows(request.headers.get(TOKEN_HEADER)):
            raise HTTPException(
                403,
                "silencing needs the server's token: open the dashboard with the URL "
                "`stepstream serve` printed (…/?token=…), or set STEPSTREAM_UI_TOKEN",
            )

    api.mount(STATIC, StaticFiles(directory=str(static_dir())), name="ui-static")

    def page(name: str) -> FileResponse:
        return FileResponse(str(static_dir() / name), media_type="text/html")

    @api.get("/", include_in_schema=False)
    def runs_page() -> FileResponse:
        return page("index.html")

    @api.get("/run/{run}", include_in_schema=False)
    def run_page(run: str) -> FileResponse:
        check_run_id(run)
        return page("run.html")

    @api.get("/model/{model}", include_in_schema=False)
    def model_page(model: str) -> FileResponse:
        # A served model's page (its data: GET /models/{model}/drift and /performance).
        check_run_id(model)
        return page("model.html")

    @api.get("/ui/api/runs", summary="Dashboard: runs with state, step rate, firing alerts")
    def ui_runs(glob: str | None = None) -> list[dict[str, Any]]:
        r = reader()
        infos = r.runs()
        wanted = set(glob_filter([i.run for i in infos], glob))
        infos = [i for i in infos if i.run in wanted]
        overview = r.runs_overview([i.run for i in infos])
        now = time.time()
        return [
            run_row(info, ranks, active, clock, now)
            for info, (ranks, active, clock) in zip(infos, overview, strict=True)
        ]

    @api.get("/ui/api/runs/{run}/overview", summary="Dashboard: a run's metrics and rank grid")
    def ui_overview(run: str) -> dict[str, Any]:
        r = reader()
        meta = r.run_meta(run, options.stale_after_s)
        if meta.world is None and not meta.series and not meta.ranks:
            raise HTTPException(404, f"run {run!r} not found: the runs page lists stored runs")
        active = r.active_alerts(run)
        metrics: dict[str, list[int]] = {}
        for field in meta.series:
            rank, _, metric = field.partition("|")
            metrics.setdefault(metric, []).append(int(rank))
        return {
            "run": run,
            "world": meta.world,
            "state": meta.state,
            "last_t": meta.last_t,
            "metrics": metric_entries(metrics),
            "sections": section_list(),
            "ranks": rank_grid(meta.ranks, active, options.stale_after_s),
            "stale_after_s": options.stale_after_s,
            "live": hub is not None,
            "can_write": True,
        }

    @api.get("/ui/api/runs/{run}/chart", summary="Dashboard: one metric, one line per rank")
    def ui_chart(
        run: str,
        metric: str,
        by: Literal["step", "time"] = "step",
        start: Annotated[float | None, Query(alias="from")] = None,
        end: Annotated[float | None, Query(alias="to")] = None,
        points: Annotated[int | None, Query(ge=2, le=100_000)] = None,
        method: Literal["lttb", "minmax", "none"] = "minmax",
        ranks: str | None = None,
    ) -> Response:
        r = reader()
        if ranks:
            wanted = sorted({int(x) for x in ranks.split(",") if x.strip()})[:MAX_CHART_RANKS]
        else:
            wanted = sorted(rank for rank, m in r.series_names(run) if m == metric)
            wanted = wanted[:MAX_CHART_RANKS]
        lines = []
        decimated_before = None
        if by == "step":
            columns = r.step_columns_many(
                run,
                [(rank, metric) for rank in wanted],
                None if start is None else int(start),
                None if end is None else int(end),
            )
            for rank, (steps, values, dec) in zip(wanted, columns, strict=True):
                lines.append(chart_line(rank, steps, values, points, method))
                if dec is not None:
                    decimated_before = max(decimated_before or dec, dec)
        else:
            for rank in wanted:
                result = r.series_by_time(run, metric, rank, start, end, None, "none")
                xs = [p.x for p in result.points]
                ys = [p.value for p in result.points]
                lines.append(chart_line(rank, xs, ys, points, method))
        doc = {
            "run": run,
            "metric": metric,
            "by": by,
            "lines": [asdict(line) for line in lines],
            "decimated_before": decimated_before,
        }
        # Straight to JSON text: FastAPI's encoder walks every float in Python, most of
        # the time of a 64-rank chart. Non-finite values are already strings.
        return Response(json.dumps(doc, allow_nan=False), media_type="application/json")

    @api.get("/compare", include_in_schema=False)
    def compare_page() -> FileResponse:
        return page("compare.html")

    def compare_runs(runs: str) -> list[str]:
        names = list(dict.fromkeys(r.strip() for r in runs.split(",") if r.strip()))
        if not MIN_COMPARE <= len(names) <= MAX_COMPARE:
            raise HTTPException(400, f"compare {MIN_COMPARE}-{MAX_COMPARE} runs: runs=R1,R2")
        for name in names:
            check_run_id(name)
        return names

    @api.get("/ui/api/compare", summary="Dashboard: the metrics of 2-6 runs, by section")
    def ui_compare(runs: str) -> dict[str, Any]:
        names = compare_runs(runs)
        r = reader()
        metrics: dict[str, set[int]] = {}
        found = []
        for run in names:
            series = r.series_names(run)
            if series:
                found.append(run)
            for _, metric in series:
                metrics.setdefault(metric, set())
        missing = [run for run in names if run not in found]
        if missing:
            raise HTTPException(404, f"no stored series for run(s) {', '.join(missing)}")
        return {"runs": names, "metrics": metric_entries(metrics), "sections": section_list()}

    @api.get("/ui/api/compare/chart", summary="Dashboard: one metric, one line per run")
    def ui_compare_chart(
        runs: str,
        metric: str,
        rank: Annotated[int | None, Query(ge=0)] = None,
        points: Annotated[int | None, Query(ge=2, le=100_000)] = None,
        method: Literal["lttb", "minmax", "none"] = "minmax",
    ) -> Response:
        names = compare_runs(runs)
        r = reader()
        lines = []
        for i, run in enumerate(names):
            steps, values = r.run_line(run, metric, rank)
            line = asdict(chart_line(i, steps.tolist(), values.tolist(), points, method))
            line["run"] = run
            lines.append(line)
        doc = {"runs": names, "metric": metric, "rank": rank, "by": "step", "lines": lines}
        return Response(json.dumps(doc, allow_nan=False), media_type="application/json")

    @api.get("/ui/api/runs/{run}/alerts", summary="Dashboard: alerts by incident with state")
    def ui_alerts(run: str, count: Annotated[int, Query(ge=1, le=10_000)] = 500) -> Any:
        from processors.alerting.silence_store import SilenceStore

        r = reader()
        transitions = r.alerts(run, count)
        silences = SilenceStore(r.client, r.keys).list()
        silenced = set()
        for alert in transitions:
            labels = {
                **alert.labels,
                "run": alert.run,
                "rule": alert.rule,
                "rank": "" if alert.rank is None else str(alert.rank),
                "metric": alert.metric or "",
            }
            if any(s.mutes(labels, time.time()) for s in silences):
                silenced.add(alert.fingerprint)
        return {
            "incidents": alert_incidents(transitions, silenced),
            "silences": [
                {**asdict(s), "active": True}
                for s in silences
                if fnmatch.fnmatchcase(run, s.matchers.get("run", "*"))
            ],
        }

    @api.get(
        "/ui/api/runs/{run}/panels", summary="Dashboard: goodput, quality and cross-rank panels"
    )
    def ui_panels(run: str) -> dict[str, Any]:
        r = reader()
        goodput = r.goodput(run)
        return {
            "goodput": goodput.model_dump(mode="json") if goodput is not None else None,
            "quality": [row.model_dump(mode="json") for row in r.quality(run)],
            "crossrank": [row.model_dump(mode="json") for row in r.crossrank(run)],
        }

    @api.post("/ui/api/silences", summary="Dashboard: add a silence (needs the token)")
    def ui_silence(body: SilenceRequest, request: Request) -> dict[str, Any]:
        from processors.alerting.silence_store import SilenceStore, new_silence

        require_write_token(request)
        r = reader()
        if body.fingerprint_of is not None:
            if body.run is None:
                raise HTTPException(400, "fingerprint_of needs the run")
            found = [a for a in r.alerts(body.run, 10_000) if a.fingerprint == body.fingerprint_of]
            if not found:
                raise HTTPException(404, f"no alert {body.fingerprint_of!r} in run {body.run!r}")
            matchers = silence_matchers(found[-1])
        else:
            try:
                matchers = check_matchers(body.matchers or {})
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from exc
        silence = new_silence(matchers, body.duration_s, body.created_by, body.comment)
        SilenceStore(r.client, r.keys).add(silence)
        return asdict(silence)

    @api.post("/ui/api/silences/{silence_id}/expire", summary="Dashboard: end a silence now")
    def ui_expire(silence_id: str, request: Request) -> dict[str, Any]:
        from processors.alerting.silence_store import SilenceStore

        require_write_token(request)
        r = reader()
        if not SilenceStore(r.client, r.keys).expire(silence_id):
            raise HTTPException(404, f"no silence {silence_id!r}")
        return {"id": silence_id, "expired": True}

    @api.get("/ui/api/events", summary="Dashboard: server-sent events of one run or all runs")
    async def ui_events(request: Request, run: str | None = None) -> StreamingResponse:
        if run is not None:
            check_run_id(run)
        if hub is None:
            raise HTTPException(503, "live updates are off on this server")
        live = hub
        listener = live.listen(run)

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield sse_frame("hello", json.dumps({"run": run}))
                while True:
                    try:
                        event, data = await asyncio.wait_for(listener.queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keepalive\n\n"
                        continue
                    if listener.overflowed:
                        listener.overflowed = False
                        yield overflow_frame()
                    if event == "bye":
                        return
                    yield sse_frame(event, data)
            finally:
                live.forget(listener)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @api.get("/ui/api/hub", summary="Dashboard: live-update subscription state")
    def ui_hub() -> dict[str, Any]:
        if hub is None:
            return {"live": False}
        return {"live": True, "listeners": hub.listeners, "messages": hub.messages}

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        nonlocal hub
        if options.hub_client is not None:
            hub = UpdateHub(options.hub_client, reader().keys)
            await hub.start()
        try:
            yield
        finally:
            if hub is not None:
                await hub.stop()
                hub = None

    return lifespan


def dashboard_options(settings: Settings, host: str) -> DashboardOptions:
    """The dashboard of a server bound to `host` with these settings: its token rules
    (ConfigError on a non-loopback bind without STEPSTREAM_UI_TOKEN) and live updates
    from the settings' Redis.

    On Redis Cluster the subscription is a plain connection to the URL's node: a classic
    PUBLISH on any node reaches every node's subscribers over the cluster bus, and
    redis-py's asyncio RedisCluster has no pub/sub (live updates used to be off there)."""
    from stepstream.redis_client import async_client

    access = resolve_access(host, settings.ui_token)
    return DashboardOptions(access, hub_client=lambda: async_client(settings.redis_url))
