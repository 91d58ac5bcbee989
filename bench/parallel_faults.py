"""Faults of sharded jobs, named and timed: for FSDP2 (2 and 4 ranks), HSDP, tensor parallel
and a 2-stage pipeline on CPU/gloo (bench/parallel_job.py through the public SDK), one slow
rank (data wait +30 ms a step from step 15), a NaN in rank 0's gradient shard at step 50,
then a hang of the slow rank at step 75, against the embedded stack with its workers.

Per job and fault it prints the rank named (and the expected one), the alert's mesh label,
and the delay: from the fault's start (the rank's own clock, same machine) to the alert's
``raised_at``, in seconds, and in steps where the alert names one. Then a healthy job of
each (no fault) and the alerts it raised. Last line:
``named=<right>/<faults> false_alerts=<n> median_delay_s=<s>``. Run:
``python bench/parallel_faults.py`` (about 3 minutes). Prints figures; not a test.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from query.reader import MetricsReader
from stepstream.contract import Alert
from stepstream.settings import Settings
from stepstream.stack import free_port, running_stack, settings_env

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "bench" / "parallel_job.py"
JOBS = [("fsdp", 2), ("fsdp", 4), ("hsdp", 4), ("tp", 4), ("pp", 4)]
#: fault kind -> (the rule that names it, the fault's first step)
FAULTS = {"slow": ("straggler", 15), "nan": ("nonfinite_origin", 50), "hang": ("hung_rank", 75)}


def start(settings: Settings, run: str, par: str, world: int, steps: int, spec: str, tmp: Path):
    env = {
        **os.environ,
        **settings_env(settings),
        "PYTHONPATH": str(ROOT),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
    }
    return [
        subprocess.Popen(
            [sys.executable, str(JOB), run, par, str(steps), spec, str(tmp / f"{run}-r{r}.json")],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for r in range(world)
    ]


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def first_alerts(
    reader: MetricsReader, run: str, rules: set[str], timeout: float
) -> dict[str, Alert]:
    deadline = time.monotonic() + timeout
    found: dict[str, Alert] = {}
    while time.monotonic() < deadline and not rules <= set(found):
        for alert in reversed(reader.alerts(run)):  # oldest first
            if alert.status == "firing":
                found.setdefault(alert.rule, alert)
        time.sleep(0.2)
    return found


def main() -> None:
    delays: list[float] = []
    named = total = false_alerts = 0
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        base = Settings(state_dir=tmp / "stack", topic_prefix=f"pf{uuid.uuid4().hex[:6]}")
        with running_stack(base) as settings:
            reader = MetricsReader.from_url(settings.redis_url, settings.key_prefix)
            print("job  fault  rule  rank(expected)  mesh  delay_s  delay_steps")
            for par, world in JOBS:
                run = f"pf-{par}{world}-{uuid.uuid4().hex[:4]}"
                last = world - 1
                who = {"slow": last, "nan": 0, "hang": last}
                spec = ",".join(f"{k}:{who[k]}:{at}" for k, (_, at) in FAULTS.items())
                procs = start(settings, run, par, world, 1000, spec, tmp)
                try:
                    found = first_alerts(reader, run, {r for r, _ in FAULTS.values()}, 120)
                finally:
                    stop(procs)
                for kind, (rule, at) in FAULTS.items():
                    total += 1
                    alert = found.get(rule)
                    onset_file = tmp / f"{run}-r{who[kind]}.json.{kind}"
                    if alert is None or not onset_file.exists():
                        print(f"{par}-{world:<6} {kind:<6} {rule:<17} not named")
                        continue
                    delay = alert.raised_at - float(onset_file.read_text())
                    steps = (alert.step - at) if alert.step is not None else None
                    named += alert.rank == who[kind]
                    delays.append(delay)
                    print(
                        f"{par}-{world:<6} {kind:<6} {rule:<17} {alert.rank}({who[kind]})"
                        f"{'':<12} {alert.labels.get('mesh', '-'):<20} {delay:7.2f}  {steps}"
                    )
            for par, world in JOBS:
                run = f"pf-ok-{par}{world}-{uuid.uuid4().hex[:4]}"
                procs = start(settings, run, par, world, 150, "none", tmp)
                try:
                    codes = [p.wait(300) for p in procs]
                finally:
                    stop(procs)
                time.sleep(6)  # the last step finishes after stage 2's 5 s wait
                alerts = [(a.rule, a.rank) for a in reader.alerts(run)]
                false_alerts += len(alerts)
                print(f"healthy {par}-{world}: exit {codes}, 150 steps, alerts {alerts}")
            reader.close()
    median = statistics.median(delays) if delays else float("nan")
    print(f"named={named}/{total} false_alerts={false_alerts} median_delay_s={median:.2f}")


if __name__ == "__main__":
    main()
