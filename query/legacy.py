"""Readers of the storage formats earlier releases wrote, off the hot read path.

`query.reader` reads what the sink writes now: binary series members and window values
that hold their whole row by position. Earlier releases wrote text series members
(``step|seq|value``) and window values as JSON objects whose rank and metric are only
in their hash field. Such values stay until they are written again or their retention
ends, and one key can hold both formats after an upgrade. A point whose step or seq
does not fit in int64 is still written as text (`stepstream.keys.series_member`). The
reader hands such values here when it meets them, so this module is imported only then.
"""

from __future__ import annotations

import array
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from query.reader import (
    _ROWS,
    _TAG,
    NO_STEP,
    FloatArray,
    IntArray,
    RollingRow,
    RollingStats,
    _sorted_rows,
)
from stepstream.keys import is_packed_member, parse_series_member

_FLOATS = msgspec.json.Decoder(list[float], strict=False)
_PIPE_TO_COMMA = bytes.maketrans(b"|", b",")


class _RollingRowOpen(msgspec.Struct, gc=False):
    """A rolling row of a window value stored as a JSON object by an earlier release,
    spliced with its field (`_rolling_document`)."""

    rank: int
    metric: str
    window: str
    stats: dict[str, Any]


_OPEN_ROWS = msgspec.json.Decoder(list[_RollingRowOpen], strict=False)


def _array(floats: list[float]) -> npt.NDArray[np.float64]:
    """A list of floats as a numpy array: array.array converts in one pass where
    np.array first scans the list for a type (a quarter of the time of both)."""
    return np.frombuffer(array.array("d", floats), dtype=np.float64)


def member_numbers(members: list[bytes]) -> list[float]:
    """step, seq, value, step, seq, value ... of text members ``step|seq|value`` of a
    series by step (what releases before the binary members wrote; every member has a
    step), as floats (steps and seqs are exact). One join and translate make them one
    JSON array that msgspec parses in C; int() and float() per member were most of a
    10,000-point read."""
    if not members:
        return []
    if isinstance(members[0], str):  # a client made with decode_responses=True
        members = [m.encode() for m in members]
    doc = b"[" + b",".join(members).translate(_PIPE_TO_COMMA) + b"]"
    if b"N" in doc or b"I" in doc:  # NaN, Infinity, -Infinity (keys.format_value)
        doc = doc.replace(b"NaN", b'"NaN"').replace(b"Infinity", b'"Infinity"')
        doc = doc.replace(b'-"Infinity"', b'"-Infinity"')
    numbers: list[float] = _FLOATS.decode(doc)
    return numbers


def member_columns(members: list[bytes], joined: bytes) -> tuple[IntArray, FloatArray]:
    """`query.reader._member_columns` of members not all binary (`joined`: the members
    joined, which the reader has made already): text members, or both formats in one
    range after an upgrade. A member without a step reads as NO_STEP."""
    if _TAG not in joined:  # text only: one JSON parse of every number
        try:
            numbers = member_numbers(members)
        except msgspec.DecodeError:  # a member without a step ("|seq|value")
            pass
        else:
            return np.array(numbers[0::3], np.int64), _array(numbers[2::3])
    # Mixed formats (or text points without a step): one member at a time. A range the
    # sink replayed across the upgrade holds a point in both formats: it is read once.
    parsed = list(map(parse_series_member, members))
    binary = {p[:2] for p, m in zip(parsed, members, strict=True) if is_packed_member(m)}
    steps_list: list[int] = []
    values_list: list[float] = []
    for point, member in zip(parsed, members, strict=True):
        step, seq, value = point
        if (step, seq) in binary and not is_packed_member(member):
            continue
        steps_list.append(NO_STEP if step is None else step)
        values_list.append(value)
    return np.array(steps_list, np.int64), _array(values_list)


def _rolling_document(window: str, mapping: Mapping[bytes, bytes]) -> bytes:
    """One window hash (fields ``rank|metric``, JSON stats bodies) as a JSON array of
    rows, by C-level joins, a replace and a split: no Python per row. Fields and bodies
    were validated at write time; metric and window names hold no character JSON would
    need to escape, and no "|" or NUL (stepstream.keys)."""
    tail = b'","window":"%s","stats":' % window.encode()
    # Field i becomes '},{"rank":R,"metric":"M","window":"W","stats":' (no "}," first)
    fields = (tail + b'\x00},{"rank":').join(mapping).replace(b"|", b',"metric":"')
    heads = (b'[{"rank":' + fields + tail).split(b"\x00")
    # ... and is followed by its body: interleaved by slice assignment, joined once.
    parts: list[bytes] = heads * 2
    parts[0::2] = heads
    parts[1::2] = mapping.values()
    parts.append(b"}]")
    return b"".join(parts)


def rolling_rows_by_field(window: str, mapping: Mapping[Any, Any]) -> list[RollingRow]:
    """The rows of one window hash (HGETALL) that holds values an earlier release wrote:
    JSON-object stats, whose rank and metric are only in their field (`_rolling_document`),
    beside values written since; sorted by rank, metric."""
    if isinstance(next(iter(mapping)), str):  # decode_responses=True
        mapping = {k.encode(): v.encode() for k, v in mapping.items()}
    current = [v for v in mapping.values() if v[:1] == b"["]
    found: list[RollingRow] = _ROWS.decode(b"[" + b",".join(current) + b"]")
    earlier = {f: v for f, v in mapping.items() if v[:1] != b"["}
    found.extend(
        RollingRow(r.rank, r.metric, r.window, RollingStats.model_validate(r.stats))
        for r in _OPEN_ROWS.decode(_rolling_document(window, earlier))
    )
    return _sorted_rows(found)
