"""The `stepstream` command line: local stack, workers, queries and the demo.

Exit codes: 0 success, 1 a stepstream error (the message says what to do), 2 bad usage,
3 no running stack where one is needed, 4 Redis or Kafka unreachable, 5 credentials or
permissions refused, 6 TLS handshake failed, 130 interrupted. Failures print one line;
``--debug`` (before the command) prints the traceback too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from stepstream.errors import StackNotRunningError, StepstreamError

app = typer.Typer(
    help="Streaming telemetry for distributed model training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

EXIT_ERROR = 1
EXIT_NO_STACK = 3
EXIT_INTERRUPTED = 130

T = TypeVar("T")

StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="Stack state folder (env STEPSTREAM_STATE_DIR).")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
RedisUrl = Annotated[
    str | None, typer.Option("--redis-url", help="Redis URL (env STEPSTREAM_REDIS_URL).")
]


# Set by the global --debug flag, and the settings the running command loaded (so a
# connection failure can name the URL it was about).
_context: dict[str, Any] = {"debug": False, "settings": None}


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of a failure, too.")
    ] = False,
) -> None:
    _context["debug"] = debug


def _overrides(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _load(**overrides: Any) -> Any:
    """Settings of a command (flags > environment > local stack > defaults), remembered."""
    from stepstream.stack import load_settings

    settings = load_settings(**_overrides(**overrides))
    _context["settings"] = settings
    return settings


def _fail(exc: BaseException, message: str, code: int) -> typer.Exit:
    """Print the one-line error (and the traceback under --debug); the Exit to raise."""
    if _context["debug"]:
        traceback.print_exception(exc, file=sys.stderr)
    # Plain write, no rich: a console would wrap a long line into several.
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    return typer.Exit(code)


@contextlib.contextmanager
def _ctrl_c() -> Iterator[threading.Event]:
    """An event set by Ctrl-C (SIGINT) while the block runs, instead of a KeyboardInterrupt
    that could land inside the Kafka client. The handler is installed even where SIGINT was
    inherited ignored (a command started with `&` from a script), so `kill -INT` stops it."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _guard(action: Callable[[], T]) -> T:
    """Run `action`, turning stepstream errors, and Redis and Kafka failures, into one line
    and a meaningful exit code."""
    try:
        return action()
    except StepstreamError as exc:
        raise _fail(exc, str(exc), exc.exit_code) from exc
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except KeyboardInterrupt as exc:
        err_console.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from exc
    except Exception as exc:
        from stepstream.failures import explain

        settings = _context["settings"]
        failure = explain(
            exc,
            settings.redis_url if settings is not None else None,
            settings.kafka_bootstrap if settings is not None else None,
        )
        if failure is None:
            raise
        raise _fail(exc, str(failure), failure.exit_code) from exc


@app.command()
def up(
    kafka_port: Annotated[int, typer.Option(help="Broker port; 0 picks a free one.")] = 0,
    redis_port: Annotated[int, typer.Option(help="Redis port; 0 picks a free one.")] = 0,
    workers: Annotated[bool, typer.Option(help="Also start processor and sink workers.")] = True,
    state_dir: StateDir = None,
    json_out: JsonFlag = False,
) -> None:
    """Start the embedded stack (tansu, Redis, workers) in the background."""
    from stepstream.signals import sigterm_interrupts
    from stepstream.stack import LocalStack

    def run() -> None:
        settings = _load(state_dir=state_dir)
        # Killed mid-start (SIGTERM), start() stops what it had started, as on Ctrl-C.
        with sigterm_interrupts(), console.status("starting the local stack") as status:
            stack = LocalStack(
                settings, kafka_port, redis_port, workers, progress=lambda m: status.update(m)
            )
            state = stack.start()
        if json_out:
            print(
                json.dumps({"kafka_bootstrap": state.kafka_bootstrap, "redis_url": state.redis_url})
            )
            return
        console.print(
            f"[green]stack up[/green]  kafka {state.kafka_bootstrap}  redis {state.redis_url}"
        )
        console.print(
            "Training scripts on this machine find it automatically; elsewhere set\n"
            f"  STEPSTREAM_KAFKA_BOOTSTRAP={state.kafka_bootstrap} "
            f"STEPSTREAM_REDIS_URL={state.redis_url}\n"
            "The broker keeps topics in memory: 'stepstream down' loses what Kafka buffered."
        )

    _guard(run)


@app.command()
def down(state_dir: StateDir = None) -> None:
    """Stop the embedded stack started by `stepstream up`."""
    from stepstream.stack import stop_stack

    def run() -> None:
        settings = _load(state_dir=state_dir)
        stopped = stop_stack(settings.state_dir)
        console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")

    _guard(run)


@app.command()
def status(state_dir: StateDir = None, json_out: JsonFlag = False) -> None:
    """Show whether the embedded stack runs, where, and which processes are alive."""
    from stepstream.stack import StackState

    def run() -> None:
        settings = _load(state_dir=state_dir)
        state = StackState.load(settings.state_dir)
        if state is None:
            raise StackNotRunningError(
                f"no local stack recorded in {settings.state_dir}: start one with 'stepstream up'"
            )
        alive = state.running()
        if json_out:
            print(
                json.dumps(
                    {
                        "kafka_bootstrap": state.kafka_bootstrap,
                        "redis_url": state.redis_url,
                        "processes": alive,
                    }
                )
            )
        else:
            table = Table(title=f"kafka {state.kafka_bootstrap}   redis {state.redis_url}")
            table.add_column("process")
            table.add_column("pid", justify="right")
            table.add_column("state")
            for proc in state.processes:
                ok = alive[proc.name]
                table.add_row(proc.name, str(proc.pid), "[green]running" if ok else "[red]stopped")
            console.print(table)
        if not all(alive.values()):
            raise typer.Exit(EXIT_ERROR)

    _guard(run)


@app.command()
def query(
    run: Annotated[str | None, typer.Option("--run", help="Run id; omit to list runs.")] = None,
    window: Annotated[str | None, typer.Option(help="One window, e.g. 50steps or 10s.")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="Latest value of each series.")] = False,
    series: Annotated[
        str | None, typer.Option("--series", help="A raw series: metric name.")
    ] = None,
    rank: Annotated[int, typer.Option("--rank", help="Rank of --series.")] = 0,
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
    redis_url: RedisUrl = None,
    state_dir: StateDir = None,
    json_out: JsonFlag = False,
) -> None:
    """Print a run's rolling stats from Redis (or the list of runs, or one of the views)."""
    from query import views as query_views
    from query.reader import MetricsReader

    def go() -> None:
        settings = _load(redis_url=redis_url, state_dir=state_dir)
        reader = MetricsReader.from_settings(settings)
        try:
            if run is None:
                view = query_views.runs_view(reader)
            elif series is not None:
                view = query_views.series_view(
                    reader, run, series, rank, from_step, to_step, points
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
        if json_out:
            print(view.to_json())
            return
        for renderable in view.tables:
            console.print(renderable)

    _guard(go)


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


@app.command()
def export(
    run: Annotated[str, typer.Option("--run", help="Run id.")],
    tensorboard: Annotated[
        Path | None, typer.Option("--tensorboard", help="Write TensorBoard event files here.")
    ] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Write a CSV file.")] = None,
    redis_url: RedisUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Export a run's stored series to TensorBoard event files and/or CSV."""
    from query.export import export_csv, export_tensorboard
    from query.reader import MetricsReader

    if tensorboard is None and csv_file is None:
        err_console.print("[red]error:[/red] give --tensorboard DIR and/or --csv FILE")
        raise typer.Exit(2)

    def go() -> None:
        settings = _load(redis_url=redis_url, state_dir=state_dir)
        with MetricsReader.from_settings(settings) as reader:
            if tensorboard is not None:
                n = export_tensorboard(reader, run, tensorboard)
                console.print(f"{n} scalars -> {tensorboard} (tensorboard --logdir {tensorboard})")
            if csv_file is not None:
                n = export_csv(reader, run, csv_file)
                console.print(f"{n} rows -> {csv_file}")

    _guard(go)


class Stage(StrEnum):
    """The worker stages."""

    processor = "processor"
    sink = "sink"


@app.command()
def worker(
    stage: Annotated[Stage, typer.Argument(help="Which stage to run.")],
) -> None:
    """Run one stage's faust worker in the foreground (used by `up` and docker-compose)."""
    from stepstream.admin import ensure_topics
    from stepstream.settings import Settings
    from stepstream.streaming import run_worker

    if stage is Stage.processor:
        from processors.app import create_processor_app as factory
    else:
        from sinks.app import create_sink_app as factory

    def start() -> tuple[Any, str]:
        settings = Settings()
        _context["settings"] = settings
        # The app first: it checks the rule file and detector parameters, so a mistake
        # there stops the worker before it needs a broker.
        worker_app = factory(settings)
        ensure_topics(settings)
        return worker_app, settings.log_level

    worker_app, log_level = _guard(start)
    run_worker(worker_app, log_level)


SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


def _alert_line(alert: Any) -> str:
    where = f"rank {alert.rank}" if alert.rank is not None else "run"
    step = f" step {alert.step}" if alert.step is not None else ""
    colour = {"critical": "red", "warning": "yellow"}.get(alert.severity, "cyan")
    state = "RESOLVED" if alert.status == "resolved" else alert.severity.upper()
    return (
        f"[{colour}]{state:<8}[/{colour}] {alert.run} {where}{step}  {alert.rule}: {alert.summary}"
    )


@app.command()
def alerts(
    run: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Print alerts as they arrive (Ctrl-C stops).")
    ] = False,
    severity: Annotated[
        str, typer.Option(help="Lowest severity shown: info, warning, critical.")
    ] = "info",
    count: Annotated[int, typer.Option(help="Recent transitions listed per run.")] = 20,
    redis_url: RedisUrl = None,
    state_dir: StateDir = None,
    json_out: JsonFlag = False,
) -> None:
    """List active and recent alerts from Redis, or follow the alerts topic live."""

    if severity not in SEVERITY_ORDER:
        err_console.print(f"[red]error:[/red] --severity must be one of {list(SEVERITY_ORDER)}")
        raise typer.Exit(2)
    floor = SEVERITY_ORDER[severity]

    def show(alert: Any) -> None:
        if SEVERITY_ORDER[alert.severity] < floor:
            return
        if json_out:
            print(alert.model_dump_json(), flush=True)
        else:
            console.print(_alert_line(alert), highlight=False)
            if alert.description and alert.status == "firing":
                # A hung rank's captured stack, or a rule's description: as plain text.
                console.print(textwrap.indent(alert.description, "    "), markup=False)

    def go() -> None:
        settings = _load(redis_url=redis_url, state_dir=state_dir)
        if follow:
            from query.alert_feed import AlertFeed

            with AlertFeed(settings, run=run, from_beginning=False) as feed, _ctrl_c() as stop:
                err_console.print(f"following {settings.topic_prefix}.alerts (Ctrl-C stops)")
                while not stop.is_set():
                    for alert in feed.poll(0.25):
                        show(alert)
            return
        from query.reader import MetricsReader

        reader = MetricsReader.from_settings(settings)
        try:
            runs = [run] if run else [r.run for r in reader.runs()]
            for name in runs:
                active = reader.active_alerts(name)
                if not json_out and active:
                    console.print(f"[bold]{name}[/bold]: {len(active)} firing")
                for alert in reader.alerts(name, count):
                    show(alert)
        finally:
            reader.close()

    _guard(go)


silence_app = typer.Typer(help="Silences: mute matching alerts for a while.", no_args_is_help=True)
app.add_typer(silence_app, name="silence")


def _silence_store(redis_url: str | None, state_dir: Path | None) -> Any:
    from processors.alerting.silence_store import SilenceStore
    from stepstream.keys import RedisKeys
    from stepstream.redis_client import sync_client

    settings = _load(redis_url=redis_url, state_dir=state_dir)
    client = sync_client(settings.redis_url, settings.redis_cluster)
    return SilenceStore(client, RedisKeys(settings.key_prefix))


@silence_app.command("add")
def silence_add(
    match: Annotated[
        list[str],
        typer.Option(
            "--match", "-m", help="label=glob, e.g. rule=spike, run=exp-*, rank=3 (repeatable)."
        ),
    ],
    duration: Annotated[str, typer.Option("--for", help="How long: 30m, 2h, 3600.")] = "1h",
    comment: Annotated[str, typer.Option(help="Why.")] = "",
    author: Annotated[str, typer.Option(help="Who.")] = "",
    redis_url: RedisUrl = None,
    state_dir: StateDir = None,
    json_out: JsonFlag = False,
) -> None:
    """Create a silence; matching alerts are still recorded but nobody is notified."""
    from processors.alerting.durations import parse_span
    from processors.alerting.silence_store import new_silence

    def go() -> None:
        matchers: dict[str, str] = {}
        for item in match:
            name, sep, pattern = item.partition("=")
            if not sep or not name or not pattern:
                raise StepstreamError(f"--match {item!r}: use label=glob, e.g. rule=spike")
            matchers[name.strip()] = pattern.strip()
        try:
            span = parse_span(duration)
        except ValueError as exc:
            raise StepstreamError(f"--for {duration!r}: {exc}") from exc
        if span.unit != "seconds" or span.amount <= 0:
            raise StepstreamError("--for must be a positive time, e.g. 30m or 2h")
        silence = new_silence(matchers, span.amount, author, comment)
        _silence_store(redis_url, state_dir).add(silence)
        if json_out:
            print(json.dumps({"id": silence.id, "ends_at": silence.ends_at}))
        else:
            console.print(
                f"silence [bold]{silence.id}[/bold] until "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(silence.ends_at))}"
            )

    _guard(go)


@silence_app.command("list")
def silence_list(
    all_: Annotated[bool, typer.Option("--all", help="Include expired silences.")] = False,
    redis_url: RedisUrl = None,
    state_dir: StateDir = None,
    json_out: JsonFlag = False,
) -> None:
    """List silences (active ones unless --all)."""

    def go() -> None:
        silences = _silence_store(redis_url, state_dir).list(include_expired=all_)
        if json_out:
            print(json.dumps([dataclasses.asdict(s) for s in silences]))
            return
        table = Table("id", "matchers", "ends", "by", "comment")
        for s in silences:
            table.add_row(
                s.id,
                ", ".join(f"{k}={v}" for k, v in s.matchers.items()),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.ends_at)),
                s.created_by,
                s.comment,
            )
        console.print(table)

    _guard(go)


@silence_app.command("expire")
def silence_expire(
    silence_id: Annotated[str, typer.Argument(help="The silence id.")],
    redis_url: RedisUrl = None,
    state_dir: StateDir = None,
) -> None:
    """End a silence now."""

    def go() -> None:
        if not _silence_store(redis_url, state_dir).expire(silence_id):
            raise StepstreamError(f"no silence {silence_id!r}: see 'stepstream silence list --all'")
        console.print(f"silence {silence_id} expired")

    _guard(go)


redis_app = typer.Typer(help="Redis set-up helpers.", no_args_is_help=True)
app.add_typer(redis_app, name="redis")


@redis_app.command("acl")
def redis_acl(
    query_only: Annotated[
        bool, typer.Option("--query-only", help="A read-only user: queries, serve, exports.")
    ] = False,
    user: Annotated[str, typer.Option("--user", help="ACL user name.")] = "stepstream",
    password: Annotated[
        str, typer.Option("--password", help="Password to put in the line.")
    ] = "CHANGE-ME",
    redis_version: Annotated[
        str | None,
        typer.Option(
            "--redis-version",
            help="Server version, e.g. 7.0 or 7.2 (Valkey: 7.2); omit to ask the server "
            "at --redis-url / STEPSTREAM_REDIS_URL.",
        ),
    ] = None,
    redis_url: RedisUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Print the ACL SETUSER line of a least-privilege stepstream user for this server."""
    from stepstream.keys import RedisKeys
    from stepstream.redis_acl import acl_rules, parse_version, setuser_line

    def go() -> None:
        settings = _load(redis_url=redis_url, state_dir=state_dir)
        if redis_version is not None:
            version = parse_version(redis_version)
        else:
            from stepstream.redis_client import sync_client

            client = sync_client(settings.redis_url)
            try:
                info = client.info("server")
            finally:
                client.close()
            version = parse_version(str(info["redis_version"]))
        rules = acl_rules(RedisKeys(settings.key_prefix), query_only, version)
        print(setuser_line(user, password, rules))

    _guard(go)


rules_app = typer.Typer(help="Alert rule files.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


@rules_app.command("check")
def rules_check(
    path: Annotated[Path, typer.Argument(help="Rule file (YAML).")],
    json_out: JsonFlag = False,
) -> None:
    """Validate a rule file; exit 1 and list each problem with its line when invalid."""
    from processors.alerting.rules import load_rules

    def run() -> None:
        rules = load_rules(path)
        if json_out:
            print(
                json.dumps(
                    [{"name": r.name, "line": r.line, "severity": r.severity} for r in rules]
                )
            )
            return
        console.print(f"[green]ok[/green] {path}: {len(rules)} rules")
        for rule in rules:
            source = rule.detector or (rule.condition.text if rule.condition else "")
            console.print(f"  line {rule.line}: {rule.name} [{rule.severity}] {source}")

    _guard(run)


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


@app.command()
def demo(
    steps: Annotated[int, typer.Option(help="Training steps per rank.")] = 60,
    nan_step: Annotated[int, typer.Option(help="Step at which rank 1 logs a NaN loss.")] = 40,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the alert.")] = 90.0,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve", help="Keep the stack up afterwards and serve the dashboard (Ctrl-C stops)."
        ),
    ] = False,
    port: Annotated[int, typer.Option(help="Dashboard port with --serve.")] = 8321,
) -> None:
    """Run the whole pipeline on a private embedded stack with a 2-rank training job."""
    from stepstream.cli.demo import run_demo

    ok = _guard(
        lambda: run_demo(
            console,
            steps=steps,
            nan_step=nan_step,
            timeout=timeout,
            serve_port=port if serve else None,
        )
    )
    raise typer.Exit(0 if ok else EXIT_ERROR)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(app())
