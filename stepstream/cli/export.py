"""`stepstream export`: a run's stored series as TensorBoard event files, CSV or Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stepstream.cli._base import (
    RedisUrl,
    StateDir,
    _guard,
    _load,
    app,
    console,
    err_console,
)


@app.command()
def export(
    run: Annotated[str, typer.Option("--run", help="Run id.")],
    tensorboard: Annotated[
        Path | None, typer.Option("--tensorboard", help="Write TensorBoard event files here.")
    ] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Write a CSV file.")] = None,
    parquet: Annotated[
        Path | None,
        typer.Option("--parquet", help="Write a Parquet file (pip install 'stepstream[parquet]')."),
    ] = None,
    redis_url: RedisUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Export a run's stored series to TensorBoard event files, CSV and/or Parquet."""
    from query.export import export_csv, export_parquet, export_tensorboard
    from query.reader import MetricsReader

    if tensorboard is None and csv_file is None and parquet is None:
        err_console.print(
            "[red]error:[/red] give --tensorboard DIR, --csv FILE and/or --parquet FILE"
        )
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
            if parquet is not None:
                n = export_parquet(reader, run, parquet)
                console.print(f"{n} rows -> {parquet}")

    _guard(go)
