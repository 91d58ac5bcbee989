"""An append-only, bounded, segmented on-disk spool of telemetry frames.

The publisher writes here only what Kafka could not take, and replays it oldest first
when the broker is back. A frame is one Kafka message (key and value) behind a small
header with its length, record count and a CRC-32, so a file cut short by a power loss
is read up to its last whole frame and the partial tail is skipped. Segments are files
named by a growing counter; a segment is deleted once every frame in it was acknowledged.
At the size bound the oldest segments are dropped, and the records in them counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

# body length, CRC-32 of (counts + key + value), key length, record count
_HEADER = struct.Struct("<IIHI")
_COUNTS = struct.Struct("<HI")
_MAGIC = b"SSP1"
SUFFIX = ".spool"


@dataclass(frozen=True)
class Frame:
    """One Kafka message as the publisher would have sent it."""

    key: bytes
    value: bytes
    records: int


def encode_frame(frame: Frame) -> bytes:
    """Header plus key plus value, with a checksum over everything after the CRC field."""
    counts = _COUNTS.pack(len(frame.key), frame.records)
    crc = zlib.crc32(frame.value, zlib.crc32(frame.key, zlib.crc32(counts)))
    header = _HEADER.pack(len(frame.key) + len(frame.value), crc, len(frame.key), frame.records)
    return header + frame.key + frame.value


def decode_frames(data: bytes) -> tuple[list[Frame], int]:
    """The whole frames at the start of `data`, and how many bytes they span.

    Reading stops at the first short or corrupt frame: after a power loss only the tail
    of a segment can be partial, and everything before it is kept.
    """
    frames: list[Frame] = []
    pos = len(_MAGIC) if data.startswith(_MAGIC) else 0
    if pos == 0 and data:
        return frames, 0
    while pos + _HEADER.size <= len(data):
        body_len, crc, key_len, records = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        end = start + body_len
        if end > len(data) or key_len > body_len:
            break
        key, value = data[start : start + key_len], data[start + key_len : end]
        counts = _COUNTS.pack(key_len, records)
        if zlib.crc32(value, zlib.crc32(key, zlib.crc32(counts))) != crc:
            break
        frames.append(Frame(key, value, records))
        pos = end
    return frames, pos


class Spool:
    """Segment files in one directory; one writer (the publisher thread) at a time."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max_bytes)
        self.dropped_records = 0
        self._active: BinaryIO | None = None
        self._active_path: Path | None = None
        self._active_size = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._sizes = {p: p.stat().st_size for p in self._list()}
        self._next = max((self._number(p) for p in self._sizes), default=-1) + 1

    @staticmethod
    def _number(path: Path) -> int:
        return int(path.stem)

    def _list(self) -> list[Path]:
        return sorted(
            (p for p in self.directory.glob(f"*{SUFFIX}") if p.stem.isdigit()), key=self._number
        )

    @property
    def size(self) -> int:
        """Bytes on disk in every segment, the active one included."""
        return sum(self._sizes.values())

    def __bool__(self) -> bool:
        return bool(self._sizes)

    def append(self, frames: Iterable[Frame]) -> None:
        """Write frames to the active segment, rotating and enforcing the bound."""
        for frame in frames:
            data = encode_frame(frame)
            if self._active is None or self._active_size + len(data) > self.segment_bytes:
                self._open_new()
            assert self._active is not None and self._active_path is not None
            self._active.write(data)
            self._active_size += len(data)
            self._sizes[self._active_path] = self._active_size
            self._enforce_bound()
        if self._active is not None:
            # Hand the bytes to the OS now: a crashed process loses nothing it spooled.
            self._active.flush()

    def _open_new(self) -> None:
        self.seal()
        path = self.directory / f"{self._next:012d}{SUFFIX}"
        self._next += 1
        self._active = path.open("ab")
        self._active.write(_MAGIC)
        self._active_path = path
        self._active_size = len(_MAGIC)
        self._sizes[path] = self._active_size

    def seal(self) -> None:
        """Close the active segment so that it can be replayed; the next append opens a new one."""
        if self._active is not None:
            self._active.flush()
            with contextlib.suppress(OSError):
                os.fsync(self._active.fileno())
            self._active.close()
        self._active = None
        self._active_path = None
        self._active_size = 0

    def _enforce_bound(self) -> None:
        while self.size > self.max_bytes and len(self._sizes) > 1:
            oldest = next(iter(sorted(self._sizes, key=self._number)))
            if oldest == self._active_path:
                break
            frames, _ = decode_frames(oldest.read_bytes())
            lost = sum(f.records for f in frames)
            self.dropped_records += lost
            log.warning("stepstream spool over %d bytes: dropped %d records", self.max_bytes, lost)
            self.remove(oldest)

    def sealed(self) -> list[Path]:
        """Segments ready to replay, oldest first (the active one is not among them)."""
        return [p for p in sorted(self._sizes, key=self._number) if p != self._active_path]

    def read(self, path: Path) -> list[Frame]:
        """The whole frames of one segment (a truncated tail is skipped)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        frames, used = decode_frames(data)
        if used < len(data):
            log.warning(
                "stepstream spool segment %s has %d unreadable trailing bytes: skipped",
                path,
                len(data) - used,
            )
        return frames

    def remove(self, path: Path) -> None:
        """Delete a segment whose frames were all acknowledged (or dropped)."""
        self._sizes.pop(path, None)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def close(self) -> None:
        """Seal the active segment; the files stay for the next incarnation to replay."""
        self.seal()
