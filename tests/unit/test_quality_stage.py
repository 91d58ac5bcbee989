"""Quality windows wired into stage 1 (per rank) and stage 2 (pooled across ranks): the
metrics equal the direct formulas on every example of the window."""

from __future__ import annotations

import math
import random

from processors.run_stage import RunStage
from processors.series_stage import SeriesStage
from stepstream import quality as q
from stepstream.contract import Batch, Record, RecordKind, WindowUpdate

CLASSES = 3
BINS = 10
WINDOW = 4


def confusion(y: list[int], p: list[int]) -> q.Confusion:
    tp = [float(sum(a == c == b for a, b in zip(y, p, strict=True))) for c in range(CLASSES)]
    fp = [float(sum(a != c == b for a, b in zip(y, p, strict=True))) for c in range(CLASSES)]
    fn = [float(sum(b != c == a for a, b in zip(y, p, strict=True))) for c in range(CLASSES)]
    return q.Confusion(float(len(y)), tp, fp, fn)


def step_values(
    y: list[int],
    p: list[int],
    labels: list[int],
    scores: list[float],
    target: list[float],
    pred: list[float],
) -> dict[str, float]:
    """What a producer logs for one batch: classification, binary scores, regression."""
    values = confusion(y, p).to_values("cls")
    pos = [0.0] * BINS
    neg = [0.0] * BINS
    for label, s in zip(labels, scores, strict=True):
        (pos if label else neg)[min(int(s * BINS), BINS - 1)] += 1
    values.update(q.ScoreHistogram(pos, neg).to_values("bin"))
    err = [b - a for a, b in zip(target, pred, strict=True)]
    values.update(
        q.Regression(float(len(err)), sum(map(abs, err)), sum(e * e for e in err)).to_values("reg")
    )
    return values


def direct(examples: dict[str, list]) -> dict[str, float]:
    """Reference metrics on raw examples (not on summed statistics)."""
    y, p = examples["y"], examples["p"]
    out = {"quality/cls/accuracy": sum(a == b for a, b in zip(y, p, strict=True)) / len(y)}
    f1s, precs, recs = [], [], []
    for c in range(CLASSES):
        tp = sum(a == c and b == c for a, b in zip(y, p, strict=True))
        fp = sum(a != c and b == c for a, b in zip(y, p, strict=True))
        fn = sum(a == c and b != c for a, b in zip(y, p, strict=True))
        if tp + fp:
            out[f"quality/cls/precision/{c}"] = tp / (tp + fp)
        if tp + fn:
            out[f"quality/cls/recall/{c}"] = tp / (tp + fn)
        if tp + fp + fn:
            out[f"quality/cls/f1/{c}"] = 2 * tp / (2 * tp + fp + fn)
            f1s.append(out[f"quality/cls/f1/{c}"])
            precs.append(tp / (tp + fp) if tp + fp else 0.0)
            recs.append(tp / (tp + fn) if tp + fn else 0.0)
    out["quality/cls/f1/macro"] = sum(f1s) / len(f1s)
    out["quality/cls/precision/macro"] = sum(precs) / len(precs)
    out["quality/cls/recall/macro"] = sum(recs) / len(recs)
    # AUC with scores binned as the producer does: a shared bin is a tie.
    binned = [min(int(s * BINS), BINS - 1) for s in examples["s"]]
    pos = [b for b, label in zip(binned, examples["l"], strict=True) if label]
    neg = [b for b, label in zip(binned, examples["l"], strict=True) if not label]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    out["quality/bin/auc"] = wins / (len(pos) * len(neg))
    err = [b - a for a, b in zip(examples["t"], examples["r"], strict=True)]
    out["quality/reg/mse"] = sum(e * e for e in err) / len(err)
    out["quality/reg/mae"] = sum(map(abs, err)) / len(err)
    return out


def make_examples(rng: random.Random) -> dict[str, list]:
    n = rng.randint(5, 30)
    y = [rng.randrange(CLASSES) for _ in range(n)]
    labels = [rng.randrange(2) for _ in range(n)]
    return {
        "y": y,
        "p": [t if rng.random() < 0.7 else rng.randrange(CLASSES) for t in y],
        "l": labels,
        "s": [min(1.0, max(0.0, 0.3 * label + rng.random() * 0.7)) for label in labels],
        "t": [rng.gauss(0, 1) for _ in range(n)],
        "r": [rng.gauss(0, 1) for _ in range(n)],
    }


def pooled(parts: list[dict[str, list]]) -> dict[str, list]:
    return {k: [v for part in parts for v in part[k]] for k in parts[0]}


def as_values(ex: dict[str, list]) -> dict[str, float]:
    return step_values(ex["y"], ex["p"], ex["l"], ex["s"], ex["t"], ex["r"])


def batch(rank: int, records: list[Record], world: int = 2) -> Batch:
    return Batch(run="r1", rank=rank, world=world, node="n", incarnation="i", records=records)


def quality_of(update: WindowUpdate) -> dict[str, float]:
    stats = update.windows[f"{WINDOW}steps"]
    return {k: v.last for k, v in stats.items() if k.startswith("quality/") and v.last is not None}


def assert_metrics(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        assert math.isclose(got[name], value, rel_tol=1e-9, abs_tol=1e-12), name


def test_stage1_window_equals_direct_formulas_on_its_examples() -> None:
    rng = random.Random(1)
    s = SeriesStage(window_steps=[WINDOW, 20], window_seconds=[], clock=lambda: 2000.0)
    per_step = []
    seq = 0
    for step in range(7):
        # Two records at one step (micro-batches): both count.
        parts = [make_examples(rng), make_examples(rng)]
        per_step.append(pooled(parts))
        records = []
        for part in parts:
            records.append(
                Record(
                    seq=seq,
                    t=1000.0 + step,
                    step=step,
                    kind=RecordKind.QUALITY,
                    values=as_values(part),
                )
            )
            seq += 1
        records.append(Record(seq=seq, t=1000.0 + step, step=step, values={"loss": 1.0}))
        seq += 1
        result = s.process(batch(0, records))
    assert result.update is not None and not result.alerts
    got = quality_of(result.update)
    assert_metrics(got, direct(pooled(per_step[-WINDOW:])))
    stats = result.update.windows[f"{WINDOW}steps"]
    assert stats["quality/cls/accuracy"].count == len(pooled(per_step[-WINDOW:])["y"])
    assert stats["quality/cls/accuracy"].mean == got["quality/cls/accuracy"]
    # Raw statistics are not windowed as series; the metrics are also in `latest`.
    assert not any(k.endswith("/n") or "/tp/" in k for k in result.update.windows["20steps"])
    assert result.update.latest["quality/reg/mse"] == got["quality/reg/mse"]


def test_stage2_pools_ranks_like_one_process_seeing_every_example() -> None:
    rng = random.Random(2)
    s = SeriesStage(window_steps=[WINDOW], window_seconds=[], clock=lambda: 2000.0)
    runs = RunStage(quality_window_steps=WINDOW, clock=lambda: 2000.0)
    per_step: list[dict[str, list]] = []
    crossrank = []
    for step in range(7):  # step 5 is finished once both ranks report step 6
        parts = []
        for rank in range(2):
            ex = make_examples(rng)
            parts.append(ex)
            record = Record(
                seq=step, t=1000.0 + step, step=step, kind=RecordKind.QUALITY, values=as_values(ex)
            )
            result = s.process(batch(rank, [record]))
            assert not result.alerts
            for summary in result.summaries:
                crossrank += runs.process(summary, 1000.0 + step).crossrank
        per_step.append(pooled(parts))
    last = crossrank[-1]
    assert last.step == 5
    got = {k: v.last for k, v in last.quality[f"{WINDOW}steps"].items()}
    assert_metrics(got, direct(pooled(per_step[6 - WINDOW : 6])))
    assert not last.stats  # raw statistics are not compared as per-rank values


def test_healthy_quality_series_creates_no_flags_or_dead_letters() -> None:
    rng = random.Random(3)
    s = SeriesStage(window_steps=[WINDOW], window_seconds=[10.0], clock=lambda: 5000.0)
    alerts = []
    for step in range(60):
        record = Record(
            seq=step,
            t=1000.0 + step,
            step=step,
            kind=RecordKind.QUALITY,
            values=as_values(make_examples(rng)),
        )
        result = s.process(batch(0, [record]))
        alerts += result.alerts
        assert not result.rejected
    assert alerts == []
    assert s.rejected == {}


def test_new_incarnation_starts_quality_windows_empty() -> None:
    s = SeriesStage(window_steps=[WINDOW], window_seconds=[], clock=lambda: 2000.0)
    first = q.Regression(2.0, 2.0, 2.0).to_values("reg")
    again = q.Regression(1.0, 3.0, 9.0).to_values("reg")
    s.process(batch(0, [Record(seq=0, t=1.0, step=0, kind=RecordKind.QUALITY, values=first)]))
    restarted = Batch(
        run="r1",
        rank=0,
        world=2,
        incarnation="i2",
        records=[Record(seq=0, t=2.0, step=0, kind=RecordKind.QUALITY, values=again)],
    )
    result = s.process(restarted)
    assert result.update is not None
    stats = result.update.windows[f"{WINDOW}steps"]
    assert (stats["quality/reg/mse"].count, stats["quality/reg/mse"].last) == (1, 9.0)
    assert stats["quality/reg/mae"].last == 3.0
