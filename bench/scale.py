"""Scale: many ranks against 1 and 2 processor workers. Prints figures; not a test.

Starts a tansu broker and Valkey (LocalStack, workers=False). The load is one real rank
recorded once (`bench/loadgen.py record`: a small MLP with `watch()`, `log()`, heartbeats
and the system sampler at default SDK settings, 2 steps a second) and replayed as N
distinct ranks by `bench/loadgen.py replay` (pre-encoded templates, librdkafka): the
generator's own CPU is printed beside every level (``generator_cpu_pct``, of one core), so
the figure measures the pipeline, not its simulator. ``--sdk-hosts`` uses real `Monitor`s
in host processes instead (the previous bench: at 256 ranks they took the same 2 cores as
the worker).

For each worker count and each rank count of the ramp (a ramp stops at its first level
over 1 s), on a fresh topic prefix: start the processor workers, start the load, and read
the windows topic until the level was measured. Lag is end to end: the arrival time of a
window update minus the event time of the newest record it covers, so it includes the
SDK's hold (`flush_interval_s`, 1 s: a message's newest record is fresh when it is sent)
and the processor's linger. It is measured for `--seconds` from `SETTLE_S` after the first
window update. A level is kept when its p99 lag is within 1 s and every rank was seen.
Memory per rank is the growth of the processor workers' resident set from settled-and-idle
to the end of the level, over the ranks seen, at the largest one-worker level run.

Usage: PYTHONPATH=. python bench/scale.py [--ranks 256,1024,2048,4096] [--workers 1,2]
       [--seconds 15] [--recording rec.json]
Last line: ranks_per_worker_at_1s_lag=... bytes_per_rank=... msgs_per_s=... generator_cpu_pct=...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

# The bench's own folder is on sys.path when it runs as a script.
from processor_throughput import consumer_on, phase_settings, spawn, start_workers

from stepstream.settings import Settings
from stepstream.stack import LocalStack, settings_env, stop_children
from stepstream.streaming import ready_file
from stepstream.topics import Topics

METRICS = 30
#: Ranks per simulated run (a run is a job of this many ranks).
WORLD = 64


#: Seconds after the first window update before lag counts (backlog of the group join).
SETTLE_S = 8.0

#: Set by SIGINT/SIGTERM: the level loop ends and every process is stopped on the way out
#: (kafka-python's poll swallows a KeyboardInterrupt, so a flag is checked instead).
STOP = threading.Event()


def rank_host(first: int, count: int, seconds: float) -> None:
    """Child mode: open `count` monitors (global ranks first..first+count-1), log one step
    per rank per second for `seconds`, close them."""
    import producers

    settings = Settings()  # from the STEPSTREAM_* environment the parent set
    monitors = []
    for g in range(first, first + count):
        monitors.append(
            producers.init(
                run=f"scale{g // WORLD}",
                rank=g % WORLD,
                world=WORLD,
                node=f"sim{g // 8}",
                settings=settings,
            )
        )
    names = ["loss", "grad_norm", "lr", "data_time", "compute_time", "samples_per_s"] + [
        f"grad_norm/layer{i}" for i in range(METRICS - 6)
    ]
    rng = random.Random(first)
    start = time.time()
    step = 0
    stop_at = start + seconds
    while time.time() < stop_at:
        tick = start + step
        for i, monitor in enumerate(monitors):
            # Spread the ranks over the second, as independent jobs would be.
            delay = tick + i / len(monitors) - time.time()
            if delay > 0:
                time.sleep(delay)
            values = {name: rng.random() + 0.5 for name in names}
            values["loss"] = 2.0 / (1 + step / 100) + rng.gauss(0, 0.02)
            monitor.log(step, **values)
        step += 1
    for monitor in monitors:
        monitor.close(2.0)


def start_hosts(
    settings: Settings, ranks: int, procs: int, seconds: float, logs: Path
) -> list[subprocess.Popen[bytes]]:
    """Start the rank host processes, ranks split evenly."""
    env = {**os.environ, **settings_env(settings)}
    env.update(
        STEPSTREAM_SYSTEM_INTERVAL_S="0",
        STEPSTREAM_CAPTURE_LOGS="false",
        STEPSTREAM_CAPTURE_STACKS="false",
        STEPSTREAM_HANDLE_SIGTERM="false",
    )
    per = math.ceil(ranks / procs)
    return [
        spawn(
            [
                sys.executable,
                __file__,
                "--rank-host",
                str(first),
                str(min(per, ranks - first)),
                str(seconds),
            ],
            env,
            logs / f"hosts-{settings.topic_prefix}-{first}.log",
        )
        for first in range(0, ranks, per)
    ]


def rss(procs: list[subprocess.Popen[bytes]]) -> int:
    """Resident bytes of the processes and their children."""
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(proc.pid)
            total += p.memory_info().rss
            for child in p.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += child.memory_info().rss
    return total


def _role(proc: psutil.Process) -> str:
    """What a process of the bench is, from its command line."""
    with contextlib.suppress(psutil.Error):
        line = " ".join(proc.cmdline())
        for needle, role in (
            ("worker processor", "processor"),
            ("tansu", "broker"),
            ("valkey", "redis"),
            ("redis-server", "redis"),
            ("loadgen.py", "generator"),
            ("--rank-host", "rank hosts"),
        ):
            if needle in line:
                return role
    return "other"


def cpu_by_role() -> dict[str, float]:
    """CPU seconds (user + system) so far of this bench's descendants, by role."""
    out: dict[str, float] = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            role = _role(child)
            out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def start_replay(
    settings: Settings, recording: Path, ranks: int, logs: Path
) -> list[subprocess.Popen[bytes]]:
    """The replaying generator of `ranks` ranks (runs until stopped); its report lines go
    to its log."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("loadgen.py")),
        "replay",
        str(recording),
        "--bootstrap",
        settings.kafka_bootstrap,
        "--topic-prefix",
        settings.topic_prefix,
        "--ranks",
        str(ranks),
        "--world",
        str(WORLD),
        "--seconds",
        "3600",
        "--report-s",
        "2",
    ]
    return [spawn(cmd, env, logs / f"replay-{settings.topic_prefix}.log")]


def generator_figures(logs: Path, prefix: str) -> tuple[float, float]:
    """The replaying generator's last reported CPU % of a core and messages/s."""
    path = logs / f"replay-{prefix}.log"
    last = [line for line in path.read_text().splitlines() if "generator_cpu_pct=" in line]
    if not last:
        return math.nan, math.nan
    fields = dict(part.split("=") for part in last[-1].split())
    return float(fields["generator_cpu_pct"]), float(fields["msgs_per_s"])


def level(
    base: Settings,
    workers: int,
    ranks: int,
    procs: int,
    seconds: float,
    logs: Path,
    recording: Path | None = None,
) -> dict[str, float]:
    """One level of the ramp: its p50/p99 lag, ranks seen, and the workers' memory."""
    live = phase_settings(base, f"s{workers}x{ranks}")
    windows = consumer_on(live, Topics(live.topic_prefix).windows, from_end=True)
    running: list[subprocess.Popen[bytes]] = []
    hosts: list[subprocess.Popen[bytes]] = []
    lags: list[float] = []
    seen: set[tuple[str, int]] = set()
    try:
        marker = ready_file(live, Topics(live.topic_prefix).group("processor"))
        running = start_workers(live, workers, logs)
        # Memory before any rank: a settled worker (its group joined, nothing read yet).
        settle = time.time() + 90
        while not marker.exists() and time.time() < settle and not STOP.is_set():
            time.sleep(0.2)
        idle = rss(running)
        # The hosts log until stopped; the level ends when enough was measured.
        if recording is None:
            hosts = start_hosts(live, ranks, procs, 3600.0, logs)
        else:
            hosts = start_replay(live, recording, ranks, logs)
        deadline = time.time() + 90  # group join, monitors opening
        begin = end = math.inf
        cpu_start: dict[str, float] | None = None
        while time.time() < min(deadline, end) and not STOP.is_set():
            if cpu_start is None and time.time() >= begin:
                cpu_start, cpu_t0 = cpu_by_role(), time.time()
            for records in windows.poll(timeout_ms=200, max_records=100_000).values():
                now = time.time()
                if begin == math.inf:
                    # The first update: the group has joined. What was sent before it is
                    # backlog; lag is measured once that has drained.
                    begin, end = now + SETTLE_S, now + SETTLE_S + seconds
                    deadline = end
                if now < begin:
                    continue
                for record in records:
                    doc = json.loads(record.value)
                    seen.add((doc["run"], doc["rank"]))
                    lags.append(now - doc["t"])
        memory = rss(running)
        cpu: dict[str, float] = {}
        if cpu_start is not None:
            cpu_end, wall = cpu_by_role(), max(time.time() - cpu_t0, 1e-9)
            cpu = {
                role: 100.0 * (cpu_end[role] - cpu_start.get(role, 0.0)) / wall
                for role in sorted(cpu_end)
            }
    finally:
        windows.close()
        stop_children(hosts, 15.0)
        stop_children(running, 15.0)
    lags.sort()
    pick = lambda q: lags[int(q * (len(lags) - 1))] if lags else math.inf  # noqa: E731
    gen_cpu, msgs = (
        generator_figures(logs, live.topic_prefix) if recording is not None else (math.nan,) * 2
    )
    return {
        "generator_cpu_pct": gen_cpu,
        "msgs_per_s": msgs,
        "p50": pick(0.5),
        "p99": pick(0.99),
        "seen": len(seen),
        "rss": memory,
        "per_rank": (memory - idle) / max(len(seen), 1),
        "cpu": cpu,  # type: ignore[dict-item]
    }


def main() -> None:
    """Run the ramp for each worker count and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", default="256,1024,2048,4096", help="rank counts of the ramp")
    parser.add_argument("--workers", default="1,2", help="processor worker counts")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per level")
    parser.add_argument("--procs", type=int, default=4, help="rank host processes")
    parser.add_argument("--recording", type=Path, help="a loadgen recording to replay")
    parser.add_argument(
        "--sdk-hosts", action="store_true", help="real monitors in host processes, no replay"
    )
    args = parser.parse_args()
    ramp = [int(r) for r in args.ranks.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="stepstream-scale-"))
    stack = LocalStack(Settings(state_dir=tmp), workers=False)
    best: dict[int, int] = {}
    memory: dict[int, float] = {}
    finished = False
    try:
        state = stack.start()
        base = Settings(
            state_dir=tmp,
            kafka_bootstrap=state.kafka_bootstrap,
            redis_url=state.redis_url,
            session_timeout_s=6.0,
        )
        recording = args.recording
        if recording is None and not args.sdk_hosts:
            recording = tmp / "recording.json"
            subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).with_name("loadgen.py")),
                    "record",
                    str(recording),
                    "--bootstrap",
                    state.kafka_bootstrap,
                    "--topic-prefix",
                    "rec",
                ],
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                check=True,
            )
        msgs_at: dict[int, float] = {}
        gen_at: dict[int, float] = {}
        for workers in (int(w) for w in args.workers.split(",")):
            best[workers] = 0
            for ranks in ramp:
                got = level(
                    base, workers, ranks, min(args.procs, ranks), args.seconds, tmp, recording
                )
                ok = got["p99"] <= 1.0 and got["seen"] >= ranks
                msgs_at[ranks] = got["msgs_per_s"]
                gen_at[ranks] = got["generator_cpu_pct"]
                if workers == 1:
                    memory[ranks] = got["per_rank"]
                if ok:
                    best[workers] = max(best[workers], ranks // workers)
                print(
                    f"{workers} worker(s), {ranks} ranks: lag p50 {got['p50'] * 1000:.0f} ms, "
                    f"p99 {got['p99'] * 1000:.0f} ms, {got['seen']:.0f} ranks seen, "
                    f"workers RSS {got['rss'] / 2**20:.0f} MiB "
                    f"({got['per_rank'] / 1024:.0f} KiB/rank), generator "
                    f"{got['msgs_per_s']:.0f} msgs/s at {got['generator_cpu_pct']:.1f} % of a "
                    "core -> "
                    f"{'within' if ok else 'OVER'} 1 s",
                    flush=True,
                )
                shares = ", ".join(f"{k} {v:.0f}" for k, v in got["cpu"].items())  # type: ignore[attr-defined]
                print(f"  CPU over the measured window, % of a core: {shares}", flush=True)
                if not ok or STOP.is_set():
                    # Lag only grows from here, and the ranks cost the machine: stop.
                    break
        # The largest one-worker level says most: fixed costs are spread thinnest there.
        per_rank = memory[max(memory)] if memory else math.nan
        # Ranks per worker of the best level kept, whichever the worker count.
        kept = max(best.values(), default=0)
        print("ranks per worker kept within 1 s, by worker count: " + str(best))
        if any(best[w] and best[w] == ramp[-1] // w for w in best):
            print("the top level held: the capacity is at least that; ramp further (--ranks)")
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        top = max(msgs_at) if msgs_at else 0
        print(
            f"ranks_per_worker_at_1s_lag={kept} bytes_per_rank={per_rank:.0f} "
            f"msgs_per_s={msgs_at.get(top, math.nan):.0f} "
            f"generator_cpu_pct={gen_at.get(top, math.nan):.1f}"
        )
        finished = True
    finally:
        stack.stop()
        # The workers' logs are what explains a failed run: kept then, removed otherwise.
        if finished:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"worker logs kept in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-host":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        rank_host(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: STOP.set())
        main()
