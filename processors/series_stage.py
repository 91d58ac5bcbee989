"""Stage 1, per series: dedup by seq, windows per (run, rank, metric), per-series detectors.

Pure logic with no faust or Kafka imports; the faust agent in ``processors.app`` feeds it
decoded batches and sends what it returns.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from processors.detectors import Flag, NonFiniteDetector
from processors.windows import RollingWindow, Summary
from stepstream.contract import Alert, Batch, RecordKind, WindowStats, WindowUpdate
from stepstream.keys import step_window_name, time_window_name

#: Record kinds whose values are not series to window (free-text logs).
UNWINDOWED_KINDS = frozenset({RecordKind.LOG})


@dataclass
class SeriesWindows:
    """The step windows and time windows of one metric of one rank."""

    by_step: list[tuple[str, RollingWindow]]
    by_time: list[tuple[str, RollingWindow]]

    def add(self, step: int | None, t: float, value: float) -> None:
        """Place one value in every window it belongs to."""
        if step is not None:
            for _, window in self.by_step:
                window.add(step, value)
        for _, window in self.by_time:
            window.add(t, value)

    def summaries(self) -> list[tuple[str, Summary]]:
        """(window name, summary) for every window of the series."""
        return [(name, w.summary()) for name, w in (*self.by_step, *self.by_time)]


@dataclass
class RankState:
    """What stage 1 remembers of one (run, rank): dedup watermark and its series."""

    incarnation: str = ""
    high_seq: int = -1
    duplicates: int = 0
    lost: int = 0
    last_step: int | None = None
    last_t: float = 0.0
    series: dict[str, SeriesWindows] = field(default_factory=dict)


@dataclass
class StageResult:
    """What processing one batch produced."""

    update: WindowUpdate | None
    alerts: list[Alert]
    duplicates: int = 0
    lost: int = 0


def fingerprint(rule: str, run: str, rank: int | None, metric: str | None) -> str:
    """Stable alert id of (rule, run, rank, metric): receivers dedup on it."""
    raw = f"{rule}\x1f{run}\x1f{rank}\x1f{metric}".encode()
    return hashlib.sha1(raw).hexdigest()[:16]


def flag_to_alert(flag: Flag, raised_at: float) -> Alert:
    """The alert message of a detector flag."""
    return Alert(
        fingerprint=fingerprint(flag.detector, flag.run, flag.rank, flag.metric),
        rule=flag.detector,
        status="firing",
        severity=flag.severity,
        run=flag.run,
        rank=flag.rank,
        metric=flag.metric,
        step=flag.step,
        t=flag.t,
        raised_at=raised_at,
        summary=flag.summary,
        evidence=flag.evidence,
    )


def _stats(summary: Summary) -> WindowStats:
    return WindowStats(
        count=summary.count,
        nonfinite=summary.nonfinite,
        mean=summary.mean,
        min=summary.min,
        max=summary.max,
        last=summary.last,
    )


class SeriesStage:
    """Turns telemetry batches into window updates and alerts.

    `window_steps` and `window_seconds` are the window sizes; `clock` stamps `raised_at`
    on alerts (injected so tests control it).
    """

    def __init__(
        self,
        window_steps: list[int],
        window_seconds: list[float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_steps = list(window_steps)
        self.window_seconds = list(window_seconds)
        self.window_names = [step_window_name(n) for n in self.window_steps] + [
            time_window_name(s) for s in self.window_seconds
        ]
        self._clock = clock
        self._ranks: dict[tuple[str, int], RankState] = {}
        self._nonfinite = NonFiniteDetector()

    def _new_series(self) -> SeriesWindows:
        return SeriesWindows(
            by_step=[(step_window_name(n), RollingWindow(n)) for n in self.window_steps],
            by_time=[(time_window_name(s), RollingWindow(s)) for s in self.window_seconds],
        )

    def process(self, batch: Batch) -> StageResult:
        """Apply one batch; return the fresh stats of the series it touched and any alerts."""
        state = self._ranks.get((batch.run, batch.rank))
        if state is None or state.incarnation != batch.incarnation:
            previous = state
            state = RankState(incarnation=batch.incarnation)
            if previous is not None:
                # A restarted publisher starts its seq again; its history stays.
                state.series = previous.series
            self._ranks[(batch.run, batch.rank)] = state

        touched: dict[str, float] = {}
        flags: list[Flag] = []
        duplicates = lost = 0
        for record in batch.records:
            if record.seq <= state.high_seq:
                duplicates += 1
                continue
            if record.seq > state.high_seq + 1 and state.high_seq >= 0:
                lost += record.seq - state.high_seq - 1
            state.high_seq = record.seq
            if record.step is not None and (state.last_step is None or record.step > state.last_step):
                state.last_step = record.step
            state.last_t = max(state.last_t, record.t)
            if record.kind in UNWINDOWED_KINDS:
                continue
            for metric, value in record.values.items():
                series = state.series.get(metric)
                if series is None:
                    series = state.series[metric] = self._new_series()
                series.add(record.step, record.t, value)
                touched[metric] = value
                flag = self._nonfinite.observe(
                    batch.run, batch.rank, metric, record.step, record.t, value
                )
                if flag is not None:
                    flags.append(flag)
        state.duplicates += duplicates
        state.lost += lost

        update = None
        if touched:
            windows: dict[str, dict[str, WindowStats]] = {name: {} for name in self.window_names}
            for metric in touched:
                for name, summary in state.series[metric].summaries():
                    windows[name][metric] = _stats(summary)
            update = WindowUpdate(
                run=batch.run,
                rank=batch.rank,
                world=batch.world,
                node=batch.node,
                step=state.last_step,
                t=state.last_t,
                latest=touched,
                windows=windows,
            )
        now = self._clock()
        alerts = [flag_to_alert(flag, now) for flag in flags]
        return StageResult(update=update, alerts=alerts, duplicates=duplicates, lost=lost)
