"""Stage 1's window updates (`processors.forward.StageUpdate`) are written by msgspec,
not pydantic: their JSON must read as the contract's `WindowUpdate` with the same
figures, non-finite values and open flags included."""

from __future__ import annotations

import math
import random

from processors.forward import StageUpdate, is_plain
from processors.series_stage import _stats
from processors.windows import Summary, summarize
from stepstream.contract import WINDOW_STATS_NUMBERS, WindowStats, WindowUpdate

ODD = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324, 1 / 3]


def a_summary(rng: random.Random) -> Summary:
    values = [rng.choice([rng.random(), *ODD]) for _ in range(rng.randrange(1, 6))]
    summary = summarize(values)
    if rng.random() < 0.3:  # an overflowed stat: finite inputs, infinite result
        summary = Summary(
            *(math.inf if n == "std" else getattr(summary, n) for n in WINDOW_STATS_NUMBERS)
        )
    return summary


def test_a_stage_update_reads_as_the_window_update_pydantic_writes() -> None:
    rng = random.Random(3)
    for _ in range(300):
        latest = {f"m{i}": rng.choice([rng.random(), *ODD]) for i in range(rng.randrange(0, 5))}
        stage_windows: dict = {}
        model_windows: dict = {}
        for window in ("50steps", "10s"):
            for metric in latest:
                summary = a_summary(rng)
                flags = rng.choice([None, None, ["spike"], ["nonfinite", "spike"]])
                plain = flags is None and is_plain(summary)
                stats = summary if plain else _stats(summary, flags)
                stage_windows.setdefault(window, {})[metric] = stats
                model_windows.setdefault(window, {})[metric] = _stats(summary, flags)
        fields = dict(run="r", rank=3, world=8, node="n", step=7, t=1.5, latest=latest)
        ours = StageUpdate(**fields, windows=stage_windows, status="running").to_bytes()
        want = WindowUpdate(**fields, windows=model_windows, status="running")
        got = WindowUpdate.model_validate_json(ours)
        # NaN != NaN: compare the JSON pydantic writes of both (non-finite as strings).
        assert got.model_dump_json() == want.model_dump_json()


def test_plain_summaries_go_as_they_are_and_the_others_as_window_stats() -> None:
    assert is_plain(summarize([1.0, 2.0, 3.0]))
    assert not is_plain(summarize([1.0, math.nan]))  # last is NaN
    assert not is_plain(summarize([1e308, 1e308]))  # the mean overflows
    assert summarize([1.0]).flags is None
    stats = _stats(summarize([1.0, math.nan]), ["nonfinite"])
    assert isinstance(stats, WindowStats) and stats.flags == ["nonfinite"]
    body = StageUpdate(run="r", rank=0, windows={"w": {"m": stats}}, latest={"m": math.nan})
    assert b'"last":"NaN"' in body.to_bytes() and b'"m":"NaN"' in body.to_bytes()
