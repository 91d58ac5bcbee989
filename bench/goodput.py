"""Goodput benchmark: the live goodput stage 2 keeps per run against an offline
recomputation from the raw series of the same job.

Runs real gloo DDP jobs (`bench/ddp_job.py`) through the embedded stack: rank 0
evaluating and checkpointing alone, declared (eval, checkpoint badput); a fail-slow rank
(slowest-rank badput, attributed to it); a job whose input pipeline slows (data wait).
After each job it reads `reader.goodput(run)` (what users read) and recomputes the same
figures offline from every rank's stored series (`perf/step_time_s`, `perf/data_wait_s`,
`perf/forward_s`, `perf/eval_s`, `perf/checkpoint_s`, each point's step and event time),
steps in order, only those every rank reported, with `processors.goodput.GoodputMeter`.
The error per cause is |live - offline| in percentage points of the wall time, and the
ETTR's error in points.

    PYTHONPATH=. .venv/bin/python bench/goodput.py

Last line: ``ettr=… max_error_pp=…`` (ettr: the live ETTR of the first job).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.detection import Job, embedded_stack, run_job
from processors.goodput import GoodputMeter
from query.reader import MetricsReader
from stepstream import vocabulary as vocab
from stepstream.contract import Goodput

SERIES = (
    vocab.STEP_TIME.name,
    vocab.DATA_WAIT.name,
    vocab.FORWARD.name,
    vocab.EVAL_TIME.name,
    vocab.CHECKPOINT_TIME.name,
)


def jobs(quick: bool) -> list[Job]:
    """The jobs: rank 0's declared duties, a fail-slow rank, a slower input pipeline."""
    scale = 0.5 if quick else 1.0
    return [
        Job("goodput-duties", "rank0_duties", 3, 260, 0, 80, scale, seed=51, work_ms=5),
        Job("goodput-failslow", "failslow", 3, 400, 2, 100, 0.5, seed=52, work_ms=10),
        Job("goodput-slowdown", "slowdown", 2, 400, 0, 150, 1.0, seed=53, work_ms=10),
    ]


def offline(reader: MetricsReader, run: str, job: Job) -> Goodput:
    """The goodput recomputed from the stored raw series of every rank."""
    steps: dict[int, dict[int, dict[str, float]]] = {}
    times: dict[int, float] = {}
    for rank in range(job.world):
        for name in SERIES:
            series = reader.series_by_time(run, name, rank=rank)
            for point in series.points:
                if point.step is None:
                    continue
                steps.setdefault(point.step, {}).setdefault(rank, {})[name] = point.value
                if point.t is not None:
                    times[point.step] = max(times.get(point.step, 0.0), point.t)
    meter = GoodputMeter()
    for step in sorted(steps):
        ranks = steps[step]
        if len(ranks) == job.world and step in times:
            meter.add_step(step, times[step], ranks)
    return meter.snapshot(run)


def compare(live: Goodput, again: Goodput) -> tuple[float, dict[str, float]]:
    """The largest error in points of the wall time, and the error per cause."""
    wall = max(again.wall_s, 1e-9)
    errors = {
        cause: abs(live.badput_s.get(cause, 0.0) - again.badput_s.get(cause, 0.0)) / wall * 100
        for cause in vocab.BADPUT_CAUSES
    }
    errors["ettr"] = abs((live.ettr or 0.0) - (again.ettr or 0.0)) * 100
    return max(errors.values()), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter declared phases")
    args = parser.parse_args()
    worst = 0.0
    first: float | None = None
    with (
        tempfile.TemporaryDirectory(prefix="stepstream-goodput-") as tmp,
        embedded_stack(Path(tmp) / "state") as settings,
    ):
        logs = Path(tmp) / "logs"
        logs.mkdir()
        for job in jobs(args.quick):
            result = run_job(settings, job, logs)
            with MetricsReader.from_url(settings.redis_url, settings.key_prefix) as reader:
                live = reader.goodput(result.run)
                again = offline(reader, result.run, job)
            if live is None:
                print(f"{job.name:18} NO LIVE GOODPUT", flush=True)
                worst = float("inf")
                continue
            error, errors = compare(live, again)
            worst = max(worst, error)
            if first is None:
                first = live.ettr
            causes = " ".join(
                f"{cause}={live.badput_s.get(cause, 0.0):.2f}s({errors[cause]:.2f}pp)"
                for cause in vocab.BADPUT_CAUSES
            )
            slowest = ",".join(f"r{r}:{s:.2f}s" for r, s in live.slowest_by_rank.items())
            print(
                f"{job.name:18} steps live/offline={live.steps}/{again.steps} "
                f"wall={live.wall_s:.2f}s/{again.wall_s:.2f}s "
                f"ettr={live.ettr or 0:.4f}/{again.ettr or 0:.4f} "
                f"({errors['ettr']:.2f}pp) {causes} slowest_by_rank={slowest or '-'}",
                flush=True,
            )
    print(f"ettr={first if first is not None else float('nan'):.4f} max_error_pp={worst:.2f}")


if __name__ == "__main__":
    main()
