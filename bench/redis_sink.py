"""Benchmark of the Redis sink and query paths (prints figures; not a test).

Starts its own valkey-server on a free loopback port and stops it at the end. Measures,
on that one server in one run:

* ceiling: a bare redis-py pipelined loop of single-field HSETs (commands/s);
* sink: bytes -> decode -> WritePlan -> RedisWriter pipeline, on realistic messages of
  64 ranks x 30 metrics (telemetry batches of 20 records and window updates with 3
  windows), in metric values/s;
* `redis-benchmark -P 16 -q -t set,hset` for context, when redis-benchmark is installed;
* query latency p50/p99: rolling stats of one window of a 64 x 30 run; a 10,000-point
  series downsampled to 1,000 points; and the floor under each, the bare redis-py fetch
  of the same keys in the same run (HVALS of the window hash, the command the read sends,
  and ZRANGE of the series):
  ``rolling_floor_ratio`` and ``series_floor_ratio`` are our p50 over the floor's p50,
  the two called alternately so that both see the same load; ``columns_floor_ratio`` the
  same series read as numpy columns (`MetricsReader.columns`, not downsampled) over the
  same ZRANGE floor; ``*_cpu_ratio`` the median
  per pair of the client thread's CPU time (ours / floor); ``rolling_hgetall_ratio`` the
  rolling read over a bare HGETALL of the window hash (the floor before reads sent HVALS).

Run: PYTHONPATH=. python bench/redis_sink.py [--seconds 3] [--profile]

``--profile`` also runs each read loop under pyinstrument (installed separately) and
prints its call tree: where the time between a read and its floor goes.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable

import redis

from query.reader import MetricsReader
from sinks.local_redis import LocalRedis
from sinks.plan import SeriesLimits, WritePlan
from sinks.redis_writer import RedisWriter
from stepstream.contract import Batch, Record, WindowStats, WindowUpdate, decode_batch
from stepstream.keys import SERIES_STEP, RedisKeys
from stepstream.redis_client import async_client
from stepstream.stored_stats import OpenWindowUpdate

RANKS, METRICS, RECORDS_PER_BATCH, SINK_BATCH = 64, 30, 20, 500
WINDOWS = ("50steps", "10s", "60s")
NAMES = [f"m{i:02d}/layer.{i}" for i in range(METRICS)]


def ceiling(url: str, seconds: float) -> float:
    """Single-field HSETs per second through a bare redis-py pipeline of 1,000."""
    client = redis.Redis.from_url(url)
    sent, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        pipe = client.pipeline(transaction=False)
        for i in range(1000):
            pipe.hset("ceiling", f"f{i}", "1.2345")
        pipe.execute()
        sent += 1000
    rate = sent / (time.perf_counter() - start)
    client.delete("ceiling")
    client.close()
    return rate


def ceiling_async(url: str, seconds: float) -> float:
    """The same loop through redis.asyncio, the client the sink runs on."""
    from redis import asyncio as aioredis

    async def go() -> float:
        client = aioredis.Redis.from_url(url)
        sent, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            pipe = client.pipeline(transaction=False)
            for i in range(1000):
                pipe.hset("ceiling", f"f{i}", "1.2345")
            await pipe.execute()
            sent += 1000
        rate = sent / (time.perf_counter() - start)
        await client.delete("ceiling")
        await client.aclose()
        return rate

    return asyncio.run(go())


def telemetry(run: str, rank: int, step0: int) -> bytes:
    """One rank's batch of 20 records x 30 values, as it arrives from Kafka."""
    t0 = 1_700_000_000.0 + step0 * 0.05
    return Batch(
        run=run,
        rank=rank,
        world=RANKS,
        incarnation="x",
        records=[
            Record(
                seq=step0 + i,
                t=t0 + i * 0.05,
                step=step0 + i,
                values={m: random.random() for m in NAMES},
            )
            for i in range(RECORDS_PER_BATCH)
        ],
    ).to_bytes()


def window_update(run: str, rank: int, step: int) -> bytes:
    """One rank's window update: 30 latest values and 30 stats in each of 3 windows."""
    stats = {m: WindowStats(count=50, mean=0.5, min=0.1, max=0.9, last=0.4) for m in NAMES}
    return WindowUpdate(
        run=run,
        rank=rank,
        world=RANKS,
        node="n",
        step=step,
        t=time.time(),
        latest={m: random.random() for m in NAMES},
        windows={w: stats for w in WINDOWS},
    ).to_bytes()


def sink_rate(url: str, messages: list[tuple[str, bytes]]) -> tuple[float, int]:
    """Metric values/s of the sink's path over `messages`, in flushes of SINK_BATCH."""
    keys = RedisKeys()

    async def go() -> tuple[float, int]:
        client = async_client(url)
        writer = RedisWriter(client, 3600)
        values = commands = 0
        start = time.perf_counter()
        for i in range(0, len(messages), SINK_BATCH):
            plan = WritePlan(keys, SeriesLimits())
            for kind, raw in messages[i : i + SINK_BATCH]:
                if kind == "batch":
                    plan.add_batch(decode_batch(raw))
                else:
                    plan.add_window_update(OpenWindowUpdate.model_validate_json(raw))
            commands += await writer.write(plan)
            values += plan.values
        elapsed = time.perf_counter() - start
        await client.aclose()
        return values / elapsed, commands

    return asyncio.run(go())


def latency(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """p50 and p99 in ms of `n` calls after 5 warm-up calls."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, math.ceil(0.99 * n) - 1)]


def paired_latency(
    ours: Callable[[], object], floor: Callable[[], object], n: int
) -> tuple[tuple[float, float], tuple[float, float], float]:
    """p50 and p99 in ms of `ours` and of `floor`, called alternately `n` times each after
    5 warm-up pairs, and the median over pairs of their CPU-time ratio (this thread's
    CPU: the client's work, not the server's nor the wait for a busy core).

    Alternating puts both under the same load of a shared machine: timed one after the
    other, a busy phase hitting only one of them moved the ratio by 10x in a run."""
    for _ in range(5):
        ours()
        floor()
    walls: tuple[list[float], list[float]] = ([], [])
    cpu_ratios = []
    for _ in range(n):
        cpu = []
        for fn, times in ((ours, walls[0]), (floor, walls[1])):
            c0, t0 = time.thread_time(), time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append(time.thread_time() - c0)
        if cpu[1] > 0:
            cpu_ratios.append(cpu[0] / cpu[1])
    out = []
    for times in walls:
        times.sort()
        out.append((statistics.median(times), times[min(len(times) - 1, math.ceil(0.99 * n) - 1)]))
    cpu_ratio = statistics.median(cpu_ratios) if cpu_ratios else math.nan
    return out[0], out[1], cpu_ratio


def redis_benchmark(port: int) -> str:
    """redis-benchmark's own figures, or why there are none."""
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        return "redis-benchmark: not installed (apt-get install redis-tools)"
    out = subprocess.run(
        [binary, "-p", str(port), "-P", "16", "-q", "-t", "set,hset", "-n", "200000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # -q still prints progress lines separated by \r; keep each test's final figure.
    chunks = out.stdout.replace("\r", "\n").splitlines()
    lines = [c.strip() for c in chunks if "requests per second" in c]
    return "redis-benchmark -P 16 -q -t set,hset: " + " | ".join(lines)


def profile_reads(loops: dict[str, Callable[[], object]]) -> None:
    """Each loop's call tree under pyinstrument, 200 calls after 5 warm-up calls."""
    from pyinstrument import Profiler

    for name, fn in loops.items():
        for _ in range(5):
            fn()
        profiler = Profiler(interval=0.0002)
        profiler.start()
        for _ in range(200):
            fn()
        profiler.stop()
        print(f"profile: {name}")
        print(profiler.output_text(unicode=False, color=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="ceiling loop duration")
    parser.add_argument("--rounds", type=int, default=6, help="flush rounds of all ranks")
    parser.add_argument("--repeat", type=int, default=3, help="alternating repetitions")
    parser.add_argument("--profile", action="store_true", help="profile the read loops")
    args = parser.parse_args()
    random.seed(7)
    with LocalRedis() as server:
        print(f"server: {server.binary} on port {server.port}")
        # The machine is shared: ceiling and sink runs alternate, best of `repeat` each,
        # so both see the same background load.
        sync_best = async_best = b_best = u_best = m_best = 0.0
        b_cmds = u_cmds = 0
        for rep in range(args.repeat):
            sync_best = max(sync_best, ceiling(server.url, args.seconds))
            async_best = max(async_best, ceiling_async(server.url, args.seconds))
            batches = [
                ("batch", telemetry(f"bench-b{rep}", r, k * RECORDS_PER_BATCH))
                for k in range(args.rounds)
                for r in range(RANKS)
            ]
            updates = [
                ("update", window_update("bench-u", r, k))
                for k in range(args.rounds * 4)
                for r in range(RANKS)
            ]
            mixed = [m for pair in zip(batches, updates[: len(batches)], strict=True) for m in pair]
            b_rate, b_cmds = sink_rate(server.url, batches)
            u_rate, u_cmds = sink_rate(server.url, updates)
            m_rate, _ = sink_rate(
                server.url, [(k, raw.replace(b"bench-", b"bench-m")) for k, raw in mixed]
            )
            b_best, u_best, m_best = max(b_best, b_rate), max(u_best, u_rate), max(m_best, m_rate)
        cmds = async_best
        print(
            f"ceiling: bare redis-py pipelined single-field HSET, best of {args.repeat}: "
            f"redis.asyncio {async_best:,.0f} commands/s (the sink's client; used for the "
            f"ratio), blocking client {sync_best:,.0f} commands/s"
        )
        print(
            f"sink, raw series (batches of {RECORDS_PER_BATCH} records x {METRICS} values):"
            f" {b_best:,.0f} values/s ({len(batches)} messages, {b_cmds} commands)"
        )
        print(
            f"sink, window updates ({METRICS} latest + {len(WINDOWS)}x{METRICS} stats):"
            f" {u_best:,.0f} values/s ({len(updates)} messages, {u_cmds} commands)"
        )
        print(f"sink, mixed 1:1 (one batch and one window update per rank): {m_best:,.0f} values/s")
        print(redis_benchmark(server.port))

        with MetricsReader.from_url(server.url) as reader:
            rows = reader.rolling("bench-u", "50steps")
            assert len(rows) == RANKS * METRICS, len(rows)
            # The floor under the query: the same bytes fetched by a bare redis-py call,
            # nothing parsed, on the same server, alternating with the query.
            bare = redis.Redis.from_url(server.url)
            window_key = RedisKeys().window("bench-u", "50steps")
            # The read sends HVALS (each value holds its row); the floor is the same
            # command on the same key. HGETALL, the floor of earlier layouts (the read
            # sent it), is measured too: `rolling_hgetall_ratio`.
            # The columnar read (`rolling_columns`, no object per row) is the one held
            # to the floor; the rows read (`rolling`) is printed beside it.
            cols = reader.rolling_columns("bench-u", "50steps")
            assert len(cols) == RANKS * METRICS and not cols.flags, len(cols)
            (r50, r99), (h50, h99), r_cpu = paired_latency(
                lambda: reader.rolling_columns("bench-u", "50steps"),
                lambda: bare.hvals(window_key),
                200,
            )
            (rr50, rr99), (rh50, _), rr_cpu = paired_latency(
                lambda: reader.rolling("bench-u", "50steps"), lambda: bare.hvals(window_key), 200
            )
            (g_r50, _), (g50, g99), _ = paired_latency(
                lambda: reader.rolling("bench-u", "50steps"), lambda: bare.hgetall(window_key), 200
            )
            a50, a99 = latency(lambda: reader.rolling("bench-u"), 50)
            print(
                f"rolling stats, 1 window, {RANKS}x{METRICS}, as numpy columns "
                f"(reader.rolling_columns): p50 {r50:.2f} ms, p99 {r99:.2f} ms"
            )
            print(
                f"rolling stats, 1 window, {RANKS}x{METRICS}, as rows (reader.rolling): "
                f"p50 {rr50:.2f} ms, p99 {rr99:.2f} ms (rows/floor p50 ratio "
                f"{rr50 / rh50:.1f}, client CPU ratio {rr_cpu:.1f})"
            )
            print(f"rolling stats, all {len(WINDOWS)} windows: p50 {a50:.2f} ms, p99 {a99:.2f} ms")
            print(
                f"  floor: bare HVALS of the {RANKS * METRICS} fields: p50 {h50:.2f} ms, "
                f"p99 {h99:.2f} ms (query/floor p50 ratio {r50 / h50:.1f}, "
                f"client CPU ratio {r_cpu:.1f})"
            )
            print(
                f"  bare HGETALL of the same hash: p50 {g50:.2f} ms, p99 {g99:.2f} ms "
                f"(query/HGETALL p50 ratio {g_r50 / g50:.1f})"
            )

            long = [
                (
                    "batch",
                    Batch(
                        run="bench-s",
                        rank=0,
                        records=[
                            Record(
                                seq=s,
                                t=1_700_000_000.0 + s,
                                step=s,
                                values={"loss": math.sin(s / 50)},
                            )
                            for s in range(k, k + 500)
                        ],
                    ).to_bytes(),
                )
                for k in range(0, 10_000, 500)
            ]
            sink_rate(server.url, long)
            full = reader.series("bench-s", "loss", 0)
            assert full.stored == 10_000, full.stored
            series_key = RedisKeys().series("bench-s", SERIES_STEP, 0, "loss")
            (s50, s99), (z50, z99), s_cpu = paired_latency(
                lambda: reader.series("bench-s", "loss", 0, points=1000),
                lambda: bare.zrange(series_key, 0, -1),
                100,
            )
            f50, f99 = latency(lambda: reader.series("bench-s", "loss", 0), 50)
            print(f"series 10,000 points -> 1,000 (LTTB): p50 {s50:.2f} ms, p99 {s99:.2f} ms")
            print(f"series 10,000 points, all: p50 {f50:.2f} ms, p99 {f99:.2f} ms")
            print(
                f"  floor: bare ZRANGE of the 10,000 members: p50 {z50:.2f} ms, "
                f"p99 {z99:.2f} ms (query/floor p50 ratio {s50 / z50:.1f}, "
                f"client CPU ratio {s_cpu:.1f})"
            )
            # The columnar read path: the same 10,000 points as numpy columns (no
            # downsampling, no Python object per point), against the same floor.
            (c50, c99), (cz50, _), c_cpu = paired_latency(
                lambda: reader.columns("bench-s", metrics=["loss"], ranks=[0]),
                lambda: bare.zrange(series_key, 0, -1),
                100,
            )
            print(
                f"series 10,000 points as numpy columns (reader.columns): p50 {c50:.2f} ms, "
                f"p99 {c99:.2f} ms (query/floor p50 ratio {c50 / cz50:.1f}, "
                f"client CPU ratio {c_cpu:.1f})"
            )
            bare.close()
            if args.profile:
                profile_reads(
                    {
                        "rolling, 1 window x200": lambda: reader.rolling("bench-u", "50steps"),
                        "rolling columns, 1 window x200": lambda: reader.rolling_columns(
                            "bench-u", "50steps"
                        ),
                        "series -> 1,000 (LTTB) x200": lambda: reader.series(
                            "bench-s", "loss", 0, points=1000
                        ),
                    }
                )

    values = m_best
    print(f"against the blocking client's ceiling: ratio {values / sync_best:.2f}")
    print(
        f"sink_ceiling_ratio={values / cmds:.2f} sink_values_per_s={values:.0f} "
        f"rolling_p50_ms={r50:.2f} rolling_p99_ms={r99:.2f} series_p50_ms={s50:.2f} "
        f"series_p99_ms={s99:.2f} rolling_floor_ratio={r50 / h50:.2f} "
        f"series_floor_ratio={s50 / z50:.2f} rolling_cpu_ratio={r_cpu:.2f} "
        f"series_cpu_ratio={s_cpu:.2f} rolling_hgetall_ratio={g_r50 / g50:.2f} "
        f"columns_floor_ratio={c50 / cz50:.2f} columns_cpu_ratio={c_cpu:.2f} "
        f"rolling_rows_floor_ratio={rr50 / rh50:.2f}"
    )


if __name__ == "__main__":
    main()
