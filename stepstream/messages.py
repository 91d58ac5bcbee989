"""A Kafka message as the faust seam (`stepstream.faust_seam`) hands it to a stage.

Pure: stage handlers take lists of these, so they are written and tested without faust.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Message:
    """One message read from `topic`: where (partition, offset) and its raw key and value
    (None for a tombstone or a message without a key)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
