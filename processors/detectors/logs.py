"""Error-log bursts: many error-level log records from one rank in a short time."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from processors.flags import Episodes, Flag, evidence


@dataclass(frozen=True)
class ErrorBurstParams:
    """Parameters of `ErrorBurstDetector`.

    level_key: the log record's value holding its numeric level (Python logging levels).
    min_level: records at or above this level count (40 = ERROR); a log record without a
        level counts as an error.
    window_s: event-time window in seconds.
    count: a burst is this many counted records within `window_s`.
    """

    level_key: str = "level"
    min_level: float = 40.0
    window_s: float = 60.0
    count: int = 10


class ErrorBurstDetector:
    """Flags `count` error records of one rank within `window_s` seconds of event time.
    Delay: the record that completes the burst."""

    name = "error_burst"

    def __init__(self, params: ErrorBurstParams | None = None) -> None:
        self.params = params or ErrorBurstParams()
        self._times: dict[tuple[str, int], deque[float]] = {}
        self._episodes = Episodes()

    def observe_log(
        self,
        run: str,
        rank: int,
        step: int | None,
        t: float,
        values: dict[str, float],
        text: str | None,
    ) -> Flag | None:
        """Add one log record; return a flag when a burst episode starts."""
        p = self.params
        key = (run, rank)
        times = self._times.setdefault(key, deque())
        level = values.get(p.level_key, p.min_level)
        if level >= p.min_level:
            times.append(t)
        while times and times[0] <= t - p.window_s:
            times.popleft()
        if len(times) < p.count:
            if not times:
                self._episodes.end(key)
            return None
        if not self._episodes.start(key):
            return None
        return Flag(
            detector=self.name,
            run=run,
            rank=rank,
            metric=None,
            step=step,
            t=t,
            severity="warning",
            summary=f"{len(times)} error logs in {p.window_s:g}s on rank {rank}"
            + (f"; last: {text[:200]}" if text else ""),
            evidence=evidence(float(len(times)), None, float(p.count), p.window_s),
        )
