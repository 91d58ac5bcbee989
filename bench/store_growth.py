"""Store growth: Redis bytes per rank-hour at the default retention and caps, and the
proof that a run longer than the caps stops growing the store. Prints figures; not a test.

Starts its own Valkey (`sinks.local_redis.LocalRedis`, memory only) and drives the sink's
write path in-process (`WritePlan` -> `RedisWriter`, the code the sink worker runs) with
one run of `--ranks` ranks at the SDK's defaults, in event time compressed as fast as the
writes go: every second of event time, each rank logs one step of 30 metrics, one
heartbeat (3 values, with the step) and one system sample (6 values, no step: the series
by time); every 2 s (``window_stats_interval_s``) a window update (latest values and 3
windows of stats) and a cross-rank update. No alerts. Event time starts `--hours` before
now so every point is within the retention (7 days) and the 24 h time horizon applies as
it would live.

At each checkpoint (hours of event time) it reads the store two ways: the sum of
``MEMORY USAGE key SAMPLES 0`` over the run's keys (exact, per key) and ``INFO memory``
``used_memory`` over its value before the run (what the server holds, allocator overhead
included). The series caps (Settings ``series_*``) bound each raw series at 10,000 points
by step (2.8 h at 1 step/s), 10,000 coarse points one in 10 steps (27.8 h), 10,000 points
by time and 10,000 time-index entries per rank (2.8 h): past 27.8 h nothing grows.

Usage: PYTHONPATH=. python bench/store_growth.py [--ranks 2] [--hours 32]
Last line: bytes_per_rank_hour=... bytes_per_rank_capped=... growth_after_caps_pct=...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time

import redis

from sinks.local_redis import LocalRedis
from sinks.plan import SeriesLimits, WritePlan
from sinks.redis_writer import RedisWriter
from stepstream import vocabulary as vocab
from stepstream.contract import (
    Batch,
    CrossRankStats,
    CrossRankUpdate,
    Record,
    RecordKind,
    WindowStats,
    WindowUpdate,
)
from stepstream.keys import RedisKeys
from stepstream.redis_client import async_client
from stepstream.settings import Settings

METRICS = 30
NAMES = [
    vocab.LOSS.name,
    vocab.GRAD_NORM.name,
    "opt/lr/0",
    vocab.DATA_WAIT.name,
    vocab.COMPUTE.name,
    vocab.SAMPLES_PER_S.name,
] + [f"grad/norm/layer{i}.weight" for i in range(METRICS - 6)]
SYSTEM = [
    "sys/cpu_pct",
    "sys/host_mem_pct",
    "sys/proc_rss_bytes",
    "sys/net_rx_bytes_s",
    "sys/net_tx_bytes_s",
    "sys/disk_pct",
]
WINDOWS = ("50steps", "10s", "60s")
#: Seconds of event time per sink flush: the sink batches 500 messages, which at one
#: message a second per rank is minutes of a few ranks; grouping does not change what
#: is stored.
FLUSH_S = 300


def records(rank_seq: int, step: int, t: float, rng: random.Random) -> list[Record]:
    """One second of one rank: a train step, a heartbeat, a system sample."""
    train = {name: rng.random() for name in NAMES}
    beat = {
        vocab.HEARTBEAT_STEP: float(step),
        vocab.HEARTBEAT_PID: 4242.0,
        vocab.HEARTBEAT_STATUS: vocab.STATUS_CODES["running"],
    }
    system = {name: rng.random() * 100 for name in SYSTEM}
    # model_construct: the values are valid by construction, and validating 10 M of them
    # would be most of the bench's time.
    return [
        Record.model_construct(seq=rank_seq, t=t, step=step, kind=RecordKind.TRAIN, values=train),
        Record.model_construct(
            seq=rank_seq + 1, t=t, step=step, kind=RecordKind.HEARTBEAT, values=beat, text=None
        ),
        Record.model_construct(
            seq=rank_seq + 2, t=t, step=None, kind=RecordKind.SYSTEM, values=system, text=None
        ),
    ]


def window_update(run: str, rank: int, world: int, step: int, t: float) -> WindowUpdate:
    """A rank's window update as stage 1 sends it every `window_stats_interval_s`."""
    stats = {
        m: WindowStats(
            count=50, mean=0.5, min=0.1, max=0.9, last=0.4, std=0.2, ema=0.5, p50=0.5, p95=0.85
        )
        for m in NAMES
    }
    return WindowUpdate(
        run=run,
        rank=rank,
        world=world,
        node=f"node{rank // 8}",
        step=step,
        t=t,
        status="running",
        latest={m: random.random() for m in NAMES + SYSTEM},
        windows={w: stats for w in WINDOWS},
    )


def crossrank(run: str, world: int, step: int, t: float) -> CrossRankUpdate:
    """The run's cross-rank stats at a finished step."""
    stats = {
        m: CrossRankStats(ranks=world, mean=1.0, min=0.9, max=1.1, std=0.05, argmin=0, argmax=1)
        for m in NAMES[:6]
    }
    return CrossRankUpdate(run=run, step=step, t=t, world=world, stats=stats)


def measure(client: redis.Redis, keys: RedisKeys, run: str, base_used: int) -> tuple[int, int]:
    """(sum of MEMORY USAGE over the run's keys and the registry, used_memory growth)."""
    total = 0
    for key in client.scan_iter(match=f"{keys.prefix}:*", count=1000):
        total += int(client.memory_usage(key, samples=0) or 0)
    used = int(client.info("memory")["used_memory"]) - base_used
    return total, used


async def drive(args: argparse.Namespace, url: str) -> list[tuple[float, int, int, int]]:
    """Write the run, checkpoint by checkpoint; (hours, keys, bytes by key, used_memory)."""
    settings = Settings()  # the defaults: retention, caps
    keys = RedisKeys(settings.key_prefix)
    limits = SeriesLimits.from_settings(settings)
    client = async_client(url)
    writer = RedisWriter(client, settings.retention_s)
    sync = redis.Redis.from_url(url)
    base_used = int(sync.info("memory")["used_memory"])
    run, world = "store-growth", args.ranks
    rng = random.Random(7)
    start = time.time() - args.hours * 3600
    seqs = [0] * world
    checkpoints = sorted({float(h) for h in args.checkpoints.split(",")} | {args.hours})
    out: list[tuple[float, int, int, int]] = []
    total_s = int(args.hours * 3600)
    flushed = 0
    began = time.monotonic()
    while flushed < total_s:
        plan = WritePlan(keys, limits)
        end = min(total_s, flushed + FLUSH_S)
        for rank in range(world):
            recs: list[Record] = []
            for second in range(flushed, end):
                recs += records(seqs[rank], second, start + second, rng)
                seqs[rank] += 3
            plan.add_batch(
                Batch.model_construct(
                    v=1,
                    run=run,
                    rank=rank,
                    world=world,
                    node=f"node{rank // 8}",
                    pid=4242,
                    incarnation=f"inc{rank}",
                    records=recs,
                )
            )
            # Hashes are overwritten: the newest update of the flush is what stays.
            plan.add_window_update(window_update(run, rank, world, end - 1, start + end - 1))
        plan.add_crossrank(crossrank(run, world, end - 1, start + end - 1))
        await writer.write(plan)
        flushed = end
        while checkpoints and flushed >= checkpoints[0] * 3600:
            hours = checkpoints.pop(0)
            by_key, used = measure(sync, keys, run, base_used)
            count = sum(1 for _ in sync.scan_iter(match=f"{keys.prefix}:*", count=1000))
            out.append((hours, count, by_key, used))
            print(
                f"{hours:5.1f} h of {world} ranks: {count} keys, {by_key / 2**20:7.2f} MiB by "
                f"MEMORY USAGE, used_memory +{used / 2**20:7.2f} MiB "
                f"({time.monotonic() - began:.0f} s)",
                flush=True,
            )
    sync.close()
    await client.aclose()
    return out


def main() -> None:
    """Write the run and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--hours", type=float, default=32.0, help="event time written")
    parser.add_argument("--checkpoints", default="1,2,2.78,6,12,24,27.8,28,30")
    args = parser.parse_args()
    with LocalRedis() as server:
        points = asyncio.run(drive(args, server.url))
    by_hour = {h: (c, k, u) for h, c, k, u in points}
    first = by_hour[min(by_hour)]
    per_rank_hour = first[1] / args.ranks / min(by_hour)
    capped = [(h, k) for h, _, k, _ in points if h >= 27.8]
    growth = (capped[-1][1] - capped[0][1]) / capped[0][1] * 100 if len(capped) > 1 else 0.0
    peak = max(k for _, _, k, _ in points) / args.ranks
    print(
        f"first hour: {per_rank_hour / 1024:.0f} KiB per rank-hour by MEMORY USAGE "
        f"({first[2] / args.ranks / min(by_hour) / 1024:.0f} KiB by used_memory); at the "
        f"caps: {peak / 2**20:.1f} MiB per rank; from {capped[0][0]:g} h to {capped[-1][0]:g} h "
        f"the store changed by {growth:+.2f} %; load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"bytes_per_rank_hour={per_rank_hour:.0f} bytes_per_rank_capped={peak:.0f} "
        f"growth_after_caps_pct={growth:.2f}"
    )


if __name__ == "__main__":
    main()
