"""Consumer positions against the broker's log: telling a log that started over.

An embedded broker keeps its log in memory. Killed and started again (by a supervisor),
it numbers offsets from 0 again while a worker's consumer still holds its old position.
Kafka clients do not notice: fetches at a position past the end return nothing (no
OffsetOutOfRange on tansu), and faust drops every record below the offset it last read.
Everything the new log holds until it grows past the old position is then skipped
silently (measured: 60-129 records of a two-rank job, the first 2-3 s after the restart).

A position can never legitimately be past the end of the log it reads: the end (the
high watermark a fetch reports) only grows, every record read was below it, and no
offset past it can be committed. So an end below the position means the log is not the
one that was read. The position faust keeps is the last offset read, or right after an
assignment the committed offset, which is the next one to read and may equal the end of
an idle log: only an end strictly below it is told (a new log that has grown to exactly
the old position is missed, and a tick later it is past it).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from stepstream.messages import Message

P = TypeVar("P", bound=Hashable)


def restarted_logs(
    highwaters: Mapping[P, int | None], read_offsets: Mapping[P, int | None]
) -> list[P]:
    """The partitions whose log ends below the position read in it.

    `highwaters`: the end offset of each partition's log (the offset the next record
    gets), as the last fetch reported it, or None before any fetch. `read_offsets`: the
    position of each (the last offset read, or the committed offset), or None when
    nothing was read since the partition was assigned or rewound.
    """
    out = []
    for partition, end in highwaters.items():
        read = read_offsets.get(partition)
        if end is not None and read is not None and end < read:
            out.append(partition)
    return out


@dataclass
class PartitionOffsets:
    """The offset last read in each partition of one topic by one agent, to tell the
    partitions that came back after another worker read them meanwhile.

    A partition's offsets move by one from record to record while this worker holds it
    (a compacted or transactional topic may skip some; the stages read neither). A jump
    forward means records were read elsewhere: this worker was cut off from its group,
    the partition went to another worker, and came back.
    """

    last: dict[int, int] = field(default_factory=dict)

    def handled(self, messages: Iterable[Message]) -> None:
        """Note the offsets of `messages` as read (see faust_seam.Agent.positions)."""
        last = self.last
        for message in messages:
            if message.offset > last.get(message.partition, -1):
                last[message.partition] = message.offset

    def jumps(self, places: Iterable[tuple[int, int]]) -> set[int]:
        """The partitions whose offsets jumped forward in `places` ((partition, offset) in
        read order) past the offset last read in them; remembers the offsets read."""
        jumped = set()
        last = self.last
        for partition, offset in places:
            previous = last.get(partition)
            if previous is not None and offset > previous + 1:
                jumped.add(partition)
            last[partition] = offset
        return jumped


@dataclass
class ReadProgress:
    """How far behind the broker one agent's reading of each partition is, in time.

    Under steady load a partition is seldom read to its very end at the moment one asks:
    new records keep arriving. What can be said is that everything the broker held at
    some earlier moment was read. Each `sample` notes the log's end at a moment; `read_as_of`
    gives the newest moment whose end the reading has passed.
    """

    #: The most samples kept per partition, one per read-mark interval: a minute at the
    #: default quarter second. A worker further behind than that claims nothing.
    keep: int = 256
    samples: dict[int, list[tuple[float, int]]] = field(default_factory=dict)

    def sample(self, partition: int, now: float, end: int) -> None:
        """The log of `partition` ended at offset `end` (the next record's) at `now`."""
        taken = self.samples.setdefault(partition, [])
        taken.append((now, end))
        if len(taken) > self.keep:
            del taken[0]

    def read_as_of(self, partition: int, last_read: int) -> float | None:
        """The newest moment at which the log of `partition` held nothing past
        `last_read` (the offset last read), or None when no sample is that old; samples
        older than it are dropped."""
        taken = self.samples.get(partition, [])
        found = None
        for index in range(len(taken) - 1, -1, -1):
            at, end = taken[index]
            if end <= last_read + 1:
                found = at
                del taken[:index]
                break
        return found

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget `partitions` (no longer held here)."""
        for partition in partitions:
            self.samples.pop(partition, None)
