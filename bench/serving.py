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

Run: PYTHONPATH=. python bench/serving.py [--messages 40] [--windows 1000]
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
    args = parser.parse_args()
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
