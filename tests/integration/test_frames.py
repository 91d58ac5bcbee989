"""Metrics as data on a real Redis: `reader.columns()` (numpy), `reader.frame()` (pandas),
the per-run lines of a comparison and `stepstream query --compare`, checked against the
reader's own series reads of what the sink wrote."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from query.reader import MetricsReader
from sinks.local_redis import LocalRedis

from .test_redis_store import all_messages, value, write_all

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STEPS = 60


@pytest.fixture(scope="module")
def stored() -> Iterator[tuple[LocalRedis, list[str]]]:
    """Two runs written by the sink's write path: ranks 0 and 1, loss and a grad norm
    over 60 steps, a NaN loss on rank 1 at step 30."""
    with LocalRedis() as srv:
        runs = ["fr-a", "fr-b"]
        for run in runs:
            write_all(srv.url, all_messages(run), flush_every=9)
        yield srv, runs


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True)
    )


def test_columns_are_numpy_and_hold_every_stored_point(
    stored: tuple[LocalRedis, list[str]],
) -> None:
    srv, (run, _) = stored
    with MetricsReader.from_url(srv.url) as reader:
        cols = reader.columns(run)
        assert cols.metrics == ("grad/norm:l1", "loss")
        assert {c.dtype.kind for c in (cols.step, cols.rank, cols.metric)} == {"i"}
        assert cols.value.dtype == np.float64 and len(cols) == 2 * 2 * STEPS
        for rank in (0, 1):
            mine = (cols.rank == rank) & (cols.metric == cols.metrics.index("loss"))
            assert cols.step[mine].tolist() == list(range(STEPS))
            assert _same(cols.value[mine].tolist(), [value(rank, s) for s in range(STEPS)])
        only = reader.columns(run, metrics=["loss"], ranks=[1], by="time")
        assert set(only.names()) == {"loss"} and set(only.rank.tolist()) == {1}
        assert only.t is not None
        assert only.t.tolist() == [1_700_000_000.0 + s / 10 for s in range(STEPS)]


def test_frame_is_a_dataframe_long_or_wide(stored: tuple[LocalRedis, list[str]]) -> None:
    pytest.importorskip("pandas")
    srv, (run, _) = stored
    with MetricsReader.from_url(srv.url) as reader:
        df = reader.frame(run, metrics=["loss"])
        assert list(df.columns) == ["step", "rank", "metric", "value"]
        assert str(df["metric"].dtype) == "category"
        assert len(df) == 2 * STEPS
        truth = reader.series(run, "loss", rank=1).points
        got = df[df["rank"] == 1]["value"].tolist()
        assert _same(got, [p.value for p in truth])
        wide = reader.frame(run, metrics=["loss"], wide=True)
        assert wide.shape == (STEPS, 2)
        assert wide.loc[10, ("loss", 0)] == value(0, 10)
        by_time = reader.frame(run, by="time", metrics=["loss"], ranks=[0])
        assert list(by_time.columns[:2]) == ["time", "step"]


def test_compare_lines_are_rank_means_or_one_rank(stored: tuple[LocalRedis, list[str]]) -> None:
    srv, (run, _) = stored
    with MetricsReader.from_url(srv.url) as reader:
        steps, mean = reader.run_line(run, "loss")
        assert steps.tolist() == list(range(STEPS))
        expected = [(value(0, s) + value(1, s)) / 2 for s in range(STEPS)]
        assert _same(mean.tolist(), expected)  # the NaN at step 30 shows in the mean
        _, one = reader.run_line(run, "loss", rank=0)
        assert one.tolist() == [value(0, s) for s in range(STEPS)]


def test_cli_compare_prints_a_line_per_run(stored: tuple[LocalRedis, list[str]]) -> None:
    srv, runs = stored
    base = [sys.executable, "-m", "stepstream.cli", "query", "--redis-url", srv.url]
    args = [*base, "--compare", ",".join(runs), "--series", "loss", "--json"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    doc = json.loads(out.stdout)
    assert [line["run"] for line in doc["runs"]] == runs and doc["rank"] is None
    assert doc["runs"][0]["values"][30] == "NaN"  # non-finite as JSON strings
    assert doc["runs"][1]["values"][0] == (value(0, 0) + value(1, 0)) / 2
    one = subprocess.run(
        [*args, "--rank", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(one.stdout)["runs"][0]["values"][30] == value(0, 30)
    table = subprocess.run(
        [*base, "--compare", ",".join(runs), "--series", "loss"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "fr-a" in table.stdout and "fr-b" in table.stdout
    bad = subprocess.run(
        [*base, "--compare", runs[0], "--series", "loss"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: --compare takes 2-6 runs (R1,R2) and --series METRIC"
    ]


def test_cli_export_parquet_holds_what_the_reader_reads(
    stored: tuple[LocalRedis, list[str]], tmp_path: Path
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    srv, (run, _) = stored
    out = tmp_path / "run.parquet"
    args = [sys.executable, "-m", "stepstream.cli", "export", "--run", run, "--parquet", str(out)]
    done = subprocess.run(
        [*args, "--redis-url", srv.url], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert f"{2 * 2 * STEPS} rows -> {out}" in " ".join(done.stdout.split())  # rich wraps
    table = pq.read_table(out).to_pydict()
    assert set(table) == {"run", "rank", "metric", "step", "t", "value"}
    rows = {
        (r, m, s): v
        for r, m, s, v in zip(
            table["rank"], table["metric"], table["step"], table["value"], strict=True
        )
    }
    with MetricsReader.from_url(srv.url) as reader:
        for rank in (0, 1):
            for p in reader.series(run, "loss", rank).points:
                got = rows[(rank, "loss", p.step)]
                assert got == p.value or (math.isnan(got) and math.isnan(p.value))
    assert set(table["run"]) == {run}
    assert table["t"][0] == 1_700_000_000.0


def test_frame_without_pandas_names_the_install_line(
    stored: tuple[LocalRedis, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, (run, _) = stored
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with MetricsReader.from_url(srv.url) as reader, pytest.raises(Exception) as err:
        reader.frame(run)
    assert "pip install 'stepstream[pandas]'" in str(err.value)
