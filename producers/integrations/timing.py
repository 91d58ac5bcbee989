"""Step timing from a framework's batch hooks: pure arithmetic on ``perf_counter`` reads.

A framework callback sees a batch start (its data has arrived) and a batch end (the
optimizer stepped). Data wait is from the end of the previous batch to this start: the
data loader, host-to-device copies and the framework's own bookkeeping between steps.
Compute is from the start to the end; step time the two together.
"""

from __future__ import annotations

from stepstream import vocabulary as vocab


class StepTimer:
    """Times the steps between `start()` and `end()` calls of one training thread."""

    __slots__ = ("_end", "_start")

    def __init__(self) -> None:
        self._end: float | None = None
        self._start: float | None = None

    def start(self, now: float) -> None:
        """A batch starts (its data is there)."""
        self._start = now

    def end(self, now: float, samples: int | None = None) -> dict[str, float]:
        """A batch ended: its data wait, compute and step time, and samples/s, in the
        vocabulary's names (the first batch has no data wait: no step ended before it)."""
        values: dict[str, float] = {}
        start, prev = self._start, self._end
        if start is not None:
            values[vocab.COMPUTE.name] = now - start
            if prev is not None and start >= prev:
                values[vocab.DATA_WAIT.name] = start - prev
                step_time = now - prev
                values[vocab.STEP_TIME.name] = step_time
                if samples and step_time > 0:
                    values[vocab.SAMPLES_PER_S.name] = samples / step_time
        self._end = now
        self._start = None
        return values

    def pause(self) -> None:
        """Time outside the loop follows (validation, a checkpoint): the next data wait
        starts at the next batch's own start, not at the last training batch's end."""
        self._end = None
