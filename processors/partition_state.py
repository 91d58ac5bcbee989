"""The processor's per-partition bookkeeping: which partition each series or run was read
from, and which runs had their liveness seeded since the last assignment.

Pure: no faust, Kafka or Redis. A partition that comes back to this worker after another
worker read it (`stepstream.positions.PartitionOffsets`) makes the state of its keys
stale; these records say which keys those are.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass
class PartitionKeys(Generic[K]):
    """The partition each key (a series, a run) was last read from."""

    partition_of: dict[K, int] = field(default_factory=dict)

    def note(self, key: K, partition: int) -> None:
        """`key` was read from `partition`."""
        self.partition_of[key] = partition

    def get(self, key: K) -> int | None:
        """The partition `key` was last read from (None: not read here)."""
        return self.partition_of.get(key)

    def on(self, partitions: Collection[int]) -> list[K]:
        """The keys last read from one of `partitions` (they are kept: a key read again
        is noted again where it is read)."""
        return [key for key, partition in self.partition_of.items() if partition in partitions]

    def drop(self, keys: Iterable[K]) -> None:
        """Forget `keys` (their state was expired)."""
        for key in keys:
            self.partition_of.pop(key, None)

    def __len__(self) -> int:
        return len(self.partition_of)


@dataclass
class SeededRuns:
    """Runs whose liveness was seeded from the rank registry since the last assignment.

    A cold owner (a worker died, joined or restarted) learns the ranks the previous one
    knew once per run; after a rebalance every run may come back with news another
    owner heard, so all are seeded again.
    """

    runs: set[str] = field(default_factory=set)

    def first_sight(self, run: str) -> bool:
        """True (and the run counts as seeded from now on) if `run` was not seeded since
        the last assignment."""
        if run in self.runs:
            return False
        self.runs.add(run)
        return True

    def reset(self) -> None:
        """A rebalance began: every run is seeded again when next seen."""
        self.runs.clear()

    def drop(self, runs: Iterable[str]) -> None:
        """Forget `runs` (expired: one that comes back is cold and seeded again)."""
        self.runs.difference_update(runs)
