"""Exports a run's stored series as TensorBoard event files, CSV or Parquet."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from query.reader import MetricsReader
from stepstream.errors import ConfigError


def export_tensorboard(reader: MetricsReader, run: str, log_dir: Path) -> int:
    """Write every stored series of `run` under `log_dir/rank<r>/` (one TensorBoard run per
    rank, the metric name as tag); return the number of scalars written.

    Points without a step use their sequence number in time order as step, because
    TensorBoard plots by step.
    """
    from torch.utils.tensorboard import SummaryWriter

    written = 0
    writers: dict[int, SummaryWriter] = {}
    try:
        for rank, metric in reader.series_names(run):
            writer = writers.get(rank)
            if writer is None:
                writer = writers[rank] = SummaryWriter(log_dir=str(Path(log_dir) / f"rank{rank}"))
            for i, point in enumerate(reader.raw_points(run, metric, rank)):
                step = point.step if point.step is not None else i
                writer.add_scalar(metric, point.value, step, walltime=point.t)
                written += 1
    finally:
        for writer in writers.values():
            writer.close()
    return written


def export_csv(reader: MetricsReader, run: str, path: Path) -> int:
    """Write every stored point of `run` as CSV rows (run, rank, metric, step, t, value);
    return the number of rows."""
    rows = 0
    with Path(path).open("w", newline="") as out:
        table = csv.writer(out)
        table.writerow(["run", "rank", "metric", "step", "t", "value"])
        for rank, metric in reader.series_names(run):
            for point in reader.raw_points(run, metric, rank):
                table.writerow(
                    [
                        run,
                        rank,
                        metric,
                        "" if point.step is None else point.step,
                        "" if point.t is None else repr(point.t),
                        repr(point.value),
                    ]
                )
                rows += 1
    return rows


def export_parquet(reader: MetricsReader, run: str, path: Path) -> int:
    """Write every stored point of `run` with a step as a Parquet file (needs the
    ``parquet`` extra): columns run, rank, metric (dictionary-encoded), step, t (event
    seconds, null where the rank's time index lacks the step) and value, from
    `MetricsReader.columns` without a Python object per row; return the number of rows."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError(
            "export --parquet needs pyarrow: pip install 'stepstream[parquet]'"
        ) from exc
    cols = reader.columns(run, by="time")
    n = len(cols)
    t = pa.array(cols.t, pa.float64(), mask=None if cols.t is None else np.isnan(cols.t))
    table = pa.table(
        {
            "run": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, np.int32)), pa.array([run], pa.string())
            ),
            "rank": pa.array(cols.rank, pa.int64()),
            "metric": pa.DictionaryArray.from_arrays(
                pa.array(cols.metric, pa.int32()), pa.array(list(cols.metrics), pa.string())
            ),
            "step": pa.array(cols.step, pa.int64()),
            "t": t,
            "value": pa.array(cols.value, pa.float64()),
        }
    )
    pq.write_table(table, str(path))
    return n
