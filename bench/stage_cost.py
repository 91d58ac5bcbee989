"""Stage 1's CPU per telemetry message, in process: what bounds a worker's ranks.

The recorded telemetry of one real rank (`bench/loadgen.py record`, as `bench/scale.py`
uses) is replayed as N ranks straight into `SeriesStage.process_many`, with the window
updates and summaries serialized as the worker sends them and the rate-limited stats
flushed every simulated second. No broker, no faust: the figure is the stage's own cost,
the part of a live worker that grows with ranks. Each configuration runs in the same
process on the same pre-encoded messages, so the ratios between them hold on any machine;
the encoding of the messages (the generator) is timed apart and printed beside.

Usage: PYTHONPATH=. python bench/stage_cost.py [--ranks 128] [--seconds 60]
       [--recording rec.json]
Last line: ms_per_message=... baseline_ms_per_message=... ratio=... generator_ms_per_message=...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from processors.series_stage import SeriesStage
from stepstream.contract import decode_batch
from stepstream.settings import Settings

#: Messages per `process_many` call, as a loaded worker takes them (`processor_batch`
#: caps it at 1000; at a few hundred messages a second, ~0.1 s of linger gathers this).
BATCH = 120


def replayed(recording: dict, ranks: int, seconds: int, world: int = 64) -> list[list[bytes]]:
    """The recording as `ranks` ranks: one list of messages per simulated second, each
    rank's message of that second with its own ids, seqs, and times shifted to it."""
    messages = [orjson.loads(m["value"]) for m in recording["messages"]]
    steps = recording.get("steps", 40)
    seqs = [0] * ranks
    start = time.time()
    out = []
    for second in range(seconds):
        now = start + second
        template = messages[second % len(messages)]
        loops = second // len(messages)
        newest = max(r["t"] for r in template["records"])
        tick = []
        for rank in range(ranks):
            records = []
            for record in template["records"]:
                record = dict(record, seq=seqs[rank], t=now - (newest - record["t"]))
                seqs[rank] += 1
                if "step" in record:
                    record["step"] += loops * steps
                records.append(record)
            message = dict(
                template,
                run=f"run{rank // world}",
                rank=rank % world,
                world=world,
                incarnation=f"inc{rank}",
                records=records,
            )
            tick.append(orjson.dumps(message))
        out.append(tick)
    return out


def cost(seconds: list[list[bytes]], interval_s: float, batch: int, budget: float = 0.0) -> float:
    """CPU seconds per message of a fresh stage over `seconds` of messages, with window
    stats at most every `interval_s` and, if `budget` > 0, at most `budget` series a
    second (`STEPSTREAM_WINDOW_STATS_BUDGET_PER_S`)."""
    settings = Settings()
    clock = [0.0]
    stage = SeriesStage(
        settings.window_steps,
        settings.window_seconds,
        clock=lambda: clock[0],
        crossrank_metrics=settings.crossrank_metrics,
        stats_interval_s=interval_s,
        stats_budget_per_s=budget,
    )
    first = orjson.loads(seconds[0][0])["records"][-1]["t"]
    count = 0
    cpu = time.process_time()
    for index, tick in enumerate(seconds):
        clock[0] = first + index + 0.05
        for at in range(0, len(tick), batch):
            batches = [decode_batch(b, settings.max_message_bytes) for b in tick[at : at + batch]]
            result = stage.process_many(batches)
            for update in result.updates:
                update.to_bytes()
            for summary in result.summaries:
                summary.to_bytes()
            count += len(batches)
        for update in stage.flush(clock[0]):
            update.to_bytes()
    return (time.process_time() - cpu) / count


def record_one(tmp: Path) -> Path:
    """A recording of one real rank, made against an embedded broker."""
    from stepstream.stack import LocalStack

    stack = LocalStack(Settings(state_dir=tmp), workers=False)
    out = tmp / "recording.json"
    try:
        state = stack.start()
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("loadgen.py")),
                "record",
                str(out),
                "--bootstrap",
                state.kafka_bootstrap,
                "--topic-prefix",
                "rec",
            ],
            env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin"},
            check=True,
        )
    finally:
        stack.stop()
    return out


def load_recording(path: Path | None, prefix: str) -> dict:
    """The recording at `path`, or one made now against an embedded broker."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        found = path or record_one(Path(tmp))
        return json.loads(found.read_text())


def main() -> None:
    """Time each configuration on the same messages and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=128)
    parser.add_argument("--seconds", type=int, default=60, help="simulated seconds")
    parser.add_argument("--recording", type=Path, help="a loadgen recording")
    args = parser.parse_args()
    recording = load_recording(args.recording, "stepstream-stage-cost-")
    cpu = time.process_time()
    seconds = replayed(recording, args.ranks, args.seconds)
    count = sum(len(tick) for tick in seconds)
    generator = (time.process_time() - cpu) / count
    values = sum(
        len(r.get("values", {}))
        for tick in seconds
        for m in tick[:1]
        for r in orjson.loads(m)["records"]
    ) / len(seconds)
    print(
        f"{args.ranks} ranks x {args.seconds} s: {count} messages of {values:.0f} values on average"
    )
    figures = {}
    budget = Settings().window_stats_budget_per_s
    for name, interval_s, batch, per_s in (
        ("baseline: 0.5 s stats, one message a call", 0.5, 1, 0.0),
        ("0.5 s stats, batches", 0.5, BATCH, 0.0),
        ("2 s stats, batches, no budget", 2.0, BATCH, 0.0),
        (f"default: 2 s stats, batches, {budget:,.0f} series/s budget", 2.0, BATCH, budget),
        ("5 s stats, batches", 5.0, BATCH, 0.0),
    ):
        figures[name] = cost(seconds, interval_s, batch, per_s)
        print(
            f"{name}: {figures[name] * 1000:.3f} ms of CPU per message "
            f"(generator {generator * 1000:.3f} ms per message)",
            flush=True,
        )
    base = figures["baseline: 0.5 s stats, one message a call"]
    now = next(v for k, v in figures.items() if k.startswith("default"))
    print(
        f"ms_per_message={now * 1000:.3f} baseline_ms_per_message={base * 1000:.3f} "
        f"ratio={now / base:.2f} generator_ms_per_message={generator * 1000:.3f}"
    )


if __name__ == "__main__":
    main()
