"""Benchmark of served-model monitoring (issue 23). Prints figures; not a test.

* ``predictions_per_s``: one serving worker's processing of prediction messages (20
  features each, 500 records per message as the SDK sends them): decode, per-record
  checks, pending lookup, join and counts, the per-model MULTI/EXEC into a real Redis
  (its own valkey-server on a free loopback port, stopped at the end). The Kafka read is
  not in it (a faust worker reads ~16k messages/s here, 8M records/s at 500 per message).
* ``join_p99_ms``: from an outcome batch handed to the worker to its window's metrics
  rewritten in Redis, p99 over batches of 100 outcomes. Not in it: the Kafka hop (p50
  4 ms on tansu with the 50 ms fetch wait) and the agent's linger (`processor_linger_s`,
  0.1 s at most).
* ``drift_delay_windows``: windows of 1,000 predictions after a 0.5-sigma shift of one of
  20 features until feature_drift fires (2 consecutive windows required by default).
* ``false_drift_per_1k_windows``: drift alerts on a stable stream of 20 features, per
  1,000 windows of 1,000 predictions (bin counts drawn from the reference distribution,
  what the stage would count).

Beside each figure: the CPU seconds the load generator (building and encoding the
messages, drawing counts) spent, so it can be compared with what it loads.

With ``--live``, the first two figures come from the real pipeline instead: tansu and
valkey of the embedded stack and one processor worker process; pre-encoded messages are
replayed with one kafka-python producer (its CPU printed), ``predictions_per_s`` is the
count stored over the time from the first send to the last prediction counted in Redis,
and ``join_p99_ms`` is from an outcome's send to its label counted in Redis (polled
every 2 ms), over 50 outcomes sent one at a time.

Run: PYTHONPATH=. python bench/serving.py [--messages 40] [--windows 1000] [--live]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time

import numpy as np
import orjson

from processors.serving.evaluate import FEATURE_DRIFT, Judge
from processors.serving.reference import Reference
from processors.serving.stage import parse_records
from processors.serving_app import ServingWorker
from processors.serving_store import ServingStore
from sinks.local_redis import LocalRedis
from stepstream.keys import RedisKeys
from stepstream.redis_client import async_client
from stepstream.serving_contract import decode_serving
from stepstream.settings import Settings

FEATURES = 20
PER_MESSAGE = 500
WINDOW = 1000


def _messages(count: int, rng: np.random.Generator) -> tuple[list[bytes], list[bytes], float]:
    started = time.process_time()
    now = time.time()
    preds: list[bytes] = []
    outs: list[bytes] = []
    for m in range(count):
        values = rng.normal(0, 1, (PER_MESSAGE, FEATURES))
        scores = rng.random(PER_MESSAGE)
        records = [
            {
                "kind": "prediction",
                "id": f"p{m}-{i}",
                "t": now,
                "features": {f"f{j}": float(values[i, j]) for j in range(FEATURES)},
                "score": float(scores[i]),
                "segment": {"country": "DE" if i % 2 else "FR"},
            }
            for i in range(PER_MESSAGE)
        ]
        preds.append(orjson.dumps({"v": 1, "model": "bench", "version": "v1", "records": records}))
        outcomes = [
            {"kind": "outcome", "id": f"p{m}-{i}", "t": now + 1, "label": int(scores[i] > 0.5)}
            for i in range(0, PER_MESSAGE, 5)
        ]
        outs.append(orjson.dumps({"v": 1, "model": "bench", "version": "v1", "records": outcomes}))
    return preds, outs, time.process_time() - started


async def _worker_figures(url: str, messages: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    settings = Settings(redis_url=url)
    store = ServingStore(
        async_client(url), RedisKeys(), retention_s=3600, horizon_s=settings.serving_label_horizon_s
    )
    worker = ServingWorker(settings, store)
    # The reference first (the real worker has it from pm.reference()).
    ref = Reference.build(
        {f"f{j}": rng.normal(0, 1, 5000).tolist() for j in range(FEATURES)},
        rng.random(5000).tolist(),
        settings.serving_top_k,
        "given",
    )
    worker.model("bench").set_reference("v1", ref)
    preds, outs, gen_cpu = _messages(messages, rng)
    batch = 4  # messages per take(): 2,000 predictions
    wall = time.perf_counter()
    cpu = time.process_time()
    for start in range(0, len(preds), batch):
        items = []
        for raw in preds[start : start + batch]:
            envelope, records = decode_serving(raw)
            items.append(parse_records(envelope.model, envelope.version, records))
        await worker.handle(items, time.time())
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    latencies = []
    for raw in outs:
        began = time.perf_counter()
        envelope, records = decode_serving(raw)
        await worker.handle([parse_records(envelope.model, envelope.version, records)], time.time())
        latencies.append((time.perf_counter() - began) * 1000)
    await store.client.aclose()
    total = len(preds) * PER_MESSAGE
    return {
        "predictions_per_s": total / wall,
        "worker_cpu_per_s": total / cpu,
        "join_p99_ms": float(np.percentile(latencies, 99)),
        "join_p50_ms": float(np.percentile(latencies, 50)),
        "gen_cpu_s": gen_cpu,
        "joined": worker.outcomes["joined"],
    }


def _live_figures(messages: int) -> dict[str, float]:
    """Throughput and join latency through tansu, one processor worker and valkey."""
    import os
    import subprocess
    import tempfile
    import uuid
    from pathlib import Path

    from kafka import KafkaProducer

    from query.reader import MetricsReader
    from stepstream.stack import LocalStack, settings_env, worker_command
    from stepstream.streaming import ready_file
    from stepstream.topics import Topics

    rng = np.random.default_rng(0)
    preds, _, gen_cpu = _messages(messages, rng)
    outcome_ids = [f"p0-{i}" for i in range(50)]
    state_dir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    settings = Settings(
        state_dir=state_dir, topic_prefix=f"b{uuid.uuid4().hex[:6]}", session_timeout_s=3.0
    )
    stack = LocalStack(settings, workers=False)
    state = stack.start()
    live = settings.model_copy(
        update={"kafka_bootstrap": state.kafka_bootstrap, "redis_url": state.redis_url}
    )
    topics = Topics(live.topic_prefix)
    marker = ready_file(live, topics.group("processor"))
    env = {**os.environ, **settings_env(live)}
    with (state_dir / "processor.log").open("ab") as out:
        worker = subprocess.Popen(worker_command("processor"), env=env, stdout=out, stderr=out)
    reader = producer = None
    try:
        reader = MetricsReader.from_url(live.redis_url, live.key_prefix)
        producer = KafkaProducer(
            bootstrap_servers=live.kafka_bootstrap, linger_ms=5, max_request_size=2_000_000
        )
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        reference = {
            "kind": "reference",
            "t": time.time(),
            "features": {
                f"f{j}": rng.normal(0, 1, 2000).round(4).tolist() for j in range(FEATURES)
            },
            "scores": rng.random(2000).round(4).tolist(),
        }
        body = {"v": 1, "model": "bench", "version": "v1", "records": [reference]}
        producer.send(topics.serving, key=b"reference", value=orjson.dumps(body))
        producer.flush()
        time.sleep(1.0)
        total = len(preds) * PER_MESSAGE
        cpu = time.process_time()
        began = time.perf_counter()
        # One worker reads every partition: the messages need not be split by partition
        # here (the SDK splits them so that several workers can share a model).
        for raw in preds:
            producer.send(topics.serving, key=b"p", value=raw)
        producer.flush()
        send_cpu = time.process_time() - cpu

        def stored() -> int:
            perf = reader.performance("bench").total
            return int(perf["predictions"]) if perf else 0

        while stored() < total and time.perf_counter() - began < 120:
            time.sleep(0.01)
        elapsed = time.perf_counter() - began
        counted = stored()
        latencies = []
        cpu = time.process_time()
        for n, pid in enumerate(outcome_ids, 1):
            outcome = {"kind": "outcome", "id": pid, "t": time.time(), "label": 1}
            body = {"v": 1, "model": "bench", "version": "v1", "records": [outcome]}
            sent = time.perf_counter()
            producer.send(topics.serving, key=pid.encode(), value=orjson.dumps(body))
            producer.flush()
            while time.perf_counter() - sent < 10:
                perf = reader.performance("bench").total
                if perf and perf["labeled"] >= n:
                    break
                time.sleep(0.002)
            latencies.append((time.perf_counter() - sent) * 1000)
        outcome_cpu = time.process_time() - cpu
    finally:
        if producer is not None:
            producer.close(5)
        if reader is not None:
            reader.close()
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
        stack.stop()
    return {
        "predictions_per_s": counted / elapsed,
        "join_p99_ms": float(np.percentile(latencies, 99)),
        "join_p50_ms": float(np.percentile(latencies, 50)),
        "gen_cpu_s": gen_cpu + send_cpu,
        "send_cpu_s": send_cpu,
        "outcome_cpu_s": outcome_cpu,
        "joined": float(sum(lat < 10_000 for lat in latencies)),
    }


def _normal_bin_probs(edges: tuple[float, ...], shift: float) -> np.ndarray:
    cdf = [0.0, *(0.5 * (1 + math.erf((e - shift) / math.sqrt(2))) for e in edges), 1.0]
    return np.diff(cdf)


def _drift_figures(windows: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    ref = Reference.build(
        {f"f{j}": rng.normal(0, 1, 10_000).tolist() for j in range(FEATURES)}, [], 20, "given"
    )
    gen_cpu = 0.0

    def window_counts(shift_feature: str | None, shift: float) -> dict[str, int]:
        nonlocal gen_cpu
        began = time.process_time()
        counts: dict[str, int] = {"n": WINDOW}
        for name, fr in ref.features.items():
            assert fr.numeric is not None
            p = _normal_bin_probs(fr.numeric.edges, shift if name == shift_feature else 0.0)
            for i, c in enumerate(rng.multinomial(WINDOW, p / p.sum())):
                counts[f"f|{name}|{i}"] = int(c)
        gen_cpu += time.process_time() - began
        return counts

    judge = Judge(min_count=100, consecutive=2, quality_max_rate=0.05)
    false = 0
    for w in range(windows):
        _, decisions = judge.window("stable", "v1", w, ref, window_counts(None, 0.0), {})
        false += sum(d.action == "fire" for d in decisions)
    stable_gen = gen_cpu
    delays = []
    for _ in range(20):
        judge = Judge(min_count=100, consecutive=2, quality_max_rate=0.05)
        for w in range(5):
            judge.window("shift", "v1", w, ref, window_counts(None, 0.0), {})
        for k in range(1, 20):
            _, decisions = judge.window("shift", "v1", 5 + k, ref, window_counts("f3", 0.5), {})
            if any(
                d.rule == FEATURE_DRIFT and d.action == "fire" and d.metric == "feature:f3"
                for d in decisions
            ):
                delays.append(k)
                break
    return {
        "false_drift_per_1k_windows": false * 1000 / windows,
        "drift_delay_windows": float(np.median(delays)),
        "drift_delay_max": float(max(delays)),
        "stable_gen_cpu_s": stable_gen,
        "shift_gen_cpu_s": gen_cpu - stable_gen,
        "trials": float(len(delays)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=40, help="prediction messages of 500")
    parser.add_argument("--windows", type=int, default=1000, help="stable windows judged")
    parser.add_argument("--live", action="store_true", help="through tansu and a worker")
    args = parser.parse_args()
    if args.live:
        w = _live_figures(args.messages)
        w["worker_cpu_per_s"] = math.nan  # the worker is another process
        print(
            f"live: producer CPU {w['send_cpu_s']:.2f} s for {args.messages} messages, "
            f"{w['outcome_cpu_s']:.2f} s for the 50 outcomes and polling"
        )
    else:
        with LocalRedis() as server:
            w = asyncio.run(_worker_figures(server.url, args.messages))
    d = _drift_figures(args.windows)
    print(
        f"worker: {w['predictions_per_s']:,.0f} predictions/s wall, {w['worker_cpu_per_s']:,.0f} "
        f"per worker CPU s ({args.messages * PER_MESSAGE} predictions of {FEATURES} features; "
        f"generator CPU {w['gen_cpu_s']:.2f} s, before the timed part)"
    )
    print(
        f"join: p50 {w['join_p50_ms']:.1f} ms, p99 {w['join_p99_ms']:.1f} ms per batch of "
        f"{PER_MESSAGE // 5} outcomes ({w['joined']} joined)"
    )
    print(
        f"drift: median {d['drift_delay_windows']:.0f} windows (max {d['drift_delay_max']:.0f}, "
        f"{d['trials']:.0f} trials) after a 0.5-sigma shift, "
        f"generator CPU {d['shift_gen_cpu_s']:.2f} s; "
        f"{d['false_drift_per_1k_windows']:.2f} false alerts per 1k stable windows of {FEATURES} "
        f"features, generator CPU {d['stable_gen_cpu_s']:.2f} s"
    )
    print(
        f"predictions_per_s={w['predictions_per_s']:.0f} (gen_cpu_s={w['gen_cpu_s']:.2f}) "
        f"join_p99_ms={w['join_p99_ms']:.1f} (gen_cpu_s={w['gen_cpu_s']:.2f}) "
        f"drift_delay_windows={d['drift_delay_windows']:.0f} "
        f"(gen_cpu_s={d['shift_gen_cpu_s']:.2f}) "
        f"false_drift_per_1k_windows={d['false_drift_per_1k_windows']:.2f} "
        f"(gen_cpu_s={d['stable_gen_cpu_s']:.2f})"
    )


if __name__ == "__main__":
    main()
