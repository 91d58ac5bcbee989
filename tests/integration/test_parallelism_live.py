"""Beyond DDP, end to end: FSDP2 on 2 and 4 ranks, HSDP (2 x 2 replicate x shard), tensor
parallel on a 2 x 2 dp x tp mesh and a 2-stage pipeline (GPipe, FSDP2 within each stage),
on CPU/gloo, instrumented only through the public SDK (`producers.init`, `watch()`), read
back only through the public reader.

A healthy job of each (and of DDP) trains to the end (FSDP2 crashed `watch()` before),
raises nothing, and the combined gradient norms stage 2 adds up from the ranks' shards equal what
`clip_grad_norm_` returns. A faulted job of each gets one slow rank (its data wait +30 ms a
step), a NaN in one rank's gradient shard, and then a hang of the slow rank: each is named
on the right rank, with its mesh coordinates.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from query.reader import MetricsReader
from stepstream.contract import Alert
from stepstream.settings import Settings
from stepstream.stack import free_port, settings_env

from .conftest import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "bench" / "parallel_job.py"

#: (parallelism, world): FSDP2 on 2 and 4 ranks, HSDP, tensor parallel, pipeline.
JOBS = [("fsdp", 2), ("fsdp", 4), ("hsdp", 4), ("tp", 4), ("pp", 4)]


class Ranks:
    """The ranks of one job, started as torchrun would; stopped by pid whatever happens."""

    def __init__(
        self, settings: Settings, run: str, parallelism: str, world: int, steps: int, faults: str
    ) -> None:
        self.reports = [Path(f"/tmp/{run}-r{r}.json") for r in range(world)]
        env = {
            **os.environ,
            **settings_env(settings),
            "PYTHONPATH": str(ROOT),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": "1",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        for rank in range(world):
            cmd = [sys.executable, str(JOB), run, parallelism, str(steps), faults]
            self.procs.append(
                subprocess.Popen(
                    [*cmd, str(self.reports[rank])],
                    env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )

    def wait(self, timeout: float) -> list[dict[str, Any]]:
        """Every rank's report, once all exited 0."""
        codes = [p.wait(timeout) for p in self.procs]
        if codes != [0] * len(codes):
            # The first rank to fail is the one to read (a signal: negative), its peers'
            # errors follow from it; each rank's tail, its own line, untruncated.
            tails = [p.stderr.read().decode()[-1500:] if p.stderr else "" for p in self.procs]
            told = "\n".join(
                f"--- rank {rank} exit {code}:\n{tail}"
                for rank, (code, tail) in enumerate(zip(codes, tails, strict=True))
            )
            raise AssertionError(f"exit codes {codes}\n{told}")
        return [json.loads(path.read_text()) for path in self.reports]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stderr:
                p.stderr.close()
        for path in self.reports:
            path.unlink(missing_ok=True)


@pytest.fixture
def ranks() -> Iterator[list[Ranks]]:
    """Jobs a test starts; killed by pid at its end, whatever happened."""
    started: list[Ranks] = []
    yield started
    for job in started:
        job.stop()


@pytest.mark.parametrize(("parallelism", "world"), [*JOBS, ("ddp", 2)])
def test_sharded_job_trains_and_its_combined_norms_are_clip_grad_norms(
    live_settings: Settings,
    reader: MetricsReader,
    ranks: list[Ranks],
    run_id: str,
    parallelism: str,
    world: int,
) -> None:
    steps = 30
    job = Ranks(live_settings, run_id, parallelism, world, steps, "none")
    ranks.append(job)
    reports = job.wait(150)
    assert all(r["flushed"] for r in reports)
    clip = {int(step): norm for step, norm in reports[0]["clip"].items()}
    assert len(clip) == steps

    def last_step_rows() -> dict[str, Any] | None:
        rows = {row.metric: row for row in reader.crossrank(run_id)}
        norm = rows.get("grad/global_norm")
        return rows if norm is not None and norm.step == steps - 1 else None

    rows = wait_for(last_step_rows, 30)
    # The job's norm, added up from the shares of every rank, is clip_grad_norm_'s.
    combined = rows["grad/global_norm"].combined
    assert combined is not None
    assert math.isclose(combined, clip[steps - 1], rel_tol=1e-4), (combined, clip[steps - 1])
    # Per layer too: every parameter's norm as the whole gradient's.
    layers: dict[str, float] = {}
    for report in reports:
        layers.update(report["layers"])
    assert len(layers) == 6
    for name, norm in layers.items():
        row = rows[f"grad/norm/{name}"]
        assert row.step == steps - 1
        assert row.combined is not None
        assert math.isclose(row.combined, norm, rel_tol=1e-4), (name, row.combined, norm)
    # No rank's share is charted as a metric of its own; DDP sends whole norms.
    assert not [m for m in rows if "norm_sq" in m]
    assert ("grad/shard_norm" in rows) == (parallelism != "ddp")
    # Nothing failed in the SDK and nothing was raised.
    latest = reader.latest(run_id)
    assert {latest[(r, "stepstream/sdk_errors")] for r in range(world)} == {0.0}
    assert [(a.rule, a.rank, a.summary) for a in reader.alerts(run_id)] == []


@pytest.mark.parametrize(("parallelism", "world"), JOBS)
def test_faults_of_a_sharded_job_are_named_on_the_right_rank_and_role(
    live_settings: Settings,
    reader: MetricsReader,
    ranks: list[Ranks],
    run_id: str,
    parallelism: str,
    world: int,
) -> None:
    slow = world - 1
    faults = f"slow:{slow}:15,nan:0:50,hang:{slow}:75"
    job = Ranks(live_settings, run_id, parallelism, world, 1000, faults)
    ranks.append(job)

    def named() -> dict[str, Alert] | None:
        found: dict[str, Alert] = {}
        for alert in reader.alerts(run_id):
            found.setdefault(alert.rule, alert)
        wanted = {"straggler", "nonfinite_origin", "hung_rank"}
        return found if wanted <= set(found) else None

    found = wait_for(named, 90)
    straggler, origin, hung = found["straggler"], found["nonfinite_origin"], found["hung_rank"]
    assert straggler.rank == slow, straggler.summary
    assert hung.rank == slow, hung.summary
    assert origin.rank == 0, origin.summary
    # The fault's role: the rank's mesh coordinates ride on the alert.
    mesh = dict(part.split("=") for part in straggler.labels["mesh"].split())
    if parallelism == "pp":
        assert mesh["pp"] == "1"  # rank 3 is in the second stage
    if parallelism == "tp":
        assert mesh["tp"] == "1"
    # The straggler was found before the NaN: no step after it could have hidden it.
    assert straggler.step is not None and 15 <= straggler.step < 50
    # Only these faults: no alert names a healthy rank (the NaN reaches every rank after
    # the optimizer step, so per-rank non-finite findings are the origin's consequences).
    wrong = [
        (a.rule, a.rank)
        for a in reader.alerts(run_id)
        if a.rule in ("straggler", "hung_rank", "dp_mismatch") and a.rank != slow
    ]
    assert wrong == []


def test_a_failing_sdk_hook_leaves_training_and_its_loss_series_intact(
    live_settings: Settings, reader: MetricsReader, ranks: list[Ranks], run_id: str
) -> None:
    steps = 20
    job = Ranks(live_settings, run_id, "fsdp", 2, steps, "sdkfail:1:0")
    ranks.append(job)
    reports = job.wait(150)
    assert all(r["flushed"] for r in reports)

    def counted() -> dict[tuple[int, str], float] | None:
        latest = reader.latest(run_id)
        return latest if latest.get((1, "stepstream/sdk_errors")) == 1.0 else None

    latest = wait_for(counted, 30)
    assert latest[(0, "stepstream/sdk_errors")] == 0.0
    for rank in (0, 1):
        points = reader.series(run_id, "loss", rank=rank).points
        assert [p.step for p in points] == list(range(steps)), rank
        assert all(math.isfinite(p.value) for p in points)
    # The failing part turned itself off; the rest of watch() went on on that rank.
    assert (1, "perf/step_time_s") in latest and (0, "grad/global_norm_sq") in latest
    assert (1, "grad/global_norm_sq") not in latest
