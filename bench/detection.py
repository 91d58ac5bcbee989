"""Detection benchmark: real gloo DDP jobs with injected faults, through the embedded stack.

Each job is `bench/ddp_job.py` on 2-4 ranks, instrumented only as the README shows, with one
fault (or none) injected at a step. Alerts are read back through the public reader. A fault
is caught when an alert of one of its expected detectors fires after the fault's onset, on
the faulty rank where the fault has one. A false alert is any firing alert of a healthy job,
or of a fault job before its onset.

    PYTHONPATH=. .venv/bin/python bench/detection.py            # the full set (~10 min)
    PYTHONPATH=. .venv/bin/python bench/detection.py --quick    # one seed, short jobs

Prints one line per job, then
``recall=… false_per_10k=… median_delay_s=… max_delay_s=…``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from query.reader import MetricsReader
from stepstream import vocabulary as vocab
from stepstream.contract import Alert
from stepstream.settings import Settings
from stepstream.stack import free_port, running_stack, settings_env

JOB = Path(__file__).with_name("ddp_job.py")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Expect:
    """What catching a fault means: one of `rules` fires after the onset, on the faulty
    rank when `on_rank`. `bound_s`: the delay bound when it is not the 2 s target (windowed
    and silence-based detectors; the reason is in `why`)."""

    rules: frozenset[str]
    on_rank: bool
    bound_s: float = 2.0
    why: str = ""


EXPECT: dict[str, Expect] = {
    "nan": Expect(frozenset({"nonfinite_origin"}), True),
    "lr_blowup": Expect(
        frozenset({"exploding_gradients", "divergence", "spike", "nonfinite"}), False
    ),
    "bad_batch": Expect(frozenset({"spike"}), True),
    "vanish": Expect(frozenset({"vanishing_gradients"}), False),
    "explode": Expect(frozenset({"exploding_gradients"}), False),
    "plateau": Expect(
        frozenset({"plateau"}), False, 60.0, "patience: 200 steps without improvement"
    ),
    "overfit": Expect(frozenset({"overfitting"}), False, 60.0, "judged at evaluations"),
    "slow_input": Expect(frozenset({"straggler"}), True, 5.0, "a 20-step median"),
    "crash": Expect(
        frozenset({"dead_rank"}),
        True,
        6.0,
        "2.5 heartbeat intervals of silence; 5 when its peers closed after it (gloo)",
    ),
    "corrupt_grads": Expect(frozenset({"dp_mismatch"}), True),
    "data_hang": Expect(
        frozenset({"hung_rank"}), True, 8.0, "20 x the step time, floor 5 s, + a heartbeat"
    ),
    "ckpt_hang": Expect(frozenset({"hung_rank"}), True, 33.0, "a declared checkpoint: 30 s floor"),
    "extra_collective": Expect(
        frozenset({"hung_rank"}), True, 8.0, "20 x the step time, floor 5 s, + a heartbeat"
    ),
    "compute_hang": Expect(
        frozenset({"hung_rank"}), True, 8.0, "20 x the step time, floor 5 s, + a heartbeat"
    ),
    "leak": Expect(frozenset({"memory_leak"}), True, 60.0, "40 s of samples at least"),
    "failslow": Expect(
        frozenset({"fail_slow"}), True, 30.0, "a CUSUM, 20 steps since the change at least"
    ),
    "slowdown": Expect(
        frozenset({"job_slowdown"}), False, 30.0, "a 50-step median held 25 steps and 2 s"
    ),
}

#: Faults after which nothing may fire: growth that levels off, staggered clean exits.
QUIET = frozenset({"warmup", "stagger", "jitter", "rank0_duties"})
#: Faults whose delay is also shown in step times.
HANGS = frozenset({"data_hang", "ckpt_hang", "extra_collective", "compute_hang"})
#: Faults whose catching alert's summary is printed (what the alert says matters).
SUMMARISED = HANGS | {"failslow", "slowdown"}


@dataclass(frozen=True)
class Job:
    """One training job: its fault and how it runs."""

    name: str
    fault: str = "none"
    world: int = 2
    steps: int = 400
    fault_rank: int = 1
    fault_step: int = 150
    magnitude: float = 1.0
    seed: int = 0
    lr: float = 0.05
    step_sleep: float = 0.0
    noise: float = 0.5
    work_ms: float = 0.0
    #: The first step: a new incarnation of a job resumes where the last one stopped.
    start_step: int = 0

    def args(self, run: str) -> list[str]:
        return [
            "--run", run, "--steps", str(self.steps), "--fault", self.fault,
            "--fault-rank", str(self.fault_rank), "--fault-step", str(self.fault_step),
            "--magnitude", str(self.magnitude), "--seed", str(self.seed), "--lr", str(self.lr),
            "--step-sleep", str(self.step_sleep), "--noise", str(self.noise),
            "--work-ms", str(self.work_ms), "--start-step", str(self.start_step),
        ]  # fmt: skip


def jobs(quick: bool = False) -> list[Job]:
    """The benchmark's jobs: every fault kind over two seeds (magnitudes, ranks and onsets
    varied), and healthy jobs of 2-4 ranks, 2-200 ms steps, seeds and learning rates."""
    seeds = (1,) if quick else (1, 2)
    out: list[Job] = []
    for i, seed in enumerate(seeds):
        world = 3 if i == 0 else 4
        at = 150 + 40 * i
        last = world - 1
        out += [
            Job(f"nan-s{seed}", "nan", world, 300, fault_rank=last, fault_step=at, seed=seed),
            Job(f"lr_blowup-s{seed}", "lr_blowup", 2, 300, 0, at, (50.0, 500.0)[i], seed),
            Job(f"bad_batch-s{seed}", "bad_batch", world, 300, 1, at, (10.0, 30.0)[i], seed),
            Job(f"vanish-s{seed}", "vanish", 2, 300, 0, at, (30.0, 100.0)[i], seed),
            Job(f"explode-s{seed}", "explode", world, 300, 0, at, (20.0, 100.0)[i], seed),
            Job(f"plateau-s{seed}", "plateau", 2, at + 400, 0, at, 1.0, seed, lr=0.02),
            Job(f"overfit-s{seed}", "overfit", 2, at + 700, 0, at, 1.0, seed, lr=0.1),
            Job(f"slow_input-s{seed}", "slow_input", world, 300, 0, at, (5.0, 12.0)[i], seed),
            Job(f"crash-s{seed}", "crash", world, 300, last, at, 1.0, seed),
            Job(f"corrupt_grads-s{seed}", "corrupt_grads", world, 300, 1, at, (0.5, 3.0)[i], seed),
        ]  # fmt: skip
    if not quick:  # two-rank variants: no majority to name a rank by
        out += [
            Job("corrupt_grads-2r", "corrupt_grads", 2, 300, 0, 170, 1.0, seed=3),
            Job("slow_input-2r", "slow_input", 2, 300, 1, 170, 20.0, seed=3),
            Job("nan-2r", "nan", 2, 300, 0, 170, seed=3),
            Job("extra_collective-2r", "extra_collective", 2, 300, 0, 170, 12.0, seed=3),
            Job("compute_hang-4r", "compute_hang", 4, 300, 2, 170, 10.0, seed=4),
        ]
    steps = 600 if quick else 5000
    out += [
        Job("healthy-2r", "none", 2, steps, seed=11, lr=0.05),
        Job("healthy-3r-noisy", "none", 3, steps, seed=12, lr=0.1, noise=0.9),
        Job("healthy-4r-lowlr", "none", 4, steps // 4, seed=13, lr=0.01),
        Job("healthy-2r-200ms", "none", 2, 60 if quick else 150, seed=14, step_sleep=0.2),
    ]
    if not quick:
        out.append(Job("healthy-2r-20ms", "none", 2, 600, seed=15, lr=0.2, step_sleep=0.02))
    # The regime fail-slow is judged in: a forward holding 10 ms of device time per step.
    out.append(Job("healthy-3r-10ms", "none", 3, 600 if quick else 1500, seed=16, work_ms=10))
    out += [  # liveness and memory (issue 14)
        Job("data_hang-3r", "data_hang", 3, 400, 1, 200, 15.0, seed=21),
        Job("ckpt_hang-3r", "ckpt_hang", 3, 400, 0, 200, 40.0, seed=22),
        # hang classes (issue 22): one rank in a collective its peers never call (it
        # reports backward like them, one step behind), one in a long compute op
        Job("extra_collective-3r", "extra_collective", 3, 400, 2, 200, 15.0, seed=27),
        Job("compute_hang-3r", "compute_hang", 3, 400, 0, 200, 12.0, seed=28),
        Job("leak-2r", "leak", 2, 1600, 1, 100, 20.0, seed=23, step_sleep=0.05),
        Job("warmup-2r", "warmup", 2, 1600, 1, 0, 20.0, seed=24, step_sleep=0.05),
        Job("stagger-2r", "stagger", 2, 300, 0, 0, 20.0, seed=25),
        Job("stagger-3r", "stagger", 3, 300, 0, 0, 12.0, seed=26),
    ]
    out += quiet_faults(quick)
    return out


def quiet_faults(quick: bool = False) -> list[Job]:
    """Issue 22: fail-slow ranks (10, 20, 40 % slower forward), a job slowdown, a healthy
    job whose per-step compute varies 0.25-1.75x (equal means), and rank 0 evaluating
    (8 s) and checkpointing (12 s) alone, declared, while its peers wait."""
    out = [
        Job("failslow10-3r", "failslow", 3, 500, 1, 200, 0.10, seed=31, work_ms=10),
        Job("failslow20-2r", "failslow", 2, 500, 1, 200, 0.20, seed=32, work_ms=10),
        Job("failslow20-4r", "failslow", 4, 500, 2, 200, 0.20, seed=33, work_ms=10),
        Job("failslow40-3r", "failslow", 3, 400, 0, 200, 0.40, seed=34, work_ms=10),
        Job("slowdown-3r", "slowdown", 3, 700, 0, 250, 1.0, seed=35, work_ms=10),
        Job("jitter-3r", "jitter", 3, 600 if quick else 2000, 0, 0, 1.0, seed=36, work_ms=10),
        Job("rank0_duties-3r", "rank0_duties", 3, 300, 0, 100, 1.0, seed=37, work_ms=5),
    ]
    if not quick:
        out += [
            Job("failslow10-4r", "failslow", 4, 500, 3, 200, 0.10, seed=41, work_ms=10),
            Job("failslow40-2r", "failslow", 2, 400, 1, 200, 0.40, seed=42, work_ms=10),
            Job("slowdown-2r", "slowdown", 2, 700, 0, 250, 1.5, seed=43, work_ms=10),
            # starts while the baseline is taken (steps 51-150)
            Job("slowdown-early-3r", "slowdown", 3, 500, 1, 100, 1.0, seed=45, work_ms=10),
            Job("jitter-2r", "jitter", 2, 2000, 0, 0, 1.0, seed=44, work_ms=10),
        ]
    return out


@dataclass
class Result:
    """What one job gave."""

    job: Job
    run: str
    onset_t: float | None
    alerts: list[Alert]
    wall_s: float
    exit_codes: list[int | None] = field(default_factory=list)
    #: For healthy jobs: the largest excess (s) and ratio of one rank's 20-step median of
    #: data wait + forward over the other ranks' median: the straggler's healthy margin.
    margin: tuple[float, float] | None = None
    #: For hang jobs: the median step time (s) of the faulty rank before the fault.
    step_s: float | None = None
    #: The run's state as the reader reports it after the job.
    state: str = ""
    #: For healthy and jitter jobs: the fail-slow detector's healthy spread (see
    #: `failslow_spread`): per phase, the largest 50-step median ratio and excess (s).
    spread: dict[str, tuple[float, float]] | None = None

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts if a.status == "firing" and not a.suppressed_by]

    def caught(self) -> Alert | None:
        """The first alert that catches the fault, if any."""
        expect = EXPECT.get(self.job.fault)
        if expect is None or self.onset_t is None:
            return None
        hits = [
            a
            for a in self.firing
            if a.rule in expect.rules
            and a.raised_at >= self.onset_t
            and (not expect.on_rank or a.rank == self.job.fault_rank)
        ]
        return min(hits, key=lambda a: a.raised_at) if hits else None

    def pages(self) -> int:
        """Firing alerts of the expected detectors after the onset (1 is one incident)."""
        expect = EXPECT.get(self.job.fault)
        if expect is None or self.onset_t is None:
            return 0
        onset = self.onset_t
        return sum(1 for a in self.firing if a.rule in expect.rules and a.raised_at >= onset)

    def false_alerts(self) -> list[Alert]:
        """Firing alerts of a healthy job, or of a fault job before the fault."""
        if self.job.fault == "none" or self.job.fault in QUIET:
            return self.firing
        onset = self.onset_t if self.onset_t is not None else float("inf")
        return [a for a in self.firing if a.raised_at < onset]

    def healthy_steps(self) -> int:
        """Steps that count towards the false-alert rate."""
        quiet = self.job.fault == "none" or self.job.fault in QUIET
        return self.job.steps if quiet else self.job.fault_step


@contextlib.contextmanager
def embedded_stack(state_dir: Path) -> Iterator[Settings]:
    """The embedded stack (tansu, Valkey, processor and sink workers) for the jobs."""
    settings = Settings(state_dir=state_dir, topic_prefix=f"d{uuid.uuid4().hex[:8]}")
    with running_stack(settings) as client_settings:
        yield client_settings


def run_job(
    settings: Settings, job: Job, logs: Path, settle_s: float = 4.0, run: str | None = None
) -> Result:
    """Run `job` to its end (ranks started as torchrun would), then collect its alerts.
    `run`: the run id (a restart of an earlier job's run); a fresh one by default."""
    run = run or f"{job.name}-{uuid.uuid4().hex[:6]}"
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    started = time.time()
    env_base = {
        **os.environ,
        **settings_env(settings),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(job.world),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        for rank in range(job.world):
            env = {**env_base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            with (logs / f"{run}-rank{rank}.log").open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(JOB), *job.args(run)],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 120 + job.steps * (job.step_sleep + 0.05)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(10)
    wall = time.time() - started
    time.sleep(settle_s)  # the pipeline's last alerts (a dead rank's needs silence)
    result = _collect(settings, job, run, logs, wall, procs)
    expect = EXPECT.get(job.fault)
    if expect is not None and result.onset_t is not None:
        # A fault found missing after the settle may still be inside its bound (a dead
        # rank's silence counts from its last word, not from the job's end): read again
        # until it is caught or the bound the tests assert has passed.
        until = result.onset_t + max(30.0, 3 * expect.bound_s)
        while result.caught() is None and time.time() < until:
            time.sleep(0.5)
            result = _collect(settings, job, run, logs, wall, procs)
    return result


def _collect(
    settings: Settings,
    job: Job,
    run: str,
    logs: Path,
    wall: float,
    procs: list[subprocess.Popen[bytes]],
) -> Result:
    """The fault's onset (from the job's logs) and what the pipeline reported so far."""
    onsets = []
    for path in logs.glob(f"{run}-rank*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith('{"fault"'):
                onsets.append(json.loads(line)["onset_t"])
    with MetricsReader.from_url(settings.redis_url, settings.key_prefix) as reader:
        alerts = reader.alerts(run, count=10_000)
        margin = straggler_margin(reader, run, job) if job.fault == "none" else None
        spread = failslow_spread(reader, run, job) if job.fault in ("none", "jitter") else None
        step_s = median_step(reader, run, job) if job.fault in HANGS else None
        state = reader.run_meta(run).state
    return Result(
        job,
        run,
        min(onsets) if onsets else None,
        alerts,
        wall,
        [p.returncode for p in procs],
        margin,
        step_s,
        state,
        spread=spread,
    )


def failslow_spread(
    reader: MetricsReader, run: str, job: Job, window: int = 50, skip: int = 20
) -> dict[str, tuple[float, float]]:
    """The healthy spread the fail-slow detector's thresholds rest on, recomputed from the
    stored series: per phase (data wait less declared seconds, forward), the largest
    median over `window` steps of a rank's per-step ratio to its peers' median, and the
    largest median excess (s), after `skip` warm-up steps."""
    from processors.detectors.failslow import phase_times

    names = [vocab.DATA_WAIT.name, vocab.FORWARD.name]
    names += [s.name for s in vocab.DECLARED_TIME.values()]
    per: dict[int, dict[int, dict[str, float]]] = {}
    for rank in range(job.world):
        steps: dict[int, dict[str, float]] = {}
        for name in names:
            series = reader.series(run, name, rank=rank, points=job.steps + 10)
            for point in series.points:
                if point.step is not None and point.value is not None:
                    steps.setdefault(point.step, {})[name] = point.value
        per[rank] = {step: phase_times(v, False) for step, v in steps.items()}
    out: dict[str, tuple[float, float]] = {}
    for phase in ("data", "forward"):
        common = sorted(
            set.intersection(*({s for s, v in p.items() if phase in v} for p in per.values()))
        )
        common = [s for s in common if s >= skip]
        ratios: dict[int, list[tuple[float, float]]] = {r: [] for r in per}
        for step in common:
            for rank in per:
                peers = statistics.median(per[r][step][phase] for r in per if r != rank)
                own = per[rank][step][phase]
                ratios[rank].append(((own + 1e-4) / (peers + 1e-4), own - peers))
        worst_ratio = worst_excess = 0.0
        for points in ratios.values():
            for i in range(window, len(points) + 1):
                span = points[i - window : i]
                worst_ratio = max(worst_ratio, statistics.median(r for r, _ in span))
                worst_excess = max(worst_excess, statistics.median(e for _, e in span))
        out[phase] = (worst_ratio, worst_excess)
    return out


def median_step(reader: MetricsReader, run: str, job: Job) -> float | None:
    """The median step time the faulty rank reported before the fault."""
    series = reader.series(run, vocab.STEP_TIME.name, rank=job.fault_rank, points=job.steps + 10)
    times = [
        p.value
        for p in series.points
        if p.step is not None and p.step < job.fault_step and p.value is not None
    ]
    return statistics.median(times) if times else None


def straggler_margin(reader: MetricsReader, run: str, job: Job) -> tuple[float, float]:
    """How close a healthy job came to a straggler verdict: the largest excess and ratio
    of a rank's 20-step median of data wait + forward over the other ranks' median."""
    window = 20
    pre: dict[int, dict[int, float]] = {}
    for rank in range(job.world):
        parts: dict[int, float] = {}
        for name in (vocab.DATA_WAIT.name, vocab.FORWARD.name):
            series = reader.series(run, name, rank=rank, points=job.steps + 10)
            for point in series.points:
                if point.step is not None and point.value is not None:
                    parts[point.step] = parts.get(point.step, 0.0) + point.value
        pre[rank] = parts
    steps = sorted(set.intersection(*(set(p) for p in pre.values()))) if pre else []
    excess = ratio = 0.0
    for i in range(window, len(steps)):
        span = steps[i - window : i]
        medians = {r: statistics.median(pre[r][s] for s in span) for r in pre}
        for rank, own in medians.items():
            others = statistics.median(v for r, v in medians.items() if r != rank)
            excess = max(excess, own - others)
            if others > 0:
                ratio = max(ratio, own / others)
    return excess, ratio


def line(result: Result) -> str:
    """One line of the per-job table."""
    job = result.job
    caught = result.caught()
    falses = result.false_alerts()
    if job.fault == "none" or job.fault in QUIET:
        verdict = f"quiet, run {result.state}" if job.fault in QUIET else "healthy"
        delay = "-"
    elif caught is None:
        verdict = "MISSED"
        delay = "-"
    else:
        verdict = f"caught {caught.rule}@rank{caught.rank}"
        delay = f"{caught.raised_at - (result.onset_t or 0):.2f}s"
        if caught.step is not None and job.fault in EXPECT and EXPECT[job.fault].bound_s > 2:
            delay += f"/{caught.step - job.fault_step}st"
        if result.step_s:
            took = caught.raised_at - (result.onset_t or 0)
            delay += f" ({took / result.step_s:.0f}x the {result.step_s * 1000:.1f} ms step)"
    extra = ", ".join(sorted({f"{a.rule}@rank{a.rank}" for a in falses}))
    if result.margin is not None:
        excess, ratio = result.margin
        verdict = f"healthy (straggler margin {excess * 1000:.2f} ms, x{ratio:.2f})"
    if result.spread:
        verdict += " fail-slow spread " + ", ".join(
            f"{phase} x{ratio:.3f}/{excess * 1000:.2f}ms"
            for phase, (ratio, excess) in result.spread.items()
        )
    return (
        f"{job.name:24} world={job.world} steps={job.steps:5} fault={job.fault:13} "
        f"rank={job.fault_rank if job.fault != 'none' else '-'} mag={job.magnitude:<6g} "
        f"{verdict:38} delay={delay:7} pages={result.pages()} false={len(falses)}"
        + (f" [{caught.summary}]" if caught is not None and job.fault in SUMMARISED else "")
        + (
            "\n" + textwrap.indent(caught.description, "    | ")
            if caught is not None and caught.description
            else ""
        )
        + (f" ({extra})" if extra else "")
    )


def summary(results: list[Result]) -> str:
    """The summary line: recall, false alerts per 10k healthy steps, delays."""
    faults = [r for r in results if r.job.fault != "none" and r.job.fault not in QUIET]
    caught = [(r, c) for r in faults if (c := r.caught()) is not None]
    delays = [c.raised_at - (r.onset_t or 0) for r, c in caught]
    fast = [c.raised_at - (r.onset_t or 0) for r, c in caught if EXPECT[r.job.fault].bound_s <= 2.0]
    false = sum(len(r.false_alerts()) for r in results)
    steps = sum(r.healthy_steps() for r in results)
    over = [
        f"{r.job.name}:{c.raised_at - (r.onset_t or 0):.1f}s>{EXPECT[r.job.fault].bound_s:g}s"
        for r, c in caught
        if c.raised_at - (r.onset_t or 0) > EXPECT[r.job.fault].bound_s
    ]
    spreads = [r.spread for r in results if r.spread]
    spread = (
        "; healthy fail-slow spread (50-step median ratio): "
        + ", ".join(
            f"{phase} up to x{max(sp[phase][0] for sp in spreads):.3f}"
            for phase in ("data", "forward")
        )
        if spreads
        else ""
    )
    margins = [r.margin for r in results if r.margin is not None]
    worst = (
        f"; healthy straggler margin: up to {max(m[0] for m in margins) * 1000:.2f} ms, "
        f"x{max(m[1] for m in margins):.2f}"
        if margins
        else ""
    )
    return (
        f"recall={len(caught) / max(1, len(faults)):.2f} "
        f"false_per_10k={false / max(1, steps) * 10_000:.2f} "
        f"median_delay_s={statistics.median(delays) if delays else float('nan'):.2f} "
        f"max_delay_s={max(fast) if fast else float('nan'):.2f} "
        f"(non-windowed; over bound: {', '.join(over) or 'none'}; healthy steps {steps}"
        f"{worst}{spread})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, short healthy jobs")
    parser.add_argument("--only", default="", help="comma-separated job name prefixes")
    args = parser.parse_args()
    prefixes = tuple(args.only.split(",")) if args.only else ("",)
    selected = [j for j in jobs(args.quick) if j.name.startswith(prefixes)]
    with tempfile.TemporaryDirectory(prefix="stepstream-detection-") as tmp:
        results = []
        with embedded_stack(Path(tmp) / "state") as settings:
            logs = Path(tmp) / "logs"
            logs.mkdir()
            for job in selected:
                result = run_job(settings, job, logs)
                results.append(result)
                print(line(result), flush=True)
        print(summary(results), flush=True)


if __name__ == "__main__":
    main()
