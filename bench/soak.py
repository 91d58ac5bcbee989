"""Soak: does the pipeline last weeks? Thousands of short runs through one processor and
one sink worker, time compressed through settings. Prints figures; not a test.

Starts a tansu broker and Valkey (LocalStack, workers=False), one processor worker and
one sink worker, on a fresh topic prefix, with the forget horizon at its minimum
(``STEPSTREAM_STATE_IDLE_S=60``), a short retention (``STEPSTREAM_RETENTION_S``) and a short
resolve timeout (``STEPSTREAM_RESOLVE_TIMEOUT_S``): weeks of runs coming and going become
minutes. A cheap generator (a child process: pre-built JSON of the wire format, librdkafka)
starts `--rate` runs a second of `--ranks` ranks each. Every rank sends one message per
step (a train record of 8 metrics and a running heartbeat), then a closing heartbeat, as
the SDK does at ``monitor.close()``. One run in 10 has a NaN loss on rank 0 in mid-run that
turns finite again; one in 50 ends on a NaN loss. The generator's own CPU (of one core) is
printed beside every figure.

Measured, read through the public reader (`query.reader.MetricsReader`) and psutil:

* worker and sink RSS after the first `--baseline-runs` runs and their forget horizon (the
  generator pauses until the workers forgot them), and after the forget horizon of the
  last run: ``*_rss_growth_pct`` is the second over the first, in percent. Both are
  taken with nothing held, so their difference is what thousands of runs left behind
  (a leak, or memory the allocator did not give back after the larger held state of the
  steady load). Under load, RSS is also compared at equal held state (from the run where
  the runs held within the horizon stop growing, to the last runs): a leak shows there;
* stale firing: every run is read once ``incident_hold_s`` (5 s) and a margin for the
  pipeline's lag (10 s) have passed since it finished: an alert still in
  ``active_alerts(run)`` then is stale (a finished run ends its incidents). It is read
  again after the resolve timeout (printed, not in the last line). That the NaN runs did
  raise their alert is counted too, or the check would be vacuous;
* keys left: keys under the key prefix (SCAN) once the retention has passed since the last
  write; none may remain, the run registry included.

Usage: PYTHONPATH=. python bench/soak.py [--runs 2000] [--rate 6] [--ranks 4] [--steps 8]
Last line: runs=... worker_rss_growth_pct=... sink_rss_growth_pct=... stale_firing=...
keys_left=...
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# The bench's own folder is on sys.path when it runs as a script.
from processor_throughput import phase_settings, start_workers
from scale import rss

from query.reader import MetricsReader
from stepstream import vocabulary as vocab
from stepstream.settings import Settings
from stepstream.stack import LocalStack, stop_children, worker_command
from stepstream.streaming import ready_file
from stepstream.topics import Topics

#: Seconds after a run's hold before its alerts are read: the pipeline's own lag (stage 1
#: linger, stage 2 flush, the sink's batch) on a shared 2-core machine.
MARGIN_S = 10.0
#: How often the processor's alerting refreshes (resolves quiet alerts): RELOAD_S there.
REFRESH_S = 2.0
#: Seconds after the baseline run finished before its RSS is read (its last messages
#: processed).
SETTLE_S = 5.0

# What a run's NaN does: turns finite again in mid-run, or is the last loss of the run.
NAN_TRANSIENT = "transient"
NAN_END = "end"


def nan_kind(index: int) -> str:
    """The NaN a run gets by its index: one in 10 transient, one in 50 at the end."""
    if index % 10 == 3:
        return NAN_TRANSIENT
    if index % 50 == 7:
        return NAN_END
    return ""


# -- the generator (child process) ---------------------------------------------------------


@dataclass
class _GenRun:
    """One generated run: its ranks' identities and seqs, and where it is."""

    name: str
    index: int
    ranks: int
    steps: int
    next_at: float
    step: int = 0
    seqs: list[int] = field(default_factory=list)
    incarnations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seqs = [0] * self.ranks
        self.incarnations = [uuid.uuid4().hex[:12] for _ in range(self.ranks)]

    @property
    def done(self) -> bool:
        return self.step > self.steps


def _values(step: int, rank: int, nan: str, steps: int) -> dict[str, float | str]:
    """One step's train values of a rank: smooth, so only the planted NaN raises alerts.
    Non-finite values travel as the string "NaN" (the wire format; JSON has no NaN).
    Signals a data-parallel collective equalises (the gradient norm after the all-reduce,
    the learning rate, the step time) are the same on every rank, or dp_mismatch fires."""
    wobble = 1.0 + 0.01 * math.sin(step)
    local = 1.0 + 0.01 * math.sin(step + rank)
    values: dict[str, float | str] = {
        vocab.LOSS.name: 2.0 / (1.0 + step / 100.0) * local,
        vocab.GRAD_NORM.name: 1.0 * wobble,
        "opt/lr/0": 1e-3,
        vocab.DATA_WAIT.name: 0.01 * local,
        vocab.COMPUTE.name: 0.2 * local,
        vocab.STEP_TIME.name: 0.25 * wobble,
        vocab.SAMPLES_PER_S.name: 256.0 * wobble,
        "accuracy": 0.5 * local,
    }
    if rank == 0 and (
        (nan == NAN_TRANSIENT and step == steps // 2) or (nan == NAN_END and step == steps - 1)
    ):
        values[vocab.LOSS.name] = "NaN"
    return values


def _message(run: _GenRun, rank: int, now: float, pid: int) -> bytes:
    """The telemetry message of one rank at the run's current step: a train record and a
    running heartbeat, or at the end a closing heartbeat alone."""
    import orjson

    seq = run.seqs[rank]
    status = vocab.CLOSING if run.step == run.steps else "running"
    last = min(run.step, run.steps - 1)
    records: list[dict[str, object]] = []
    if run.step < run.steps:
        nan = nan_kind(run.index)
        records.append(
            {
                "seq": seq,
                "t": now,
                "step": run.step,
                "kind": "train",
                "values": _values(run.step, rank, nan, run.steps),
            }
        )
        seq += 1
    records.append(
        {
            "seq": seq,
            "t": now,
            "step": last,
            "kind": "heartbeat",
            "text": status,
            "values": {
                vocab.HEARTBEAT_STEP: float(last),
                vocab.HEARTBEAT_PID: float(pid),
                vocab.HEARTBEAT_STATUS: vocab.STATUS_CODES[status],
            },
        }
    )
    run.seqs[rank] = seq + 1
    return orjson.dumps(
        {
            "v": 1,
            "run": run.name,
            "rank": rank,
            "world": run.ranks,
            "node": f"soak{run.index % 16}",
            "pid": pid,
            "incarnation": run.incarnations[rank],
            "records": records,
        }
    )


def generate(args: argparse.Namespace) -> None:
    """Child mode: send the runs; print ``finished RUN T NAN`` as each run closes and the
    generator's own CPU at the end."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "compression.type": "lz4",
            "linger.ms": 50,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    topic = Topics(args.topic_prefix).telemetry
    pid = os.getpid()
    tag = uuid.uuid4().hex[:4]
    cpu0, wall0 = time.process_time(), time.monotonic()
    start = time.time()
    live: list[_GenRun] = []
    started = sent = 0
    while started < args.runs or live:
        if started == args.pause_after and not live:
            # The baseline: every run so far closed. Wait (stdin) while the parent lets
            # the workers forget them, then go on at the same rate.
            print("paused", flush=True)
            sys.stdin.readline()
            start = time.time() - started / args.rate
            args.pause_after = -1
        now = time.time()
        while (
            started < args.runs
            and started != args.pause_after
            and start + started / args.rate <= now
        ):
            live.append(_GenRun(f"soak-{tag}-{started:06d}", started, args.ranks, args.steps, now))
            started += 1
        for run in live:
            if run.next_at > now:
                continue
            for rank in range(run.ranks):
                producer.produce(topic, _message(run, rank, now, pid), f"{run.name}:{rank}")
                sent += 1
            run.step += 1
            run.next_at += args.step_s
            if run.done:
                print(f"finished {run.name} {now:.3f} {nan_kind(run.index) or '-'}", flush=True)
        live = [run for run in live if not run.done]
        producer.poll(0)
        due = min([run.next_at for run in live] + [start + started / args.rate])
        time.sleep(min(0.05, max(0.0, due - time.time())))
    producer.flush(30)
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    print(
        f"generator_cpu_pct={cpu / wall * 100:.1f} msgs={sent} msgs_per_s={sent / wall:.0f}",
        flush=True,
    )


# -- the bench (parent) ---------------------------------------------------------------------


def cpu_pct(proc: psutil.Process, since: tuple[float, float]) -> float:
    """Percent of one core `proc` used since (wall, cpu) `since`."""
    with contextlib.suppress(psutil.Error):
        times = proc.cpu_times()
        cpu = times.user + times.system
        return (cpu - since[1]) / max(1e-9, time.monotonic() - since[0]) * 100
    return math.nan


def count_keys(client: object, prefix: str) -> int:
    """Keys under `prefix` (SCAN: fine in a bench, never in a request path)."""
    return sum(1 for _ in client.scan_iter(match=f"{prefix}:*", count=1000))  # type: ignore[attr-defined]


def figure(label: str, procs: dict[str, list[subprocess.Popen[bytes]]], gen: str) -> dict[str, int]:
    """Print the workers' RSS with the generator's CPU and the load average; return RSS."""
    got = {name: rss(p) for name, p in procs.items()}
    print(
        f"{label}: worker RSS {got['worker'] / 2**20:.1f} MiB, sink RSS "
        f"{got['sink'] / 2**20:.1f} MiB; generator {gen}; load average "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return got


def holding_line(log: Path) -> str:
    """The processor's newest "forgot ... holding ..." log line (what it still holds)."""
    with contextlib.suppress(OSError):
        lines = [line for line in log.read_text().splitlines() if "holding" in line]
        if lines:
            return lines[-1].strip()
    return "(no forget logged)"


def main() -> None:
    """Run the soak and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000, help="runs to send")
    parser.add_argument("--rate", type=float, default=6.0, help="runs started per second")
    parser.add_argument("--ranks", type=int, default=4, help="ranks per run")
    parser.add_argument("--steps", type=int, default=8, help="steps per run")
    parser.add_argument("--step-s", type=float, default=0.5, help="seconds per step")
    parser.add_argument("--baseline-runs", type=int, default=100)
    parser.add_argument("--retention-s", type=int, default=60, help="STEPSTREAM_RETENTION_S")
    parser.add_argument(
        "--resolve-timeout-s", type=float, default=30.0, help="STEPSTREAM_RESOLVE_TIMEOUT_S"
    )
    args = parser.parse_args()
    if args.retention_s < args.resolve_timeout_s + REFRESH_S + MARGIN_S + 10:
        parser.error("--retention-s must outlast the stale-alert check (resolve timeout + 22 s)")
    if args.runs < args.baseline_runs:
        parser.error("--runs must be at least --baseline-runs")

    tmp = Path(tempfile.mkdtemp(prefix="stepstream-soak-"))
    stack = LocalStack(Settings(state_dir=tmp), workers=False)
    procs: dict[str, list[subprocess.Popen[bytes]]] = {"worker": [], "sink": []}
    gen: subprocess.Popen[str] | None = None
    finished = False
    began = time.monotonic()
    try:
        state = stack.start()
        base = Settings(
            state_dir=tmp,
            kafka_bootstrap=state.kafka_bootstrap,
            redis_url=state.redis_url,
            session_timeout_s=6.0,
            state_idle_s=60.0,
            retention_s=args.retention_s,
            resolve_timeout_s=args.resolve_timeout_s,
            log_level="info",  # the processor logs what it forgot and still holds
        )
        live = phase_settings(base, "soak")
        topics = Topics(live.topic_prefix)
        markers = [ready_file(live, topics.group(g)) for g in ("processor", "sink")]
        (tmp / "sink").mkdir()
        procs["worker"] = start_workers(live, 1, tmp)
        procs["sink"] = start_workers(live, 1, tmp / "sink", worker_command("sink"))
        deadline = time.time() + 120
        while not all(m.exists() for m in markers):
            if time.time() > deadline:
                raise RuntimeError(f"workers not ready in 120 s; logs in {tmp}")
            time.sleep(0.2)
        ready_s = time.monotonic() - began
        print(f"stack and workers ready in {ready_s:.0f} s", flush=True)
        reader = MetricsReader.from_settings(live)
        client = reader.client
        gen = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--generate",
                "--bootstrap",
                live.kafka_bootstrap,
                "--topic-prefix",
                live.topic_prefix,
                "--runs",
                str(args.runs),
                "--rate",
                str(args.rate),
                "--ranks",
                str(args.ranks),
                "--steps",
                str(args.steps),
                "--step-s",
                str(args.step_s),
                "--pause-after",
                str(args.baseline_runs),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        gen_proc = psutil.Process(gen.pid)
        gen_since = (time.monotonic(), 0.0)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert gen is not None and gen.stdout is not None
            for line in gen.stdout:
                lines.put(line.strip())
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

        gen_last = ["not measured yet"]

        def gen_figure() -> str:
            # The generator's CPU so far; once it exited, the last figure read.
            pct = cpu_pct(gen_proc, gen_since)
            if not math.isnan(pct):
                gen_last[0] = f"{pct:.1f} % of a core"
            return gen_last[0]

        hold_s = args.resolve_timeout_s + REFRESH_S + MARGIN_S
        short_hold_s = live.incident_hold_s + MARGIN_S
        # (when to read, run, which check): checks in the order they fall due.
        due: deque[tuple[float, str, str]] = deque()
        short_due: deque[tuple[float, str, str]] = deque()
        stale: list[str] = []
        stale_timeout: list[str] = []
        histories: list[list[str]] = []
        nan_runs = nan_alerted = 0
        done_runs = 0
        last_finish = time.time()
        # Seconds until a worker forgot an idle run: state_idle_s, noticed by a timer of
        # state_idle_s / 4, and the margin.
        forget_s = live.state_idle_s * 1.25 + MARGIN_S
        # Runs finishing within forget_s of each other are held together: with the rate
        # steady, RSS during the load is compared at equal held state from this run on.
        steady_at = args.baseline_runs + math.ceil(args.rate * forget_s)
        late_at = args.runs - args.baseline_runs
        baseline: dict[str, int] | None = None
        baseline_at = math.inf
        early: dict[str, int] | None = None
        late: dict[str, int] | None = None
        gen_summary = ""
        generating = True

        def check(run: str, nan: str, strict: bool) -> None:
            nonlocal nan_runs, nan_alerted
            firing = reader.active_alerts(run)
            if firing and len(histories) < 3:
                # What the run's alerts did, to tell a lost clear from a late one; read now,
                # before the retention takes it.
                histories.append(
                    [
                        f"{run} {a.rule}/{a.rank} {a.status} t={a.t:.2f} "
                        f"raised_at={a.raised_at:.2f}: {a.summary}"
                        for a in reader.alerts(run)
                    ]
                )
            if firing:
                (stale_timeout if strict else stale).append(
                    f"{run}: {', '.join(f'{a.rule}/{a.rank}' for a in firing)}"
                )
            if strict and nan:
                nan_runs += 1
                history = reader.alerts(run)
                if any(a.rule == "nonfinite" and a.status == "firing" for a in history):
                    nan_alerted += 1

        while generating or due:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                line = ""
            if line is None:
                generating = False
            elif line.startswith("finished "):
                _, run, at, nan = line.split()
                nan = "" if nan == "-" else nan
                last_finish = float(at)
                due.append((last_finish + hold_s, run, nan))
                short_due.append((last_finish + short_hold_s, run, nan))
                done_runs += 1
                if done_runs == steady_at and steady_at < late_at:
                    label = f"after {done_runs} runs (held state steady)"
                    early = figure(label, procs, gen_figure())
                if done_runs == late_at and steady_at < late_at:
                    late = figure(f"after {done_runs} runs", procs, gen_figure())
            elif line == "paused":
                baseline_at = last_finish + forget_s
            elif line.startswith("generator_cpu_pct="):
                gen_summary = line
            now = time.time()
            if now >= baseline_at:
                baseline = figure(
                    f"after the first {args.baseline_runs} runs and their forget horizon",
                    procs,
                    gen_figure(),
                )
                print(f"processor: {holding_line(tmp / f'{live.topic_prefix}-0.log')}", flush=True)
                baseline_at = math.inf
                assert gen.stdin is not None
                gen.stdin.write("resume\n")
                gen.stdin.flush()
            while short_due and short_due[0][0] <= now:
                _, run, nan = short_due.popleft()
                check(run, nan, strict=False)
            while due and due[0][0] <= now:
                _, run, nan = due.popleft()
                check(run, nan, strict=True)
        gen.wait(30)
        load_s = time.monotonic() - began
        print(f"generator done: {gen_summary}; {done_runs} runs in {load_s:.0f} s", flush=True)

        time.sleep(max(0.0, last_finish + forget_s - time.time()))
        final = figure("after the forget horizon", procs, gen_figure())
        print(f"processor: {holding_line(tmp / f'{live.topic_prefix}-0.log')}", flush=True)

        # Retention: the last write of a run is at most its hold after it finished.
        expiry = last_finish + hold_s + args.retention_s + MARGIN_S
        keys_left = count_keys(client, live.key_prefix)
        while keys_left and time.time() < expiry:
            time.sleep(2.0)
            keys_left = count_keys(client, live.key_prefix)
        if keys_left:
            sample = sorted(client.scan_iter(match=f"{live.key_prefix}:*", count=1000))[:5]
            print(f"keys left after the retention, e.g.: {sample}", flush=True)
        reader.close()

        assert baseline is not None
        growth = {name: (final[name] - baseline[name]) / baseline[name] * 100 for name in baseline}
        if early is not None and late is not None:
            like = {name: (late[name] - early[name]) / early[name] * 100 for name in early}
            print(
                f"RSS growth under load, held state steady, from run {steady_at} to run "
                f"{late_at}: worker {like['worker']:+.1f} %, sink {like['sink']:+.1f} %"
            )
        print(
            f"NaN runs that raised their alert: {nan_alerted} of {nan_runs}; runs with an "
            f"alert firing {short_hold_s:.0f} s after they finished (the incident hold and "
            f"a margin): {len(stale)}; {hold_s:.0f} s after (the resolve timeout and a "
            f"margin): {len(stale_timeout)}"
        )
        for what in (stale[:5], stale_timeout[:5]):
            for entry in what:
                print(f"  firing: {entry}")
        for history in histories:
            for entry in history:
                print(f"    {entry}")
        print(
            f"{done_runs} runs of {args.ranks} ranks x {args.steps} steps in "
            f"{time.monotonic() - began:.0f} s; load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
        )
        print(
            f"runs={done_runs} worker_rss_growth_pct={growth['worker']:.1f} "
            f"sink_rss_growth_pct={growth['sink']:.1f} stale_firing={len(stale)} "
            f"keys_left={keys_left}"
        )
        finished = True
    finally:
        if gen is not None:
            stop_children([gen], 10.0)  # type: ignore[list-item]
        stop_children(procs["worker"] + procs["sink"], 15.0)
        stack.stop()
        # The workers' logs explain a failed run: kept then, removed otherwise.
        if finished:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"worker logs kept in {tmp}", file=sys.stderr)


def _generator_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--generate", action="store_true")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic-prefix", required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--ranks", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--step-s", type=float, required=True)
    parser.add_argument("--pause-after", type=int, required=True)
    generate(parser.parse_args())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--generate":
        _generator_main()
    else:
        main()
