"""A load generator that costs almost nothing: one real rank recorded, replayed as N.

``record``: one real instrumented rank (a small MLP, `producers.init` + `watch()` +
`log()`, system sampler and heartbeats on, default SDK settings) trains for some seconds
against a broker; the telemetry messages it sent are read back from the topic and kept
(bytes and send times) in a JSON file.

``replay``: those messages as N distinct ranks (runs of `world` ranks each): every rank
gets its own run and rank ids, a fresh incarnation, its own contiguous seqs, current event
times (each record keeps its offset within its message) and steps that keep growing when
the recording loops, and sends the recorded messages at the recorded rate, spread over
the interval. Messages are JSON encoded by orjson from pre-parsed templates (two fields
per record change) and sent by librdkafka (`confluent-kafka`), lz4 as the SDK does. It
prints its own CPU (``generator_cpu_pct``, of one core) every report interval, so a figure
measured with it can say what the generator took.

Usage:
  PYTHONPATH=. python bench/loadgen.py record OUT.json --bootstrap HOST:PORT [--seconds 20]
  PYTHONPATH=. python bench/loadgen.py replay IN.json --bootstrap HOST:PORT --ranks 2048
      [--world 64] [--seconds 60] [--topic-prefix stepstream]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from stepstream.settings import Settings
from stepstream.topics import Topics


def record(out: Path, settings: Settings, seconds: float, step_s: float) -> None:
    """Train one real rank for `seconds` and keep what it sent."""
    import torch
    from confluent_kafka import Consumer, TopicPartition
    from torch import nn

    import producers

    topic = Topics(settings.topic_prefix).telemetry
    run = f"rec-{uuid.uuid4().hex[:6]}"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
    model.append(nn.Linear(128, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = producers.init(run, rank=0, world=1, settings=settings)
    monitor.watch(model, optimizer, every=1)
    start = time.monotonic()
    step = 0
    while time.monotonic() - start < seconds:
        x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.log(step, loss=loss.detach(), accuracy=0.5, tokens=float(32 * 128))
        step += 1
        time.sleep(max(0.0, start + step * step_s - time.monotonic()))
    monitor.close(10)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": run,
            "enable.auto.commit": False,
        }
    )
    messages: list[dict[str, Any]] = []
    meta = consumer.list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
    consumer.assign(parts)
    idle = time.monotonic() + 5
    while time.monotonic() < idle:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        value = msg.value()
        if value is None or orjson.loads(value).get("run") != run:
            continue
        idle = time.monotonic() + 3
        messages.append({"t": msg.timestamp()[1] / 1000, "value": value.decode()})
    consumer.close()
    messages.sort(key=lambda m: m["t"])
    out.write_text(json.dumps({"step_s": step_s, "steps": step, "messages": messages}))
    sizes = [len(m["value"]) for m in messages]
    print(
        f"recorded {len(messages)} messages of one rank over {seconds:.0f} s "
        f"({step} steps): {sum(sizes) / max(1, len(sizes)):.0f} B a message on average"
    )


class Rank:
    """One replayed rank: its identity (pre-encoded) and where it is in the recording."""

    __slots__ = ("header", "key", "loops", "next_at", "position", "seq")

    def __init__(self, run: str, rank: int, world: int, node: str, next_at: float) -> None:
        ident = {
            "run": run,
            "rank": rank,
            "world": world,
            "node": node,
            "pid": os.getpid(),
            "incarnation": uuid.uuid4().hex[:12],
        }
        self.header = orjson.dumps(ident)[1:-1]  # the identity fields, without braces
        self.key = f"{run}:{rank}".encode()
        self.seq = 0
        self.position = 0
        self.loops = 0
        self.next_at = next_at


def _templates(messages: list[dict[str, Any]]) -> list[tuple[bytes, list[tuple[Any, ...]]]]:
    """Per recorded message: its version prefix and, per record, what changes (step, the
    offset of its event time from the message's newest) beside the bytes that never do
    (kind, values, text: encoded once)."""
    out = []
    for message in messages:
        newest = max(r["t"] for r in message["records"])
        records = []
        for r in message["records"]:
            tail = {k: v for k, v in r.items() if k not in ("seq", "t", "step")}
            records.append((r.get("step"), newest - r["t"], orjson.dumps(tail)[1:-1]))
        out.append((b'{"v":%d,' % message["v"], records))
    return out


def replay(
    source: Path, settings: Settings, ranks: int, world: int, seconds: float, report_s: float
) -> None:
    """Send the recording as `ranks` ranks for `seconds`."""
    from confluent_kafka import Producer

    recording = json.loads(source.read_text())
    templates = _templates([orjson.loads(m["value"]) for m in recording["messages"]])
    sent_at = [m["t"] for m in recording["messages"]]
    gaps = [b - a for a, b in itertools.pairwise(sent_at)] or [1.0]
    interval = sorted(gaps)[len(gaps) // 2]  # the rank's send interval (its median gap)
    span = max(1, recording["steps"])
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "compression.type": "lz4",
            "linger.ms": 100,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    topic = Topics(settings.topic_prefix).telemetry
    start = time.time()
    fleet = [
        Rank(f"gen{g // world}", g % world, world, f"n{g // 8}", start + interval * g / ranks)
        for g in range(ranks)
    ]
    sent = 0
    cpu0 = time.process_time()
    wall0 = time.monotonic()
    report_at = wall0 + report_s
    stop_at = wall0 + seconds
    i = 0
    produce = producer.produce
    while time.monotonic() < stop_at:
        now = time.time()
        due = 0
        # Ranks stay in send order (round robin, each `interval` apart).
        while fleet[i].next_at <= now:
            rank = fleet[i]
            version, records = templates[rank.position]
            base_step = rank.loops * span
            seq = rank.seq
            parts = [version, rank.header, b',"records":[']
            for n, (step, dt, tail) in enumerate(records):
                if n:
                    parts.append(b",")
                if step is None:
                    parts.append(b'{"seq":%d,"t":%.6f,%s}' % (seq, now - dt, tail))
                else:
                    parts.append(
                        b'{"seq":%d,"t":%.6f,"step":%d,%s}'
                        % (seq, now - dt, step + base_step, tail)
                    )
                seq += 1
            parts.append(b"]}")
            produce(topic, b"".join(parts), rank.key)
            rank.seq = seq
            sent += 1
            due += 1
            rank.position += 1
            if rank.position == len(templates):
                rank.position, rank.loops = 0, rank.loops + 1
            rank.next_at += interval
            i = (i + 1) % len(fleet)
        producer.poll(0)
        if time.monotonic() >= report_at:
            _report(cpu0, wall0, sent, ranks)
            report_at += report_s
        if not due:
            time.sleep(min(0.005, max(0.0, fleet[i].next_at - time.time())))
    producer.flush(10)
    _report(cpu0, wall0, sent, ranks)


def _report(cpu0: float, wall0: float, sent: int, ranks: int) -> None:
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    print(
        f"generator_cpu_pct={cpu / wall * 100:.1f} msgs_per_s={sent / wall:.0f} ranks={ranks}",
        flush=True,
    )


def main() -> None:
    """Record or replay (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--seconds", type=float, default=20.0)
    rec.add_argument("--step-s", type=float, default=0.5, help="seconds per training step")
    rep = sub.add_parser("replay")
    rep.add_argument("source", type=Path)
    rep.add_argument("--ranks", type=int, default=256)
    rep.add_argument("--world", type=int, default=64)
    rep.add_argument("--seconds", type=float, default=60.0)
    rep.add_argument("--report-s", type=float, default=5.0)
    for p in (rec, rep):
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topic-prefix", default="stepstream")
    args = parser.parse_args()
    settings = Settings(
        kafka_bootstrap=args.bootstrap,
        topic_prefix=args.topic_prefix,
        capture_logs=False,
        handle_sigterm=False,
    )
    if args.mode == "record":
        record(args.out, settings, args.seconds, args.step_s)
    else:
        replay(args.source, settings, args.ranks, args.world, args.seconds, args.report_s)


if __name__ == "__main__":
    sys.exit(main())
