"""Alert commands: `stepstream alerts` (list or follow), silences and rule files."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from stepstream.cli._base import (
    JsonFlag,
    RedisUrl,
    StateDir,
    _ctrl_c,
    _guard,
    _load,
    app,
    console,
    err_console,
)
from stepstream.errors import StepstreamError

SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


def _alert_line(alert: Any) -> str:
    where = f"rank {alert.rank}" if alert.rank is not None else "run"
    step = f" step {alert.step}" if alert.step is not None else ""
    colour = {"critical": "red", "warning": "yellow"}.get(alert.severity, "cyan")
    # Firing shows its severity; the other states are named (pending never paged anyone).
    state = alert.severity.upper() if alert.status == "firing" else alert.status.upper()
    if alert.status in ("resolved", "withdrawn"):
        colour = "dim"
    elif alert.status == "pending":
        colour = "magenta"
    return (
        f"[{colour}]{state:<9}[/{colour}] {alert.run} {where}{step}  {alert.rule}: {alert.summary}"
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
    """List active and recent alerts from Redis, or follow the alerts topic live.

    Each transition shows its state: the severity while firing, PENDING while a rule's
    condition holds for less than its `for`, RESOLVED, WITHDRAWN (pending, then cleared).
    """

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
                    pending = sum(a.status == "pending" for a in active)
                    head = f"{len(active) - pending} firing" + (
                        f", {pending} pending" if pending else ""
                    )
                    console.print(f"[bold]{name}[/bold]: {head}")
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
            from query.views import local_time

            console.print(f"silence [bold]{silence.id}[/bold] until {local_time(silence.ends_at)}")

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
        from query.views import local_time

        table = Table("id", "matchers", "ends", "by", "comment")
        for s in silences:
            table.add_row(
                s.id,
                ", ".join(f"{k}={v}" for k, v in s.matchers.items()),
                local_time(s.ends_at),
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
