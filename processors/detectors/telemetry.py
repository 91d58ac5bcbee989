"""Telemetry loss: records missing from a publisher's seq sequence."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from processors.flags import Episodes, Flag, RankKey, evidence, forget_ranks, moment


@dataclass(frozen=True)
class TelemetryLossParams:
    """Parameters of `TelemetryLossDetector`.

    window_batches: batches over which the loss fraction is computed.
    max_fraction: loss when lost / (lost + received) exceeds this.
    """

    window_batches: int = 20
    max_fraction: float = 0.0


class TelemetryLossDetector:
    """Flags seq gaps of one publisher (lost records) above `max_fraction` over the last
    `window_batches` batches; it clears when the lost fraction over that window is back at
    or below `max_fraction` (with the default 0: `window_batches` batches without a gap).
    Delay: the batch after the gap."""

    name = "telemetry_loss"

    def __init__(self, params: TelemetryLossParams | None = None) -> None:
        self.params = params or TelemetryLossParams()
        self._batches: dict[tuple[str, int], deque[tuple[int, int]]] = {}
        self._episodes = Episodes()

    def restated(self, run: str, rank: int) -> list[Flag]:
        """The open episodes of one rank, as flags to send again (`Episodes.opened`)."""
        return self._episodes.opened(run, rank)

    def forget(self, ranks: Collection[RankKey]) -> None:
        """Drop the batch counts and open loss episodes of `ranks` (idle publishers)."""
        forget_ranks(self._batches, ranks)
        self._episodes.forget(ranks)

    def observe_batch(
        self, run: str, rank: int, step: int | None, t: float, lost: int, received: int
    ) -> Flag | None:
        """Add one batch's counts; a flag when a loss episode starts, a cleared flag when
        one ends."""
        p = self.params
        key = (run, rank)
        batches = self._batches.setdefault(key, deque(maxlen=p.window_batches))
        batches.append((lost, received))
        total_lost = sum(b[0] for b in batches)
        total = total_lost + sum(b[1] for b in batches)
        fraction = total_lost / total if total else 0.0
        if fraction <= p.max_fraction:
            if not self._episodes.is_open(key):
                return None
            return self._episodes.close(
                key,
                step,
                t,
                f"telemetry loss from rank {rank} cleared at {moment(step, t)}: "
                f"{total_lost} records lost in the last {len(batches)} batches",
                evidence(
                    fraction, None, p.max_fraction, float(len(batches)), lost=float(total_lost)
                ),
            )
        if self._episodes.is_open(key):
            return None
        flag = Flag(
            detector=self.name,
            run=run,
            rank=rank,
            metric=None,
            step=step,
            t=t,
            severity="warning",
            summary=f"{total_lost} telemetry records lost from rank {rank} "
            f"({fraction:.1%} of the last {len(batches)} batches)",
            evidence=evidence(
                fraction, None, p.max_fraction, float(len(batches)), lost=float(total_lost)
            ),
        )
        return self._episodes.start(key, flag)
