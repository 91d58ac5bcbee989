"""What a user sees of a quiet fault: one fail-slow job through the embedded stack, then
the CLI's alert list and goodput breakdown for its run, as a user would type them.

    PYTHONPATH=. .venv/bin/python bench/cli_sample.py            # a rank 20 % slower
    PYTHONPATH=. .venv/bin/python bench/cli_sample.py --fault slowdown

The job is `bench/ddp_job.py` (3 gloo ranks on CPU) instrumented as the README shows; the
commands run as separate processes with the stack's settings in their environment.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.detection import Job, embedded_stack, run_job
from stepstream.stack import settings_env

ROOT = Path(__file__).resolve().parents[1]

JOBS = {
    "failslow": Job("failslow20-3r", "failslow", 3, 500, 1, 200, 0.20, seed=32, work_ms=10),
    "slowdown": Job("slowdown-3r", "slowdown", 3, 700, 0, 250, 1.0, seed=35, work_ms=10),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", choices=sorted(JOBS), default="failslow")
    args = parser.parse_args()
    job = JOBS[args.fault]
    with tempfile.TemporaryDirectory(prefix="stepstream-sample-") as tmp:
        state, logs = Path(tmp) / "state", Path(tmp) / "logs"
        logs.mkdir()
        with embedded_stack(state) as settings:
            result = run_job(settings, job, logs)
            env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
            for command in (
                ["alerts", "--run", result.run],
                ["query", "--run", result.run, "--goodput"],
            ):
                shown = " ".join(["stepstream", *command])
                print(f"$ {shown}", flush=True)
                subprocess.run(
                    [sys.executable, "-m", "stepstream.cli", *command], env=env, check=False
                )
                print(flush=True)


if __name__ == "__main__":
    main()
