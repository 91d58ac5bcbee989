"""Stage 1's memory per rank, in process, and where it goes. Prints figures; not a test.

The recorded telemetry of one real rank (`bench/loadgen.py record`, as `bench/scale.py`
and `bench/stage_cost.py` use) is replayed as N ranks straight into
`SeriesStage.process_many` for `--seconds` simulated seconds (stats flushed every
simulated second), under tracemalloc. What the stage holds at the end, over what the
process held before it was built, is its state; it is split by allocation site (file and
line) so a change can be aimed at the largest part. The replayed messages are encoded
before the first snapshot: the generator's bytes are printed beside, never counted.

The figure is the stage's own: a live worker also holds stage 2, alerting, faust and
aiokafka buffers (`bench/scale.py` measures a worker's RSS per rank). Windows fill with
time: a figure is for `--seconds` of a job at the recording's rate (2 steps/s), and
the 60 s time window is full from 60 s on.

Usage: PYTHONPATH=. python bench/stage_memory.py [--ranks 64] [--seconds 120] [--top 12]
       [--recording rec.json]
Last line: bytes_per_rank=... window_bytes_per_rank=... series_per_rank=...
generator_bytes=...
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from pathlib import Path

import orjson

# The bench's own folder is on sys.path when it runs as a script.
from stage_cost import load_recording, replayed

from processors.series_stage import SeriesStage
from stepstream.contract import decode_batch
from stepstream.settings import Settings

#: Where the window buffers are allocated: `RollingWindow` and stage 1's inlined append.
WINDOW_FILES = ("processors/windows.py", "processors/series_stage.py")


def main() -> None:
    """Replay, snapshot, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=120, help="simulated seconds")
    parser.add_argument("--top", type=int, default=12, help="allocation sites printed")
    parser.add_argument("--recording", type=Path, help="a loadgen recording")
    args = parser.parse_args()
    recording = load_recording(args.recording, "stepstream-stage-memory-")
    seconds = replayed(recording, args.ranks, args.seconds)
    generator = sum(len(m) for tick in seconds for m in tick)
    settings = Settings()
    clock = [0.0]
    first = orjson.loads(seconds[0][0])["records"][-1]["t"]

    tracemalloc.start(1)
    gc.collect()
    before = tracemalloc.take_snapshot()
    stage = SeriesStage(
        settings.window_steps,
        settings.window_seconds,
        clock=lambda: clock[0],
        crossrank_metrics=settings.crossrank_metrics,
        stats_interval_s=settings.window_stats_interval_s,
    )
    for index, tick in enumerate(seconds):
        clock[0] = first + index + 0.05
        batches = [decode_batch(b, settings.max_message_bytes) for b in tick]
        stage.process_many(batches)
        stage.flush(clock[0])
    del batches
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()

    sites = after.compare_to(before, "lineno")
    held = sum(s.size_diff for s in sites)
    windows = sum(
        s.size_diff
        for s in sites
        if any(s.traceback[0].filename.endswith(name) for name in WINDOW_FILES)
    )
    # Each metric name a rank sends is one series of its state.
    series = len(
        {
            name
            for message in recording["messages"]
            for record in orjson.loads(message["value"])["records"]
            for name in record.get("values", {})
        }
    )
    ranks = args.ranks
    print(
        f"{ranks} ranks x {args.seconds} s of the recorded rank ({series} series a rank, "
        f"window_steps={settings.window_steps} window_seconds={settings.window_seconds}): "
        f"stage 1 holds {held / 2**20:.1f} MiB, {held / ranks / 1024:.1f} KiB a rank; "
        f"generator: {generator / 2**20:.1f} MiB of encoded messages, not counted"
    )
    print(f"largest allocation sites (KiB a rank, objects a rank), of {len(sites)}:")
    for site in sites[: args.top]:
        frame = site.traceback[0]
        where = frame.filename.split("site-packages/")[-1]
        root = str(Path(__file__).resolve().parents[1]) + "/"
        print(
            f"  {site.size_diff / ranks / 1024:7.1f} {site.count_diff / ranks:7.0f}  "
            f"{where.replace(root, '')}:{frame.lineno}"
        )
    print(
        f"bytes_per_rank={held / ranks:.0f} window_bytes_per_rank={windows / ranks:.0f} "
        f"series_per_rank={series} generator_bytes={generator}"
    )


if __name__ == "__main__":
    main()
