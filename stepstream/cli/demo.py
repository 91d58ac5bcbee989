"""`stepstream demo`: the whole pipeline on a private embedded stack.

Starts tansu, Redis and the workers on free loopback ports, trains a 2-rank gloo job that
logs a NaN loss on rank 1, prints the alert as it arrives and the rolling stats read back
from Redis, and stops everything it started, also on failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

from rich.console import Console

from stepstream.errors import StepstreamError
from stepstream.interrupts import sigterm_interrupts
from stepstream.settings import Settings
from stepstream.stack import LocalStack, free_port, settings_env, stop_children

WORLD = 2
NAN_RANK = 1
DEMO_METRICS = ("loss", "accuracy", "lr")
DEMO_STATS = ("count", "mean", "min", "max", "p95", "last", "nonfinite")


def _spawn_trainers(
    settings: Settings, run: str, steps: int, nan_step: int
) -> list[subprocess.Popen[bytes]]:
    port = free_port()
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            **settings_env(settings),
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        cmd = [
            sys.executable,
            "-m",
            "producers.demo_trainer",
            "--run",
            run,
            "--steps",
            str(steps),
            "--nan-step",
            str(nan_step),
            "--nan-rank",
            str(NAN_RANK),
        ]
        procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL))
    return procs


def _serve_dashboard(console: Console, live: Settings, run: str, port: int) -> None:
    """Serve the dashboard over the demo's stack until Ctrl-C (uvicorn handles it)."""
    from query.dashboard.app import dashboard_options
    from query.dashboard.auth import dashboard_url
    from query.http_api import serve
    from query.reader import MetricsReader

    options = dashboard_options(live, "127.0.0.1")
    url = dashboard_url("127.0.0.1", port, options.access)
    console.print(f"dashboard: {url}", soft_wrap=True)
    console.print(
        f"run page:  http://127.0.0.1:{port}/run/{run}?token={options.access.token}",
        soft_wrap=True,
    )
    console.print("[dim]the stack and the dashboard stay up; Ctrl-C stops both[/dim]")
    with contextlib.suppress(KeyboardInterrupt):
        serve(
            lambda: MetricsReader.from_settings(live),
            "127.0.0.1",
            port,
            live.metrics_max_series,
            options,
        )


def run_demo(
    console: Console,
    steps: int = 60,
    nan_step: int = 40,
    timeout: float = 90.0,
    serve_port: int | None = None,
) -> bool:
    """Run the demo; True when the NaN alert and every rank's stats were seen. With
    `serve_port`, keep the stack up afterwards and serve the dashboard on that port until
    Ctrl-C."""
    if not 0 <= nan_step < steps:
        raise StepstreamError(f"--nan-step must be in [0, {steps}), got {nan_step}")
    from query.alert_feed import AlertFeed
    from query.reader import MetricsReader
    from query.views import rolling_tables

    started = time.monotonic()
    state_dir = tempfile.mkdtemp(prefix="stepstream-demo-")
    settings = Settings(state_dir=state_dir)
    run = time.strftime("demo-%Y%m%d-%H%M%S")
    sigterm = contextlib.ExitStack()  # cleanup below runs on SIGTERM too
    sigterm.enter_context(sigterm_interrupts())
    trainers: list[subprocess.Popen[bytes]] = []
    feed = reader = None
    stack = LocalStack(settings, progress=lambda msg: console.print(f"[dim]· {msg}[/dim]"))
    try:
        state = stack.start()
        live = settings.model_copy(
            update={"kafka_bootstrap": state.kafka_bootstrap, "redis_url": state.redis_url}
        )
        feed = AlertFeed(live, run=run)
        console.print(
            f"[dim]· training run {run}: {WORLD} ranks (gloo), {steps} steps, "
            f"NaN loss on rank {NAN_RANK} at step {nan_step}[/dim]"
        )
        trainers = _spawn_trainers(live, run, steps, nan_step)

        deadline = time.monotonic() + timeout
        nan_alert = None
        with console.status("waiting for alerts"):
            while nan_alert is None and time.monotonic() < deadline:
                for alert in feed.poll(0.5):
                    head = "ALERT" if alert.status == "firing" else alert.status.upper()
                    console.print(
                        f"[bold red]{head}[/bold red] [{alert.severity}] {alert.summary}"
                        f"  (rule={alert.rule}, fingerprint={alert.fingerprint})"
                    )
                    if (
                        alert.rule == "nonfinite"
                        and alert.rank == NAN_RANK
                        and alert.step == nan_step
                    ):
                        nan_alert = alert
                if any(p.poll() not in (None, 0) for p in trainers):
                    raise StepstreamError("a training rank failed; see its output above")
        codes = [p.wait(max(1.0, deadline - time.monotonic())) for p in trainers]
        if any(codes):
            raise StepstreamError(f"training ranks exited with codes {codes}")

        reader = MetricsReader.from_url(live.redis_url, live.key_prefix)
        rows = []
        with console.status("waiting for the final rolling stats in Redis"):
            while time.monotonic() < deadline:
                liveness = reader.ranks(run)
                if len(liveness) == WORLD and all(r.step == steps - 1 for r in liveness):
                    rows = reader.rolling(run)
                    break
                time.sleep(0.2)
        # What the trainers logged, over the last 50 steps; `stepstream query` shows all.
        shown = [r for r in rows if r.metric in DEMO_METRICS and r.window == "50steps"]
        for table in rolling_tables(run, shown, DEMO_STATS):
            console.print(table)
        ok = nan_alert is not None and {r.rank for r in rows} == set(range(WORLD))
        elapsed = time.monotonic() - started
        if ok:
            console.print(
                f"[green]demo ok[/green] in {elapsed:.1f}s: NaN alert for rank "
                f"{NAN_RANK} at step {nan_step}, rolling stats for {WORLD} ranks"
            )
        else:
            ranks_seen = sorted({r.rank for r in rows})
            console.print(
                f"[red]demo failed[/red] after {elapsed:.1f}s: "
                f"alert seen={nan_alert is not None}, ranks in Redis={ranks_seen}"
            )
        if serve_port is not None:
            _serve_dashboard(console, live, run, serve_port)
        return ok
    finally:
        stop_children(trainers)
        if feed is not None:
            feed.close()
        if reader is not None:
            reader.close()
        stack.stop()
        sigterm.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(state_dir)
