"""Commands of the local stack and its workers: up, down, status, worker, demo, and the
Redis set-up helper (`stepstream redis acl`)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table

from stepstream.cli._base import (
    EXIT_ERROR,
    JsonFlag,
    RedisUrl,
    StateDir,
    _context,
    _guard,
    _load,
    app,
    console,
)
from stepstream.errors import StackNotRunningError


@app.command()
def up(
    kafka_port: Annotated[int, typer.Option(help="Broker port; 0 picks a free one.")] = 0,
    redis_port: Annotated[int, typer.Option(help="Redis port; 0 picks a free one.")] = 0,
    workers: Annotated[bool, typer.Option(help="Also start processor and sink workers.")] = True,
    state_dir: StateDir = None,
    json_out: JsonFlag = False,
) -> None:
    """Start the embedded stack (tansu, Redis, workers) in the background."""
    from stepstream.interrupts import sigterm_interrupts
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
    from stepstream.faust_seam import check_internals, run_worker
    from stepstream.settings import Settings

    if stage is Stage.processor:
        from processors.app import create_processor_app as factory
    else:
        from sinks.app import create_sink_app as factory

    def start() -> tuple[Any, str]:
        settings = Settings()
        _context["settings"] = settings
        # run_worker checks too; here an upgraded faust or aiokafka is one line and an
        # exit code, before anything connects.
        check_internals()
        # The app first: it checks the rule file and detector parameters, so a mistake
        # there stops the worker before it needs a broker.
        worker_app = factory(settings)
        ensure_topics(settings)
        return worker_app, settings.log_level

    worker_app, log_level = _guard(start)
    run_worker(worker_app, log_level)


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
