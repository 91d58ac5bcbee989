"""The packed window value: one (rank, metric)'s stats of one window as fixed-size bytes.

A window hash (`stepstream.keys.RedisKeys.window`) maps ``rank|metric`` to a value. The
sink stores it packed (this module) whenever it can: a magic byte, the rank, the metric's
code and the numeric stats of `STORED_WINDOW_STATS` as little-endian float64. Every
packed value has the same size, so a reader turns a whole window (HVALS) into numpy
columns with one ``np.frombuffer`` and no Python object per row: the columnar read path
(`query.reader.MetricsReader.rolling_columns`).

The metric is its `metric_code`, a 64-bit hash of the name, so that writers agree on it
without coordination; the run's code table (`RedisKeys.metric_codes`, hex code -> name)
names it, written by the sink beside the values.

A value the packed layout cannot hold is stored as the JSON row of
`stepstream.keys.window_stats_json` instead, and readers read both: open detector flags
(rare: an episode on that series is open), or stats beyond the stored positions (a newer
processor's). A stat that is None (not computed: ``std`` of one value) is a NaN with the
payload `NONE_BITS`, told apart from a NaN stat (the ``last`` value was NaN).

Pure: numpy and the standard library only.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from stepstream.contract import WINDOW_STATS_NUMBERS

PACKED_MAGIC = 0xB1
"""First byte of a packed value: never the first byte of a JSON row (``[`` or ``{``)."""

PACKED_STATS: tuple[str, ...] = WINDOW_STATS_NUMBERS[:11]
"""The numeric stats a packed value holds, in this order: count, nonfinite, mean, min,
max, last, std, ema, p50, p95, slope. The layout's version is its magic byte: a stat
added here is a new magic, with readers of the old one kept."""

NONE_BITS = 0x7FF8_0000_0000_0BAD
"""The float64 bits of a stat that is None: a quiet NaN with a payload no arithmetic
makes (a computed NaN is 0x7FF8000000000000 or its negative)."""

NONE_FLOAT: float = struct.unpack("<d", NONE_BITS.to_bytes(8, "little"))[0]
"""A None stat as the float a packed value holds (a float keeps its NaN payload)."""
_HEAD = "<BiQ"
_STRUCT = struct.Struct(_HEAD + "d" * len(PACKED_STATS))
_STATS_SET = frozenset(PACKED_STATS) | {"flags"}
_MAX_RANK = 2**31 - 1

PACKED_DTYPE = np.dtype(
    [
        ("magic", "u1"),
        ("rank", "<i4"),
        ("code", "<u8"),
        ("stats", "<f8", (len(PACKED_STATS),)),
    ]
)
"""A packed value as a numpy record (unaligned, as stored)."""
PACKED_SIZE = _STRUCT.size
assert PACKED_DTYPE.itemsize == PACKED_SIZE


@functools.lru_cache(maxsize=65536)
def metric_code(metric: str) -> int:
    """The 64-bit code of a metric name in packed values: the same in every process and
    release, so sinks and readers agree without a shared table. A collision inside one
    run's capped vocabulary (`STEPSTREAM_MAX_METRICS_PER_RUN`) has odds of about
    n^2 / 2^65."""
    return int.from_bytes(hashlib.blake2b(metric.encode(), digest_size=8).digest(), "little")


def code_field(code: int) -> str:
    """A code as the field of the run's code table: 16 hex digits."""
    return f"{code:016x}"


def pack_window_stats(rank: int, metric: str, stats: Mapping[str, Any]) -> bytes | None:
    """The packed value of one (rank, metric)'s stats, or None when the layout cannot hold
    them (open flags, or a stat beyond `PACKED_STATS`): store the JSON row then."""
    if stats.get("flags") or not stats.keys() <= _STATS_SET or rank > _MAX_RANK:
        return None
    get = stats.get
    values = [get(name) for name in PACKED_STATS]
    values[0] = values[0] or 0  # counts are never None (the contract's default is 0)
    values[1] = values[1] or 0
    if None in values:
        values = [NONE_FLOAT if v is None else v for v in values]
    return _STRUCT.pack(PACKED_MAGIC, rank, metric_code(metric), *values)


def unpack_window_values(values: Sequence[bytes]) -> npt.NDArray[Any] | None:
    """Every value of a window hash as `PACKED_DTYPE` records (one copy, no Python per
    row), or None when one is not packed (a JSON row: read those apart)."""
    n = len(values)
    joined = b"".join(values)
    if len(joined) != n * PACKED_SIZE:
        return None
    records = np.frombuffer(joined, PACKED_DTYPE)
    if not (records["magic"] == PACKED_MAGIC).all():
        return None
    return records


def is_packed(value: bytes) -> bool:
    """True for a packed value, False for a JSON row."""
    return len(value) == PACKED_SIZE and value[0] == PACKED_MAGIC


def none_mask(stats: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Where packed stats are None (not computed), as opposed to a NaN stat."""
    return stats.view(np.uint64) == np.uint64(NONE_BITS)
