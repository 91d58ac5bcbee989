"""Checks a decoded batch must pass before stage 1 uses it: absurd values and cardinality.

Schema errors (negative steps, wrong types) and unknown major versions are caught by the
contract already; these are values that are well-formed but cannot be right, and that
would hurt the processor (memory, CPU) or every reader if let through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from stepstream.contract import Batch

#: Steps beyond this are absurd (a trillion steps): likely a timestamp sent as a step.
MAX_STEP = 10**12


@dataclass(frozen=True)
class Limits:
    """Bounds on what one batch may hold.

    max_records: records per message.
    max_future_s: event times further ahead of the processor clock than this.
    max_past_s: event times further behind the processor clock than this.
    max_metrics_per_run: distinct metric names per run (per processor process).
    max_seq_jump: how far past a publisher's last seq a batch may start. A gap is records
        lost on the way (a spool that dropped its oldest); one past this is a forged or
        corrupt seq, which would make every later record of the publisher a "duplicate".
    """

    max_records: int = 20_000
    max_future_s: float = 3600.0
    max_past_s: float = 7 * 86400.0
    max_metrics_per_run: int = 5000
    max_seq_jump: int = 10_000_000


def check_seq_jump(batch: Batch, high_seq: int, limits: Limits) -> Rejection | None:
    """The reason to reject a batch whose seqs jump too far: past the publisher's last
    seq `high_seq` (-1: none yet, anything goes) or within the batch."""
    previous = high_seq
    bound = limits.max_seq_jump
    for record in batch.records:
        if previous >= 0 and record.seq - previous > bound:
            return Rejection(
                "seq_jump",
                f"seq {record.seq} of {batch.run}:{batch.rank} is {record.seq - previous} past "
                f"the publisher's last seq {previous} (limit {bound}): a forged or corrupt seq, "
                "dropped so that the publisher's later records are not taken for duplicates",
            )
        previous = max(previous, record.seq)
    return None


@dataclass(frozen=True)
class Rejection:
    """Why a batch (or part of it) goes to the dead-letter topic."""

    reason: str
    detail: str


def check_batch(batch: Batch, now: float, limits: Limits) -> Rejection | None:
    """The reason to reject the whole batch, or None if it is usable."""
    if len(batch.records) > limits.max_records:
        return Rejection(
            "too_many_records", f"{len(batch.records)} records > limit {limits.max_records}"
        )
    horizon = now + limits.max_future_s
    oldest = now - limits.max_past_s
    for record in batch.records:
        if not math.isfinite(record.t) or record.t < 0:
            return Rejection("absurd_time", f"record seq {record.seq} has event time {record.t}")
        if record.t < oldest:
            return Rejection(
                "past_time",
                f"record seq {record.seq} is {now - record.t:.0f}s behind the processor "
                f"clock (limit {limits.max_past_s:g}s)",
            )
        if record.t > horizon:
            return Rejection(
                "future_time",
                f"record seq {record.seq} is {record.t - now:.0f}s ahead of the processor "
                f"clock (limit {limits.max_future_s:g}s)",
            )
        if record.step is not None and record.step > MAX_STEP:
            return Rejection("absurd_step", f"record seq {record.seq} has step {record.step}")
    return None


@dataclass
class CardinalityGuard:
    """Remembers the metric names of each run and refuses new ones beyond the cap."""

    cap: int
    names: dict[str, set[str]] = field(default_factory=dict)

    def admit(self, run: str, metric: str) -> bool:
        """True if `metric` is known for `run` or fits under the cap (and is now known)."""
        known = self.names.setdefault(run, set())
        if metric in known:
            return True
        if len(known) >= self.cap:
            return False
        known.add(metric)
        return True
