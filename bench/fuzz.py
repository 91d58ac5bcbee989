"""Long fuzz run against the live pipeline: hostile bytes on the telemetry topic (and the
internal topics) interleaved with a seq-numbered good stream through the SDK.

Starts its own embedded stack (tansu, Valkey, processor and sink workers) in a temporary
folder, stops everything it started (also on failure), and checks what
tests/integration/test_hostile_input.py checks, at a scale CI cannot afford: every bad
message has exactly one dead letter, the good stream is complete in Redis, and the workers
neither crashed nor restarted. Not a test; prints figures.

Usage: PYTHONPATH=. python bench/fuzz.py [--messages 50000] [--seed 1]
Last line: hostile=... dead_letters=... missing=... twice=... good=.../... crashed=... s=...
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import producers
from query.reader import MetricsReader
from stepstream.settings import Settings
from stepstream.stack import LocalStack
from stepstream.topics import Topics

# Run with the repository root on sys.path when started as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INTERNAL = {
    "validated": "sink/series-sink",
    "summaries": "processor/run-stage",
    "windows": "sink/windows-sink",
    "crossrank": "sink/crossrank-sink",
    "alerts": "sink/alerts-sink",
}


def hostile(rng: random.Random, run: str) -> bytes | None:
    """One message that no stage may use, drawn from every kind of trouble we know."""
    now = time.time()

    def doc(**fields: Any) -> bytes:
        base: dict[str, Any] = {
            "v": 1,
            "run": run,
            "rank": 0,
            "records": [{"seq": 0, "t": now, "step": 0, "values": {"loss": 1.0}}],
        }
        base.update(fields)
        return json.dumps(base).encode()

    def rec(**fields: Any) -> list[dict[str, Any]]:
        return [{"seq": 0, "t": now, "step": 0, "values": {"loss": 1.0}, **fields}]

    kind = rng.randrange(16)
    if kind in (13, 14) and rng.random() > 0.03:
        kind = rng.randrange(13)  # megabyte messages: rare, or the broker holds gigabytes
    if kind == 0:
        return None
    if kind == 1:
        return b""
    if kind == 2:
        return b"\xff" + rng.randbytes(rng.randrange(300))
    if kind == 3:
        return b"[" * rng.randrange(201, 50_000)
    if kind == 4:
        field, value = rng.choice(
            [("rank", -1), ("rank", "x"), ("world", 0), ("records", {}), ("run", 5), ("node", [])]
        )
        return doc(**{field: value})
    if kind == 5:
        return doc(v=rng.choice([0, -1, 2, 10**9]))
    if kind == 6:
        return doc(records=rec(t=now + rng.uniform(3700, 1e9)))
    if kind == 7:
        return doc(records=rec(t=now - rng.uniform(8 * 86400, now)))
    if kind == 8:
        return doc(run=rng.choice(["{run}", "a:b", "<script>", "x" * 129, "a b", "", "r\n"]))
    if kind == 9:
        return doc(records=rec(values={rng.choice(["a b", "{x}", "a|b", "", "y" * 201]): 1.0}))
    if kind == 10:
        return doc(records=rec(values={"loss": rng.choice(["high", None, []])}))
    if kind == 11:
        return doc(records=rec(kind="log", text="<script>" + "x" * 20_000))
    if kind == 12:
        return doc(node="\x1b" * 10_000)
    if kind == 13:
        return doc(records=[{"seq": n, "t": now} for n in range(20_001)])
    if kind == 14:
        return doc(records=rec(kind="log", text="y" * 1_500_000))
    return rng.randbytes(rng.randrange(1, 500)) + b"}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000, help="hostile messages")
    parser.add_argument("--good", type=int, default=2_000, help="good steps through the SDK")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stepstream-fuzz-") as tmp:
        os.chdir(tmp)  # faust writes its data folders into the working directory
        base = Settings(state_dir=Path(tmp), topic_prefix=f"fz{uuid.uuid4().hex[:8]}")
        stack = LocalStack(base)
        state = stack.start()
        try:
            live = base.model_copy(
                update={"kafka_bootstrap": state.kafka_bootstrap, "redis_url": state.redis_url}
            )
            return run(live, args, rng, state, started)
        finally:
            stack.stop()


def run(live: Settings, args: argparse.Namespace, rng: random.Random, state: Any, t0: float) -> int:
    topics = Topics(live.topic_prefix)
    pids = {p.name: p.pid for p in state.processes if p.name in ("processor", "sink")}
    producer = KafkaProducer(
        bootstrap_servers=live.kafka_bootstrap, max_request_size=8 << 20, linger_ms=5
    )
    run_id = f"fuzz-{uuid.uuid4().hex[:8]}"
    monitor = producers.init(run_id, rank=0, world=1, settings=live)
    futures: list[tuple[Any, str]] = []
    every = max(1, args.messages // args.good)
    step = 0
    for i in range(args.messages):
        if rng.random() < 0.02:
            name = rng.choice(sorted(INTERNAL))
            topic, stage = getattr(topics, name), INTERNAL[name]
            value: bytes | None = rng.choice([None, b"", b"\xff\xfe", b"[" * 5000, b"{}x"])
        else:
            topic, stage = topics.telemetry, "processor/series-stage"
            value = hostile(rng, run_id)
        key = rng.choice([f"{run_id}:0".encode(), None, b"\xff{x}:", b"k" * 10_000])
        futures.append((producer.send(topic, key=key or b"t", value=value), stage))
        if i % every == 0 and step < args.good:
            monitor.log(step, seq=float(step))
            step += 1
    while step < args.good:
        monitor.log(step, seq=float(step))
        step += 1
    monitor.flush(60)
    monitor.close()
    producer.flush()
    expected = {}
    for future, stage in futures:
        meta = future.get(timeout=60)
        expected[(meta.topic, meta.partition, meta.offset)] = stage
    producer.close()
    print(f"sent {len(expected)} hostile messages in {time.monotonic() - t0:.1f}s")

    consumer = KafkaConsumer(bootstrap_servers=live.kafka_bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topics.deadletter, p) for p in range(live.partitions)])
    consumer.seek_to_beginning()
    seen: Counter[tuple[str, int, int]] = Counter()
    reasons: Counter[tuple[str, str]] = Counter()
    wrong_stage = 0
    # Wait while dead letters keep coming (the processor may be minutes behind after a
    # large run), until all arrived, or until none came for a minute.
    idle_deadline = time.monotonic() + 60
    quiet_until = None
    while time.monotonic() < idle_deadline:
        got = 0
        for messages in consumer.poll(500, max_records=10_000).values():
            for m in messages:
                got += 1
                letter = json.loads(m.value)
                where = (letter["topic"], letter["partition"], letter["offset"])
                seen[where] += 1
                reasons[(letter["stage"], letter["reason"])] += 1
                wrong_stage += expected.get(where, letter["stage"]) != letter["stage"]
        if got:
            idle_deadline = time.monotonic() + 60
        if set(expected) <= set(seen):
            quiet_until = quiet_until or time.monotonic() + 3  # catch late duplicates
            if time.monotonic() > quiet_until:
                break
    consumer.close()

    reader = MetricsReader.from_url(live.redis_url, live.key_prefix)
    good = 0
    for _ in range(60):
        points = reader.series(run_id, "seq", rank=0).points
        good = sum(1 for p in points if p.step is not None and p.value == float(p.step))
        if good >= args.good:
            break
        time.sleep(1)
    reader.close()

    crashed = []
    for proc in state.processes:
        if proc.name in pids:
            text = Path(proc.log).read_text(errors="replace")
            if not proc.is_running() or "Traceback" in text or "crashed" in text:
                crashed.append(proc.name)
    for (stage, reason), n in sorted(reasons.items()):
        print(f"  {stage:26} {reason:18} {n}")
    missing = len(set(expected) - set(seen))
    twice = sum(1 for n in seen.values() if n > 1)
    stray = len(set(seen) - set(expected))
    print(
        f"hostile={len(expected)} dead_letters={sum(seen.values())} missing={missing} "
        f"twice={twice} stray={stray} wrong_stage={wrong_stage} good={good}/{args.good} "
        f"crashed={','.join(crashed) or 'none'} s={time.monotonic() - t0:.0f}"
    )
    ok = not (missing or twice or stray or wrong_stage or crashed) and good == args.good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
