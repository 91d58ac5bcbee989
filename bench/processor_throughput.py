"""Processor throughput, end to end: broker -> processor worker -> windows topic.

Prints figures; not a test. Starts a tansu broker (LocalStack, workers=False), then, each on
its own topic prefix so no phase sees another's data:

1. ceiling: a faust worker whose agent only counts messages (the raw faust consume rate);
2. one processor worker (`stepstream worker processor`) over N pre-produced messages;
3. the same with two processor worker processes sharing the partitions;
4. latency: one processor worker fed at a steady rate below its capacity; p99 of
   (window update arrival - event time of the batch's newest record), event time being
   the wall clock at send.

Throughput is counted from the first output to the last, over the input messages
processed in between (the per-rank summaries stage 1 writes say how many records they
cover), so group joins and start-up are not counted. Messages are realistic batches: one
rank, 10 records, 20 values each. Every process started here is stopped, also on failure.

Usage: PYTHONPATH=. python bench/processor_throughput.py [--messages 12000]
Last line: values_per_s=... msgs_per_s=... faust_ceiling_ratio=... p99_ms=... scale_2w=...
values_per_cpu_s=... (one worker's values per CPU second it used from the first output
to the last: what a shared machine's load moves least).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stepstream.contract import Batch, Record
from stepstream.settings import Settings
from stepstream.stack import LocalStack, settings_env, stop_children, worker_command
from stepstream.topics import Topics

RUNS, RANKS, RECORDS, VALUES = 4, 8, 10, 20
METRICS = ["loss", "grad_norm", "data_time", "compute_time", "samples_per_s", "lr"] + [
    f"grad_norm/layer{i}" for i in range(VALUES - 6)
]


def make_batch(
    run: int, rank: int, seq: int, step: int, t: float, rng: random.Random, incarnation: str
) -> bytes:
    """One telemetry message: RECORDS records of VALUES values for one rank."""
    records = []
    for i in range(RECORDS):
        s = step + i
        values = {m: rng.random() + 0.5 for m in METRICS}
        values["loss"] = 2.0 / (1 + s / 100) + rng.gauss(0, 0.02)
        records.append(Record(seq=seq + i, t=t + i * 0.02, step=s, values=values))
    return Batch(
        run=f"bench{run}",
        rank=rank,
        world=RANKS,
        node="n",
        pid=1,
        incarnation=incarnation,
        records=records,
    ).to_bytes()


def produce(settings: Settings, count: int, paced_rate: float | None = None) -> float:
    """Produce `count` messages round-robin over runs and ranks; return seconds taken."""
    topic = Topics(settings.topic_prefix).telemetry
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, max_request_size=4_000_000
    )
    rng = random.Random(0)
    incarnation = uuid.uuid4().hex[:8]
    start = time.time()
    base = start - 3600.0 if paced_rate is None else 0.0
    try:
        for n in range(count):
            key_index, round_ = n % (RUNS * RANKS), n // (RUNS * RANKS)
            run, rank = divmod(key_index, RANKS)
            if paced_rate is not None:
                due = start + n / paced_rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                t = time.time() - (RECORDS - 1) * 0.02
            else:
                t = base + round_ * RECORDS * 0.02
            value = make_batch(run, rank, round_ * RECORDS, round_ * RECORDS, t, rng, incarnation)
            producer.send(topic, key=f"bench{run}:{rank}".encode(), value=value)
        producer.flush(60)
    finally:
        producer.close(5)
    return time.time() - start


def consumer_on(settings: Settings, topic: str, from_end: bool = False) -> KafkaConsumer:
    """A consumer assigned to every partition of `topic` from the start (or the end)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=50_000_000,
    )
    parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
    consumer.assign(parts)
    if from_end:
        consumer.seek_to_end(*parts)
        for part in parts:
            consumer.position(part)
    else:
        consumer.seek_to_beginning(*parts)
    return consumer


def start_workers(
    settings: Settings, count: int, logs: Path, cmd: list[str] | None = None
) -> list[subprocess.Popen[bytes]]:
    """Start `count` worker processes with `settings` in their environment."""
    env = {**os.environ, **settings_env(settings)}
    return [
        spawn(cmd or worker_command("processor"), env, logs / f"{settings.topic_prefix}-{i}.log")
        for i in range(count)
    ]


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A child in its own session (stopped by `stop_children`), its output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> float:
    """User + system CPU seconds the worker processes have used so far."""
    total = 0.0
    for proc in procs:
        times = psutil.Process(proc.pid).cpu_times()
        total += times.user + times.system
    return total


def drain(
    settings: Settings,
    expected: int,
    timeout: float,
    procs: list[subprocess.Popen[bytes]] | None = None,
) -> tuple[int, float, float]:
    """Wait until summaries covering `expected` input messages and the final window
    update of every rank arrived; return (messages counted after the first output, seconds
    from the first output to the last window update, CPU seconds `procs` used meanwhile:
    a figure a busy shared machine moves far less than the wall-clock rate)."""
    topics = Topics(settings.topic_prefix)
    summaries = consumer_on(settings, topics.summaries)
    windows = consumer_on(settings, topics.windows)
    final_step = (expected // (RUNS * RANKS) - 1) * RECORDS + RECORDS - 1
    deadline = time.time() + timeout
    seen = first_count = 0
    first_at = last_at = None
    first_cpu = last_cpu = 0.0
    done_ranks: set[str] = set()
    try:
        while time.time() < deadline and (seen < expected or len(done_ranks) < RUNS * RANKS):
            for records in summaries.poll(timeout_ms=100, max_records=100_000).values():
                # A summary covers one or more input messages of one rank.
                inputs = sum(json.loads(r.value)["records"] for r in records) // RECORDS
                if first_at is None and records:
                    first_at, first_count = time.time(), inputs
                    first_cpu = cpu_seconds(procs or [])
                seen += inputs
            for records in windows.poll(timeout_ms=10, max_records=100_000).values():
                for record in records:
                    doc = json.loads(record.value)
                    if doc.get("step") == final_step:
                        done_ranks.add(f"{doc['run']}:{doc['rank']}")
                        last_at = time.time()
                        last_cpu = cpu_seconds(procs or [])
        if seen < expected or first_at is None or last_at is None:
            raise RuntimeError(f"only {seen}/{expected} messages processed in {timeout:.0f}s")
        return seen - first_count, last_at - first_at, last_cpu - first_cpu
    finally:
        summaries.close()
        windows.close()


def latency(settings: Settings, rate: float, seconds: float) -> list[float]:
    """Produce at `rate` msgs/s for `seconds`; return update latencies in ms."""
    windows = consumer_on(settings, Topics(settings.topic_prefix).windows, from_end=True)
    count = int(rate * seconds)
    out: list[float] = []
    try:
        import threading

        feeder = threading.Thread(target=produce, args=(settings, count, rate), daemon=True)
        feeder.start()
        deadline = time.time() + seconds + 30
        while time.time() < deadline and (feeder.is_alive() or len(out) < count * 0.9):
            for records in windows.poll(timeout_ms=100).values():
                now = time.time()
                for record in records:
                    out.append((now - json.loads(record.value)["t"]) * 1000)
        feeder.join(10)
        return out
    finally:
        windows.close()


def ceiling_worker(argv: list[str]) -> None:
    """Child mode: a faust worker that only counts telemetry messages, then writes the
    counting span to a file."""
    import faust

    from stepstream.faust_seam import make_app, run_worker

    out, expected = Path(argv[0]), int(argv[1])
    settings = Settings()
    topics = Topics(settings.topic_prefix)
    app = make_app(settings, topics.group("ceiling"))
    topic = app.topic(
        topics.telemetry,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    state = {"n": 0, "first": 0.0}

    @app.agent(topic)
    async def count(stream: faust.StreamT) -> None:
        async for _ in stream.events():
            state["n"] += 1
            if state["n"] == 1:
                state["first"] = time.time()
            if state["n"] == expected:
                out.write_text(json.dumps({"n": expected - 1, "s": time.time() - state["first"]}))

    run_worker(app, "warn")


def phase_settings(base: Settings, name: str) -> Settings:
    """Settings on a fresh topic prefix, topics created."""
    from stepstream.admin import ensure_topics

    live = base.model_copy(update={"topic_prefix": f"b{name}{uuid.uuid4().hex[:6]}"})
    ensure_topics(live)
    return live


def main() -> None:
    """Run every phase and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=12_000)
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=0.0,
        help="msgs/s of the latency phase (default: half the measured rate)",
    )
    args = parser.parse_args()
    n = args.messages - args.messages % (RUNS * RANKS)
    tmp = Path(tempfile.mkdtemp(prefix="stepstream-bench-"))
    stack = LocalStack(Settings(state_dir=tmp), workers=False)
    procs: list[subprocess.Popen[bytes]] = []
    finished = False
    try:
        state = stack.start()
        base = Settings(
            state_dir=tmp,
            kafka_bootstrap=state.kafka_bootstrap,
            redis_url=state.redis_url,
            session_timeout_s=6.0,
        )

        ceiling = phase_settings(base, "c")
        produce(ceiling, n)
        marker = tmp / "ceiling.json"
        procs = start_workers(
            ceiling, 1, tmp, [sys.executable, __file__, "--ceiling-worker", str(marker), str(n)]
        )
        deadline = time.time() + 300
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.2)
        stop_children(procs, 15.0)
        doc = json.loads(marker.read_text())
        ceiling_rate = doc["n"] / doc["s"]
        print(f"faust ceiling (count only): {ceiling_rate:,.0f} msgs/s over {n} messages")

        rates: dict[int, float] = {}
        cpu_rates: dict[int, float] = {}
        for workers in (1, 2):
            live = phase_settings(base, f"w{workers}")
            produce(live, n)
            procs = start_workers(live, workers, tmp)
            counted, seconds, cpu = drain(live, n, 600, procs)
            stop_children(procs, 15.0)
            rates[workers] = counted / seconds
            cpu_rates[workers] = counted * RECORDS * VALUES / cpu if cpu > 0 else float("nan")
            print(
                f"{workers} processor worker(s): {rates[workers]:,.0f} msgs/s, "
                f"{rates[workers] * RECORDS * VALUES:,.0f} values/s "
                f"({counted} msgs in {seconds:.1f}s; "
                f"{cpu_rates[workers]:,.0f} values per worker CPU second)"
            )

        live = phase_settings(base, "lat")
        procs = start_workers(live, 1, tmp)
        rate = args.latency_rate or max(50.0, rates[1] / 2)
        # A short warm-up send lets the group join before latency is measured.
        produce(live, RUNS * RANKS, paced_rate=1000.0)
        drain(live, RUNS * RANKS, 120)
        lat = sorted(latency(live, rate, 15.0))
        stop_children(procs, 15.0)
        p99 = lat[int(0.99 * (len(lat) - 1))] if lat else float("nan")
        p50 = lat[len(lat) // 2] if lat else float("nan")
        print(
            f"latency at {rate:.0f} msgs/s: p50 {p50:.0f} ms, p99 {p99:.0f} ms ({len(lat)} updates)"
        )

        msgs = rates[1]
        # Figures from a shared machine mean little without the load they were taken under.
        load1, load5, _ = os.getloadavg()
        print(f"load average {load1:.1f} (5 min {load5:.1f}) on {os.cpu_count()} cores")
        print(
            f"values_per_s={msgs * RECORDS * VALUES:.0f} msgs_per_s={msgs:.0f} "
            f"faust_ceiling_ratio={msgs / ceiling_rate:.2f} p99_ms={p99:.0f} "
            f"scale_2w={rates[2] / rates[1]:.2f} values_per_cpu_s={cpu_rates[1]:.0f}"
        )
        finished = True
    finally:
        stop_children(procs, 15.0)
        stack.stop()
        # The workers' logs are what explains a failed run: kept then, removed otherwise.
        if finished:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"worker logs kept in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--ceiling-worker":
        ceiling_worker(sys.argv[2:])
    else:
        main()
