"""What the dashboard's JSON endpoints return, computed from reader results: pure logic.

Charts travel as columns (x and y lists per rank), not one object per point: a chart of 64
ranks x 1,000 points is 128 lists. Non-finite values travel as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` (JSON has no such numbers), and are never dropped.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from query.downsample import Method, select
from query.reader import RankLiveness, RunInfo
from stepstream.contract import Alert
from stepstream.keys import format_value
from stepstream.vocabulary import (
    SECTION_INTERNAL,
    SECTION_TITLES,
    SECTIONS,
    chart_order,
    is_per_layer,
    section_of,
)

SILENT_AFTER_S = 30.0
"""A running run with no rank heard from this long is shown as silent."""

DEAD_RULES = frozenset({"dead_rank"})
HUNG_RULES = frozenset({"hung_rank"})
STRAGGLER_RULES = frozenset({"straggler", "rank_desync"})


def json_float(value: float) -> float | str:
    """A float JSON can carry: non-finite values as their words."""
    return value if math.isfinite(value) else format_value(value)


def glob_filter(names: Iterable[str], pattern: str | None) -> list[str]:
    """Names matching a glob (``grad/norm/*``) or several separated by commas; all when
    the pattern is empty. A pattern without glob characters matches as a substring."""
    names = list(names)
    parts = [p.strip() for p in (pattern or "").split(",") if p.strip()]
    if not parts:
        return names
    out = []
    for name in names:
        for part in parts:
            if any(c in part for c in "*?[") and fnmatch.fnmatchcase(name, part):
                out.append(name)
                break
            if not any(c in part for c in "*?[") and part in name:
                out.append(name)
                break
    return out


def step_rate(clock: Sequence[tuple[int, float]]) -> float | None:
    """Steps per second over (step, event time) pairs of one rank, newest last."""
    if len(clock) < 2:
        return None
    (s0, t0), (s1, t1) = clock[0], clock[-1]
    if t1 <= t0 or s1 <= s0:
        return None
    return (s1 - s0) / (t1 - t0)


def display_state(info: RunInfo, ranks: Sequence[RankLiveness], now: float) -> str:
    """live, finished, crashed or silent (running, but no rank heard for SILENT_AFTER_S);
    starting before any rank stepped."""
    if info.state in ("finished", "crashed"):
        return info.state
    newest = max((r.t for r in ranks), default=info.last_activity)
    if now - newest > SILENT_AFTER_S:
        return "silent"
    return "live" if info.state == "running" else info.state


def metric_entries(metrics: Mapping[str, Iterable[int]]) -> list[dict[str, Any]]:
    """The run page's metrics (name -> ranks) in the order they are charted: by section
    (the user's own metrics first, internal series last), then loss / global norm first,
    per-layer families last, then by name. The vocabulary classes every name."""

    def key(name: str) -> tuple[int, tuple[int, int, str]]:
        return SECTIONS.index(section_of(name)), chart_order(name)

    return [
        {
            "name": name,
            "ranks": sorted(metrics[name]),
            "section": section_of(name),
            "per_layer": is_per_layer(name),
        }
        for name in sorted(metrics, key=key)
    ]


def section_list() -> list[dict[str, Any]]:
    """The run page's sections in order, with their titles and whether each starts
    collapsed (only the internal series' diagnostics panel does)."""
    return [
        {"id": s, "title": SECTION_TITLES[s], "collapsed": s == SECTION_INTERNAL} for s in SECTIONS
    ]


def alert_json(alert: Alert) -> dict[str, Any]:
    """An alert as the pages show it (evidence with non-finite values as words)."""
    doc = alert.model_dump(mode="json")
    doc["evidence"] = {k: (None if v is None else json_float(v)) for k, v in alert.evidence.items()}
    return doc


def run_row(
    info: RunInfo,
    ranks: Sequence[RankLiveness],
    active: Sequence[Alert],
    clock: Sequence[tuple[int, float]],
    now: float,
) -> dict[str, Any]:
    """One row of the runs page."""
    steps = [r.step for r in ranks if r.step is not None]
    return {
        "run": info.run,
        "state": display_state(info, ranks, now),
        "world": info.world,
        "ranks": len(ranks),
        "nodes": sorted({r.node for r in ranks if r.node}),
        "step": max(steps) if steps else None,
        "step_rate": step_rate(clock),
        "last_activity": info.last_activity,
        # Open alerts, pending ones included (each with its `status`); the counts say which.
        "alerts": [alert_json(a) for a in sorted(active, key=lambda a: a.t, reverse=True)],
        "firing": sum(a.status == "firing" for a in active),
        "pending": sum(a.status == "pending" for a in active),
    }


def rank_grid(
    ranks: Sequence[RankLiveness], active: Sequence[Alert], stale_after_s: float
) -> list[dict[str, Any]]:
    """Per rank: node, step, lag behind the furthest rank, heartbeat age, status and the
    problems to highlight (dead, hung, straggler, stale), by node then rank."""
    newest = max((r.step for r in ranks if r.step is not None), default=None)
    flagged: dict[int, set[str]] = {}
    for alert in active:
        # A pending alert is not yet a problem of its rank: it may be withdrawn.
        if alert.rank is None or alert.status != "firing":
            continue
        kind = (
            "dead"
            if alert.rule in DEAD_RULES
            else "hung"
            if alert.rule in HUNG_RULES
            else "straggler"
            if alert.rule in STRAGGLER_RULES
            else None
        )
        if kind:
            flagged.setdefault(alert.rank, set()).add(kind)
    out = []
    for r in ranks:
        problems = flagged.get(r.rank, set())
        closed = r.status in ("closing", "crashed")
        if r.age_s is not None and r.age_s > stale_after_s and not closed:
            problems = problems | {"stale"}
        if r.status == "crashed":
            problems = problems | {"dead"}
        out.append(
            {
                "rank": r.rank,
                "node": r.node or "?",
                "step": r.step,
                "lag": None if newest is None or r.step is None else newest - r.step,
                "age_s": r.age_s,
                "status": r.status,
                "problems": sorted(problems),
            }
        )
    return sorted(out, key=lambda row: (row["node"], row["rank"]))


def alert_incidents(transitions: Sequence[Alert], silenced: set[str]) -> list[dict[str, Any]]:
    """One entry per fingerprint, newest transition first: its state (its last status:
    pending, firing, resolved or withdrawn; `silenced` when a live silence or the stored
    suppression mutes it), the step it fired at (or went pending at, if it never fired),
    `active_since` (event time its condition started, while open), and every transition's
    (status, step, t)."""
    by_fp: dict[str, list[Alert]] = {}
    for alert in transitions:
        by_fp.setdefault(alert.fingerprint, []).append(alert)
    out = []
    for fp, history in by_fp.items():
        last = history[-1]
        fired = next((a for a in reversed(history) if a.status == "firing"), last)
        doc = alert_json(last)
        doc["state"] = last.status
        doc["fired_step"] = fired.step
        doc["fired_t"] = fired.t
        doc["silenced"] = fp in silenced or bool(last.suppressed_by)
        doc["transitions"] = [{"status": a.status, "step": a.step, "t": a.t} for a in history]
        out.append(doc)
    return sorted(out, key=lambda d: d["t"], reverse=True)


@dataclass(frozen=True)
class ChartLine:
    """One rank's line of a chart, downsampled."""

    rank: int
    x: list[float]
    y: list[float | str]
    stored: int


def chart_line(
    rank: int,
    xs: Sequence[float],
    ys: Sequence[float],
    points: int | None,
    method: Method,
) -> ChartLine:
    """Downsample one series to `points` (every non-finite point kept) as columns."""
    keep: Iterable[int] = (
        select(xs, ys, points, method) if points and len(xs) > points else range(len(xs))
    )
    kx, ky = [], []
    for i in keep:
        kx.append(xs[i])
        ky.append(json_float(ys[i]))
    return ChartLine(rank, kx, ky, len(xs))


_SAFE_SILENCE_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def silence_matchers(alert: Alert) -> dict[str, str]:
    """The matchers a silence from the alert list uses: its run, rule and rank."""
    matchers = {"run": alert.run, "rule": alert.rule}
    if alert.rank is not None:
        matchers["rank"] = str(alert.rank)
    return matchers


def check_matchers(matchers: dict[str, Any]) -> dict[str, str]:
    """Validated matchers of a silence posted by a page: label names are identifiers and
    values short strings; ValueError says what is wrong."""
    if not matchers:
        raise ValueError("a silence needs at least one matcher, e.g. rule=nonfinite")
    out = {}
    for name, value in matchers.items():
        if not isinstance(name, str) or not _SAFE_SILENCE_LABEL.match(name):
            raise ValueError(f"matcher label {name!r}: use letters, digits and '_'")
        if not isinstance(value, str) or not value or len(value) > 256:
            raise ValueError(f"matcher {name}: use a glob of 1-256 characters")
        out[name] = value
    return out
