"""Error-log bursts: many error-level log records from one rank in a short time."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from processors.flags import Episodes, Flag, RankKey, evidence, forget_ranks, moment
from stepstream import vocabulary as vocab


def _level(values: dict[str, float], key: str, missing: float) -> float:
    """The record's level under `key` or any name the vocabulary gives the same signal (a
    hand-published record may say ``level``); a record without one counts as `missing`."""
    if key in values:
        return values[key]
    for name, value in values.items():
        if vocab.canonical(name) == vocab.canonical(key):
            return value
    return missing


@dataclass(frozen=True)
class ErrorBurstParams:
    """Parameters of `ErrorBurstDetector`.

    level_key: the log record's value holding its numeric level (Python logging levels);
        its vocabulary aliases are read too.
    min_level: records at or above this level count (40 = ERROR); a log record without a
        level counts as an error.
    window_s: event-time window in seconds.
    count: a burst is this many counted records within `window_s`.
    """

    level_key: str = vocab.LOG_LEVEL.name
    min_level: float = 40.0
    window_s: float = 60.0
    count: int = 10


class ErrorBurstDetector:
    """Flags `count` error records of one rank within `window_s` seconds of event time; the
    burst clears once `window_s` seconds pass without an error record (seen at the rank's
    next log record, or at any of its records through `advance`). Delay: the record that
    completes the burst."""

    name = "error_burst"

    def __init__(self, params: ErrorBurstParams | None = None) -> None:
        self.params = params or ErrorBurstParams()
        self._times: dict[tuple[str, int], deque[float]] = {}
        self._episodes = Episodes()

    def restated(self, run: str, rank: int) -> list[Flag]:
        """The open episodes of one rank, as flags to send again (`Episodes.opened`)."""
        return self._episodes.opened(run, rank)

    def forget(self, ranks: Collection[RankKey]) -> None:
        """Drop the error times and open bursts of `ranks` (idle publishers)."""
        forget_ranks(self._times, ranks)
        self._episodes.forget(ranks)

    def observe_log(
        self,
        run: str,
        rank: int,
        step: int | None,
        t: float,
        values: dict[str, float],
        text: str | None,
    ) -> Flag | None:
        """Add one log record; a flag when a burst episode starts, a cleared flag when the
        record finds the window empty of errors during one."""
        p = self.params
        key = (run, rank)
        times = self._times.setdefault(key, deque())
        level = _level(values, p.level_key, p.min_level)
        if level >= p.min_level:
            times.append(t)
        ended = self._expire(key, times, step, t)
        if ended is not None or len(times) < p.count or self._episodes.is_open(key):
            return ended
        flag = Flag(
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
        return self._episodes.start(key, flag)

    def advance(self, run: str, rank: int, step: int | None, t: float) -> Flag | None:
        """The rank's event time reached `t` (any record, not only a log): a cleared flag if
        that empties the window of an open burst. A rank that stops logging errors often
        logs nothing at all, so waiting for its next log record could wait forever."""
        times = self._times.get((run, rank))
        if times is None or not self._episodes.is_open((run, rank)):
            return None
        return self._expire((run, rank), times, step, t)

    def _expire(
        self, key: tuple[str, int], times: deque[float], step: int | None, t: float
    ) -> Flag | None:
        """Drop error times older than the window at `t`; the cleared flag when that leaves
        an open burst without any (an empty window, not merely fewer than `count`, so a
        burst that goes on at a slower rate stays one episode)."""
        p = self.params
        while times and times[0] <= t - p.window_s:
            times.popleft()
        if times:
            return None
        if not self._episodes.is_open(key):
            return None
        return self._episodes.close(
            key,
            step,
            t,
            f"error burst on rank {key[1]} cleared at {moment(step, t)}: no error log in "
            f"{p.window_s:g}s",
            evidence(0.0, None, float(p.count), p.window_s),
        )
