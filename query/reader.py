"""The query API: typed reads of what the sink wrote to Redis.

Results are pydantic models, except the large ones (rolling rows, series points), which
are msgspec Structs decoded by one C call: the data was validated on its way in, and
building thousands of pydantic models was most of those reads. Their pydantic mirrors
(`query.schemas`) document the HTTP API; `to_json` writes any result as pydantic would.
Non-finite values stay floats in Python and become ``"NaN"``/``"Infinity"`` strings in
JSON, like on the wire.
"""

from __future__ import annotations

import bisect
import gc
import json
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import repeat, starmap
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field

from query import schemas
from query.downsample import Method, select
from stepstream import vocabulary as vocab
from stepstream.contract import (
    WINDOW_STATS_NUMBERS,
    Alert,
    Goodput,
    window_stats_types,
)
from stepstream.errors import ConfigError
from stepstream.keys import (
    GOODPUT_FIELD,
    SERIES_COARSE,
    SERIES_INT_OFFSET,
    SERIES_MEMBER_FIELDS,
    SERIES_MEMBER_SIZE,
    SERIES_MEMBER_TAG,
    SERIES_STEP,
    SERIES_TIME,
    STORED_WINDOW_STATS,
    RedisKeys,
    is_packed_member,
    parse_series_field,
    parse_series_member,
)
from stepstream.redis_client import sync_client
from stepstream.window_values import (
    NONE_FLOAT,
    PACKED_STATS,
    is_packed,
    none_mask,
    unpack_window_values,
)

if TYPE_CHECKING:
    from stepstream.settings import Settings


class QueryModel(BaseModel):
    """Base of query results: JSON carries non-finite floats as strings."""

    model_config = ConfigDict(ser_json_inf_nan="strings")


class RunInfo(QueryModel):
    """A run in the registry."""

    run: str
    last_activity: float
    world: int | None = None
    state: str = Field(
        "starting",
        description="starting, running, finished (every rank closed) or crashed: "
        "`stepstream.vocabulary.run_state` of the ranks' heartbeat statuses.",
    )


class RankLiveness(QueryModel):
    """The latest thing heard from one rank, and whether that is recent enough."""

    rank: int
    node: str = ""
    step: int | None = None
    t: float = Field(0.0, description="Event time of the rank's latest update (Unix s).")
    age_s: float | None = Field(None, description="Seconds since t, at query time.")
    alive: bool | None = Field(None, description="age_s <= the stale_after_s of the query.")
    status: str | None = Field(
        None,
        description="Lifecycle status of its newest heartbeat: starting, running, "
        "closing (closed cleanly: finished, never dead) or crashed.",
    )


class RunMeta(QueryModel):
    """What is stored about one run."""

    run: str
    world: int | None = None
    last_t: float | None = None
    windows: list[str] = Field(default_factory=list)
    series: list[str] = Field(default_factory=list, description="rank|metric of raw series.")
    ranks: list[RankLiveness] = Field(default_factory=list)
    ttl_s: int | None = Field(None, description="Seconds until the run's keys expire.")
    state: str = Field("starting", description="As `RunInfo.state`.")


_NON_FINITE = ("NaN", "Infinity", "-Infinity")


#: The stats a window value holds by position (`STORED_WINDOW_STATS`): their names,
#: types and defaults, from the contract's WindowStats.
_STORED_TYPES = window_stats_types()[: len(STORED_WINDOW_STATS)]

#: RollingStats' fields: the stored ones, then the extras. Typed Any: a class made at
#: run time is no type to mypy; `RollingStats` below is the name to use.
_RollingStatsFields: Any = msgspec.defstruct(
    "_RollingStatsFields",
    [*_STORED_TYPES, ("model_extra", dict[str, Any] | None, None)],
    array_like=True,
    gc=False,
    module=__name__,
)


class RollingStats(_RollingStatsFields):
    """WindowStats as stored: the fields of `stepstream.contract.WindowStats` that a
    window value holds by position (`stepstream.keys.STORED_WINDOW_STATS`), derived from
    it; the other stats (a newer processor's, or one the contract gained since the
    layout) are kept in `model_extra` and read as attributes (``stats.p999``), as with
    pydantic's ``extra="allow"``. Decoded by position from the stored value
    (`array_like`); its JSON (`to_json`) is an object, as the pydantic mirror's."""

    def __getattr__(self, name: str) -> Any:
        extra = self.model_extra
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def model_validate(cls, data: Mapping[str, Any]) -> RollingStats:
        """Stats from a mapping as stored: known fields converted as pydantic's lax mode
        does (``"NaN"`` is a float), the other keys kept as they are in `model_extra`."""
        known = {k: v for k, v in data.items() if k in _STAT_FIELDS}
        extra = {k: v for k, v in data.items() if k not in _STAT_FIELDS}
        by_name = msgspec.convert(known, _StatsByName, strict=False)
        return cls(*msgspec.structs.astuple(by_name), extra or None)

    def numbers(self) -> dict[str, float]:
        """Every numeric stat, known and extra, in field order; None values left out."""
        out: dict[str, float] = {}
        for name in WINDOW_STATS_NUMBERS:
            value = getattr(self, name, None)  # beyond the stored ones: an extra, if any
            if value is not None:
                out[name] = float(value)
        for name, value in (self.model_extra or {}).items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric or (isinstance(value, str) and value in _NON_FINITE):
                out[name] = float(value)
        return out


_STAT_FIELDS = frozenset(STORED_WINDOW_STATS)

#: RollingStats' known fields by name: stats stored as a JSON object (releases before
#: the positional values) and `RollingStats.model_validate` convert through it.
_StatsByName = msgspec.defstruct(
    "_StatsByName", _STORED_TYPES, gc=False, forbid_unknown_fields=True
)


class RollingRow(msgspec.Struct, array_like=True, gc=False):
    """Rolling stats of one (rank, metric) over one window; decoded from a stored window
    value by position (`stepstream.keys.window_stats_value`), JSON as an object."""

    rank: int
    metric: str
    window: str
    stats: RollingStats


class CrossRankRow(QueryModel):
    """One metric across the ranks of a run at the newest finished step."""

    metric: str
    step: int
    t: float = Field(description="Event time of the step (Unix s).")
    ranks: int = Field(description="Ranks that reported the metric at that step.")
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    std: float | None = None
    argmin: int | None = Field(None, description="Rank with the lowest value.")
    argmax: int | None = Field(None, description="Rank with the highest value.")
    combined: float | None = Field(
        None,
        description="The job's value of a gradient norm (global or per layer): what "
        "torch.nn.utils.clip_grad_norm_ returns, added up from the ranks' shards under "
        "FSDP2, tensor or pipeline parallelism; None for other metrics.",
    )


class QualityRow(QueryModel):
    """A run-level quality metric (summed over ranks) over one window."""

    window: str
    metric: str
    stats: schemas.RollingStats


class LatestValue(QueryModel):
    """The latest value of one (rank, metric)."""

    rank: int
    metric: str
    value: float


class SeriesPoint(msgspec.Struct, gc=False):
    """One point of a raw series: x is the step (by step) or event time in s (by time);
    t the event time (Unix s), where it was fetched."""

    x: float
    value: float
    step: int | None = None
    t: float | None = None


class SeriesResult(msgspec.Struct, gc=False):
    """A range of one series, downsampled for plotting when asked: `stored` points were
    in the range before downsampling; by step, points before `decimated_before` come
    from the decimated series."""

    run: str
    rank: int
    metric: str
    by: Literal["step", "time"]
    points: list[SeriesPoint]
    stored: int
    method: str = "none"
    decimated_before: float | None = None


_ROWS = msgspec.json.Decoder(list[RollingRow], strict=False)
_RANK = attrgetter("rank")
_METRIC = attrgetter("metric")
_X = attrgetter("x")
_VALUE = attrgetter("value")


def to_json(data: Any) -> bytes:
    """JSON of a query result (a model, a Struct, or a list of them) exactly as pydantic
    writes it (`query.schemas`): non-finite floats as ``"NaN"``/``"Infinity"`` strings,
    stats as objects with extra stats after the known ones."""
    if isinstance(data, BaseModel):
        return data.model_dump_json().encode()
    if isinstance(data, list) and data and isinstance(data[0], BaseModel):
        return b"[" + b",".join(m.model_dump_json().encode() for m in data) + b"]"
    if isinstance(data, list) and data and isinstance(data[0], RollingRow):
        plain: Any = list(map(_row_object, data))
    elif isinstance(data, RollingRow):
        plain = _row_object(data)
    elif isinstance(data, RollingStats):
        plain = _stats_object(data)
    else:
        plain = msgspec.to_builtins(data)
    return pydantic_core.to_json(plain, inf_nan_mode="strings")


_STATS_NAMES = RollingStats.__struct_fields__


def _stats_object(stats: RollingStats) -> dict[str, Any]:
    out = dict(zip(_STATS_NAMES, msgspec.structs.astuple(stats), strict=True))
    extra = out.pop("model_extra")
    if extra:
        out.update(extra)
    return out


def _row_object(row: RollingRow) -> dict[str, Any]:
    return {
        "rank": row.rank,
        "metric": row.metric,
        "window": row.window,
        "stats": _stats_object(row.stats),
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
_MEMBER_DTYPE = np.dtype(list(SERIES_MEMBER_FIELDS))
_INT_OFFSET = np.uint64(SERIES_INT_OFFSET)
_TAG = bytes([SERIES_MEMBER_TAG])
NO_STEP = np.iinfo(np.int64).min
"""The step `_member_columns` gives a point logged without a step."""


def _member_columns(members: list[bytes]) -> tuple[IntArray, FloatArray]:
    """Steps and values of series members, in the order given, whatever their format
    (stepstream.keys: binary, or text written by an earlier release; one sorted set can
    hold both after an upgrade). All binary, the common case: one join and one
    ``numpy.frombuffer``, values bit for bit. A member without a step reads as NO_STEP."""
    n = len(members)
    if not n:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    if isinstance(members[0], str):  # decode_responses=True: text members only
        members = [m.encode() for m in members]
    joined = b"".join(members)
    if len(joined) == n * SERIES_MEMBER_SIZE and joined[::SERIES_MEMBER_SIZE].count(_TAG) == n:
        # Every member is binary: a text member never holds the tag byte, and the first
        # one would start at a multiple of the size, where the tag is checked.
        packed = np.frombuffer(joined, _MEMBER_DTYPE)
        steps = (packed["step"] ^ _INT_OFFSET).view(np.int64)
        return steps, packed["value"].astype(np.float64)
    # Text written by an earlier release, alone or beside binary members.
    from query import legacy  # imported on first use: a cycle, and off the hot path

    return legacy.member_columns(members, joined)


def _step_columns(members: list[bytes]) -> tuple[list[int], list[float]]:
    """Steps and values of the members of a series by step, as Python lists."""
    steps, values = _member_columns(members)
    return steps.tolist(), values.tolist()


def _rolling_rows(values: list[Any]) -> list[RollingRow] | None:
    """The rows of one window hash from its values alone (HVALS), sorted by rank, metric;
    None when some value was stored by an earlier release (`query.legacy`).

    Values hold their whole row (`stepstream.keys.window_stats_value`): joined into one
    JSON array, they decode in one msgspec call, with no Python per row but the sort."""
    if isinstance(values[0], str):  # decode_responses=True
        values = [v.encode() for v in values]
    try:
        found = _ROWS.decode(b"[" + b",".join(values) + b"]")
    except msgspec.ValidationError:  # a JSON object: stats stored by an earlier release
        return None
    return _sorted_rows(found)


def _sorted_rows(found: list[RollingRow]) -> list[RollingRow]:
    # Rows come in hash order: two stable sorts on C-level keys, each compared by a
    # type-specific fast path (a tuple key compares in generic Python).
    found.sort(key=_METRIC)
    found.sort(key=_RANK)
    return found


def _stat_float(value: float | None) -> float:
    """A stat of a JSON row as a packed column holds it: None is the NONE_BITS NaN."""
    return NONE_FLOAT if value is None else float(value)


class _Packed(NamedTuple):
    """The packed values of one window hash, decoded: rank, metric name index, stats."""

    rank: IntArray
    names: list[str]
    name_index: IntArray  # per row, into `names`
    stats: FloatArray


def _packed_part(records: Any, table: Mapping[int, str]) -> _Packed:
    """Packed records with their metric codes resolved through the run's code table.
    A code the table does not name (its field not yet written) is left out: the sink
    writes the table with every flush that writes values."""
    uniq, inverse = np.unique(records["code"], return_inverse=True)
    found = [table.get(c) for c in uniq.tolist()]
    if None in found:
        named = np.fromiter((n is not None for n in found), bool, len(found))
        keep = named[inverse]
        records, inverse = records[keep], inverse[keep]
        remap = np.cumsum(named) - 1
        inverse = remap[inverse]
        found = [n for n in found if n is not None]
    return _Packed(
        records["rank"].astype(np.int64),
        [str(n) for n in found],
        inverse.astype(np.int64),
        np.ascontiguousarray(records["stats"]),
    )


def _split_window(values: list[bytes]) -> tuple[Any, list[bytes]]:
    """(packed records, JSON rows) of one window hash's values: one frombuffer when every
    value is packed, the usual case (a JSON row holds open flags or extra stats)."""
    if isinstance(values[0], str):  # decode_responses=True: JSON rows only
        return unpack_window_values([]), values
    records = unpack_window_values(values)
    if records is not None:
        return records, []
    packed = [v for v in values if is_packed(v)]
    rest = [v for v in values if not is_packed(v)]
    return unpack_window_values(packed), rest


def _name_order(names: list[str]) -> IntArray:
    """Each name's position among the names sorted: codes that sort as the names do."""
    order = np.empty(len(names), np.int64)
    order[np.argsort(np.array(names, dtype=object))] = np.arange(len(names))
    return order


def _packed_rows(part: _Packed, window: str) -> list[RollingRow]:
    """Rows of packed values sorted by rank, metric, built by C-level maps over columns
    (no Python loop per row): half the time of building each row's stats list."""
    n = len(part.rank)
    if n == 0:
        return []
    # Sort on the columns: metric names in order, then ranks.
    order = np.lexsort((_name_order(part.names)[part.name_index], part.rank))
    stats = part.stats[order]
    missing = none_mask(stats)
    gaps: npt.NDArray[np.bool_] = np.asarray(missing.any(axis=0))
    columns = [stats[:, 0].astype(np.int64).tolist(), stats[:, 1].astype(np.int64).tolist()]
    for j in range(2, len(PACKED_STATS)):
        if gaps[j]:
            column = stats[:, j].astype(object)
            column[missing[:, j]] = None
            columns.append(column.tolist())
        else:
            columns.append(stats[:, j].tolist())
    metric = np.array(part.names, dtype=object)[part.name_index[order]].tolist()
    rows = starmap(RollingStats, zip(*columns, strict=True))
    return list(map(RollingRow, part.rank[order].tolist(), metric, repeat(window, n), rows))


@contextmanager
def _no_gc_pause() -> Iterator[None]:
    """Hold the cyclic GC while a read builds thousands of acyclic objects (floats, dicts,
    models): a collection triggered mid-parse was most of the p99 of large reads. Restores
    the caller's setting."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Columns(msgspec.Struct, frozen=True):
    """A run's series as numpy columns (`MetricsReader.columns`): one row per stored
    point; `metric` holds codes into `metrics` (no Python string per row)."""

    run: str
    metrics: tuple[str, ...]
    step: Any  # IntArray
    rank: Any  # IntArray
    metric: Any  # int32 codes into `metrics`
    value: Any  # FloatArray
    t: Any = None  # FloatArray of event times (by="time"), else None

    def __len__(self) -> int:
        return len(self.step)

    def names(self) -> list[str]:
        """The metric name of every row (Python strings: for small results and tests)."""
        return [self.metrics[i] for i in self.metric.tolist()]


class RollingColumns(msgspec.Struct, frozen=True):
    """Rolling stats of one window of a run as numpy columns
    (`MetricsReader.rolling_columns`): one row per (rank, metric), sorted by rank then
    metric; `metric` holds codes into `metrics`, `stats` is a float64 matrix with a column
    per name of `stat_names` (count and nonfinite too, exact as floats). A stat not
    computed (``std`` of one value) is NaN, as is a NaN stat (`computed` tells them
    apart). No Python object is made per row."""

    run: str
    window: str
    metrics: tuple[str, ...]
    rank: Any  # IntArray
    metric: Any  # int32 codes into `metrics`
    stats: Any  # FloatArray, shape (rows, len(stat_names))
    flags: dict[int, list[str]] = msgspec.field(default_factory=dict)
    """Row -> the detectors whose episode on that series is open (few rows have any)."""
    stat_names: tuple[str, ...] = PACKED_STATS

    def __len__(self) -> int:
        return len(self.rank)

    def column(self, stat: str) -> Any:
        """One stat's column (a view), e.g. ``cols.column("mean")``."""
        return self.stats[:, self.stat_names.index(stat)]

    @property
    def computed(self) -> Any:
        """Where a stat was computed (False where it is None in the rows API)."""
        return ~none_mask(self.stats)

    def names(self) -> list[str]:
        """The metric name of every row (Python strings: for small results and tests)."""
        return [self.metrics[i] for i in self.metric.tolist()]


class ModelInfo(QueryModel):
    """A served model: its name, last prediction time and versions (newest first)."""

    model: str
    last_t: float
    versions: list[str]


class ModelDrift(QueryModel):
    """Drift of one model version (see `MetricsReader.drift`)."""

    model: str
    version: str | None
    latest: dict[str, Any] | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    firing: list[str] = Field(default_factory=list)


class ModelPerformance(QueryModel):
    """Model and user metrics of one model version (see `MetricsReader.performance`)."""

    model: str
    version: str | None
    segment: str
    total: dict[str, Any] | None = None
    windows: list[dict[str, Any]] = Field(default_factory=list)
    segments: list[str] = Field(default_factory=list)
    outcomes: dict[str, int] = Field(default_factory=dict)


class MetricsReader:
    """Reads runs, rolling stats, latest values, series and alerts of the Redis store.

    With `retention_s` (the sink's ``STEPSTREAM_RETENTION_S``), `runs` lists only runs
    active within it: the sink drops older ones from the registry only when it writes.
    """

    def __init__(
        self, client: Any, keys: RedisKeys | None = None, retention_s: float | None = None
    ) -> None:
        encoder = getattr(client, "get_encoder", None)
        if encoder is not None and encoder().decode_responses:
            # Series members are packed bytes: a decoding client fails on them mid-read.
            raise ConfigError(
                "MetricsReader needs a redis-py client made with decode_responses=False "
                "(the default; MetricsReader.from_url makes one): series are stored as bytes"
            )
        self._client = client
        self.keys = keys or RedisKeys()
        self.retention_s = retention_s

    @classmethod
    def from_url(
        cls,
        url: str,
        key_prefix: str = "stepstream",
        cluster: bool = False,
        retention_s: float | None = None,
    ) -> MetricsReader:
        """A reader over a Redis URL (``redis://``, ``rediss://``, user:password@ for ACL)."""
        return cls(sync_client(url, cluster), RedisKeys(key_prefix), retention_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> MetricsReader:
        """A reader with the URL, key prefix, cluster mode and retention of `settings`."""
        return cls.from_url(
            settings.redis_url, settings.key_prefix, settings.redis_cluster, settings.retention_s
        )

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()

    def __enter__(self) -> MetricsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def runs(self, now: float | None = None) -> list[RunInfo]:
        """Every run, most recently active first; with `retention_s`, only those whose
        last activity is at or after `now` (default: the time) minus the retention."""
        low: float | str = "-inf"
        if self.retention_s is not None:
            low = (time.time() if now is None else now) - self.retention_s
        entries = self._client.zrange(
            self.keys.runs(), "+inf", low, desc=True, byscore=True, withscores=True
        )
        runs = [_text(m) for m, _ in entries]
        pipe = self._client.pipeline(transaction=False)
        for run in runs:
            pipe.hget(self.keys.meta(run), "world")
            pipe.hgetall(self.keys.ranks(run))
        replies = pipe.execute() if runs else []
        out = []
        for i, (run, (_, score)) in enumerate(zip(runs, entries, strict=True)):
            world = int(replies[2 * i]) if replies[2 * i] else None
            statuses = {
                int(_text(r)): json.loads(body).get("status")
                for r, body in replies[2 * i + 1].items()
            }
            out.append(
                RunInfo(
                    run=run,
                    last_activity=score,
                    world=world,
                    state=vocab.run_state(statuses, world),
                )
            )
        return out

    def run_meta(self, run: str, stale_after_s: float = 30.0) -> RunMeta:
        """Metadata, windows, stored series and rank liveness of one run."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(self.keys.meta(run))
        pipe.smembers(self.keys.windows_index(run))
        pipe.smembers(self.keys.series_index(run))
        pipe.ttl(self.keys.meta(run))
        meta, windows, series, ttl = pipe.execute()
        meta = {_text(k): _text(v) for k, v in meta.items()}
        world = int(meta["world"]) if "world" in meta else None
        ranks = self.ranks(run, stale_after_s)
        return RunMeta(
            run=run,
            world=world,
            last_t=float(meta["last_t"]) if "last_t" in meta else None,
            windows=sorted(_text(w) for w in windows),
            series=sorted((_text(s) for s in series), key=parse_series_field),
            ranks=ranks,
            ttl_s=ttl if ttl is not None and ttl >= 0 else None,
            state=vocab.run_state({r.rank: r.status for r in ranks}, world),
        )

    def windows(self, run: str) -> list[str]:
        """The window names a run has stats for."""
        return sorted(_text(w) for w in self._client.smembers(self.keys.windows_index(run)))

    def _window_values(self, run: str, names: list[str]) -> tuple[list[Any], dict[int, str]]:
        """HVALS of each window hash, and the run's metric code table, in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            # Values only: each holds its row, and HGETALL's fields cost twice the reply.
            pipe.hvals(self.keys.window(run, name))
        pipe.hgetall(self.keys.metric_codes(run))
        *replies, codes = pipe.execute()
        table = {int(k, 16): _text(v) for k, v in codes.items()}
        return replies, table

    def _json_rows(self, run: str, window: str, values: list[bytes]) -> list[RollingRow]:
        """Rows stored as JSON (open flags, extra stats, or an earlier release's)."""
        found = _rolling_rows(values)
        if found is None:  # values of an earlier release: read with their fields
            from query import legacy  # imported on first use: see _member_columns

            mapping = self._client.hgetall(self.keys.window(run, window))
            mapping = {f: v for f, v in mapping.items() if not is_packed(v)}
            found = legacy.rolling_rows_by_field(window, mapping) if mapping else []
        return found

    def rolling(self, run: str, window: str | None = None) -> list[RollingRow]:
        """Rolling stats of every (rank, metric) of a run, sorted by window, rank, metric.
        For a large window, `rolling_columns` reads the same as numpy columns."""
        names = [window] if window else self.windows(run)
        if not names:
            return []
        replies, table = self._window_values(run, names)
        rows: list[RollingRow] = []
        with _no_gc_pause():
            for name, values in zip(names, replies, strict=True):
                if not values:
                    continue
                records, rest = _split_window(values)
                found = _packed_rows(_packed_part(records, table), name) if len(records) else []
                if rest:  # JSON rows too: sort them in
                    found = _sorted_rows(found + self._json_rows(run, name, rest))
                rows.extend(found)  # names are sorted
        return rows

    def rolling_columns(self, run: str, window: str) -> RollingColumns:
        """Rolling stats of one window of a run as numpy columns, sorted by rank then
        metric: the columnar read of `rolling`, with no Python object per row (a window of
        thousands of ranks). Stats beyond `RollingColumns.stat_names` (a newer
        processor's extras) are in `rolling` only."""
        (values,), table = self._window_values(run, [window])
        empty = np.empty(0, np.int64)
        if not values:
            return RollingColumns(
                run, window, (), empty, empty.astype(np.int32), np.empty((0, len(PACKED_STATS)))
            )
        records, rest = _split_window(values)
        part = _packed_part(records, table)
        ranks, names, index, stats = part.rank, part.names, part.name_index, part.stats
        flags: dict[int, list[str]] = {}
        if rest:
            json_rows = self._json_rows(run, window, rest)
            extra_names = [r.metric for r in json_rows]
            names_all = sorted(set(names) | set(extra_names))
            where = {m: i for i, m in enumerate(names_all)}
            remap = np.fromiter((where[m] for m in names), np.int64, len(names))
            index = np.concatenate(
                (remap[index], np.fromiter((where[m] for m in extra_names), np.int64))
            )
            ranks = np.concatenate((ranks, np.fromiter((r.rank for r in json_rows), np.int64)))
            json_stats = np.array(
                [[_stat_float(getattr(r.stats, s)) for s in PACKED_STATS] for r in json_rows],
                np.float64,
            ).reshape(len(json_rows), len(PACKED_STATS))
            stats = np.concatenate((stats, json_stats))
            flagged = {len(part.rank) + i: r.stats.flags for i, r in enumerate(json_rows)}
            names = names_all
        else:
            flagged = {}
        # Codes in name order, so that sorting by code sorts by name.
        metric = _name_order(names)[index].astype(np.int32)
        order = np.lexsort((metric, ranks))
        position = np.empty(len(order), np.int64)
        position[order] = np.arange(len(order))
        for row, found in flagged.items():
            if found:
                flags[int(position[row])] = list(found)
        return RollingColumns(
            run,
            window,
            tuple(sorted(names)),
            ranks[order],
            metric[order],
            stats[order],
            flags,
        )

    def goodput(self, run: str) -> Goodput | None:
        """The run's live goodput (effective training time ratio, badput by cause, the
        slowest ranks' share), as of its newest finished step; None before any."""
        body = self._client.hget(self.keys.goodput(run), GOODPUT_FIELD)
        return Goodput.model_validate_json(body) if body else None

    def crossrank(self, run: str) -> list[CrossRankRow]:
        """Every metric across the ranks of a run at its newest finished step, by metric
        (the metrics of `STEPSTREAM_CROSSRANK_METRICS`)."""
        mapping = self._client.hgetall(self.keys.crossrank(run))
        rows = [
            CrossRankRow.model_validate({"metric": _text(m), **json.loads(body)})
            for m, body in mapping.items()
        ]
        return sorted(rows, key=lambda r: r.metric)

    def quality(self, run: str) -> list[QualityRow]:
        """Run-level quality metrics (examples summed over ranks) by window and metric."""
        mapping = self._client.hgetall(self.keys.quality(run))
        rows = []
        for field, body in mapping.items():
            window, _, metric = _text(field).partition("|")
            stats = schemas.RollingStats.model_validate_json(body)
            rows.append(QualityRow(window=window, metric=metric, stats=stats))
        return sorted(rows, key=lambda r: (r.window, r.metric))

    def latest(self, run: str) -> dict[tuple[int, str], float]:
        """Latest value of every (rank, metric) of a run."""
        mapping = self._client.hgetall(self.keys.latest(run))
        return {parse_series_field(_text(f)): float(_text(v)) for f, v in mapping.items()}

    def latest_values(self, run: str) -> list[LatestValue]:
        """Latest value of every (rank, metric) of a run, as rows sorted by rank, metric."""
        return [
            LatestValue(rank=rank, metric=metric, value=value)
            for (rank, metric), value in sorted(self.latest(run).items())
        ]

    def ranks(self, run: str, stale_after_s: float | None = None) -> list[RankLiveness]:
        """Liveness of every rank of a run, by rank; `alive` is set when stale_after_s is."""
        mapping = self._client.hgetall(self.keys.ranks(run))
        now = time.time()
        out = []
        for r, body in mapping.items():
            live = RankLiveness(rank=int(_text(r)), **json.loads(body))
            if stale_after_s is not None:
                live.age_s = max(0.0, now - live.t)
                live.alive = live.age_s <= stale_after_s
            out.append(live)
        return sorted(out, key=lambda r: r.rank)

    def series_names(self, run: str) -> list[tuple[int, str]]:
        """(rank, metric) of every raw series stored for a run."""
        members = self._client.smembers(self.keys.series_index(run))
        return sorted(parse_series_field(_text(m)) for m in members)

    def _step_points(
        self, run: str, metric: str, rank: int, lo: float | str, hi: float | str
    ) -> tuple[IntArray, FloatArray, float | None]:
        """Steps and values in [lo, hi] by step: every stored raw point, and before the
        oldest of those the decimated ones; and the step where decimation ends (or None)."""
        pipe = self._client.pipeline(transaction=False)
        step_key = self.keys.series(run, SERIES_STEP, rank, metric)
        coarse_key = self.keys.series(run, SERIES_COARSE, rank, metric)
        pipe.zrange(step_key, lo, hi, byscore=True)
        pipe.zrange(step_key, 0, 0, withscores=True)
        pipe.zrange(coarse_key, 0, 0, withscores=True)
        raw, first, coarse_first = pipe.execute()
        oldest_raw = first[0][1] if first else math.inf
        steps, values = _member_columns(raw)
        # The coarse series only fills the range before the oldest raw point, so it is
        # fetched (a second round trip) only when it holds older points and the range
        # reaches back there: a read of the recent past no longer parses all of it.
        reaches_back = lo == "-inf" or float(lo) < oldest_raw
        if coarse_first and coarse_first[0][1] < oldest_raw and reaches_back:
            top: float | str = hi
            if oldest_raw != math.inf and (hi == "+inf" or float(hi) >= oldest_raw):
                top = f"({oldest_raw!r}"
            old_steps, old_values = _member_columns(
                self._client.zrange(coarse_key, lo, top, byscore=True)
            )
            # Both series are sorted by step.
            older = int(np.searchsorted(old_steps, oldest_raw, "left"))
            if older:
                steps = np.concatenate((old_steps[:older], steps))
                values = np.concatenate((old_values[:older], values))
                return steps, values, oldest_raw
        return steps, values, None

    def series(
        self,
        run: str,
        metric: str,
        rank: int = 0,
        from_step: int | None = None,
        to_step: int | None = None,
        points: int | None = None,
        method: Method = "lttb",
    ) -> SeriesResult:
        """A series by step in [from_step, to_step]. Steps older than the newest
        `series_max_points` come from the decimated series (one in N steps)."""
        lo = "-inf" if from_step is None else from_step
        hi = "+inf" if to_step is None else to_step
        with _no_gc_pause():
            steps, values, decimated_before = self._step_points(run, metric, rank, lo, hi)
            stored = len(steps)
            xs = steps.astype(np.float64)
            if points and stored > points:
                keep = select(xs, values, points, method)
                steps, values, xs = steps[keep], values[keep], xs[keep]
            return SeriesResult(
                run=run,
                rank=rank,
                metric=metric,
                by="step",
                stored=stored,
                points=list(map(SeriesPoint, xs.tolist(), values.tolist(), steps.tolist())),
                method=method if points and len(steps) < stored else "none",
                decimated_before=decimated_before,
            )

    def _timed_points(
        self, run: str, metric: str, rank: int, lo: float | str, hi: float | str
    ) -> list[SeriesPoint]:
        """Points with event time (ms) in [lo, hi]: stepped ones through the rank's time
        index, step-less ones from the by-time series; sorted by time."""
        pipe = self._client.pipeline(transaction=False)
        pipe.zrange(self.keys.time_index(run, rank), lo, hi, byscore=True, withscores=True)
        pipe.zrange(
            self.keys.series(run, SERIES_TIME, rank, metric), lo, hi, byscore=True, withscores=True
        )
        index, stepless = pipe.execute()
        out = []
        if index:
            times = {int(_text(m)): score / 1000.0 for m, score in index}
            steps, values, _ = self._step_points(run, metric, rank, min(times), max(times))
            for step, value in zip(steps.tolist(), values.tolist(), strict=True):
                t = times.get(step)
                if t is not None:
                    out.append(SeriesPoint(t, value, step, t))
        # A point replayed across the upgrade is there as text and binary: read once.
        binary = {parse_series_member(m)[1] for m, _ in stepless if is_packed_member(m)}
        for member, score in stepless:
            _, seq, value = parse_series_member(member)
            if seq in binary and not is_packed_member(member):
                continue
            out.append(SeriesPoint(x=score / 1000.0, value=value, t=score / 1000.0))
        out.sort(key=_X)
        return out

    def series_by_time(
        self,
        run: str,
        metric: str,
        rank: int = 0,
        from_t: float | None = None,
        to_t: float | None = None,
        points: int | None = None,
        method: Method = "lttb",
    ) -> SeriesResult:
        """A series by event time (Unix seconds) in [from_t, to_t]."""
        lo = "-inf" if from_t is None else from_t * 1000.0
        hi = "+inf" if to_t is None else to_t * 1000.0
        with _no_gc_pause():
            timed = self._timed_points(run, metric, rank, lo, hi)
            if points and len(timed) > points:
                xs = np.fromiter(map(_X, timed), np.float64, len(timed))
                ys = np.fromiter(map(_VALUE, timed), np.float64, len(timed))
                timed_kept = list(map(timed.__getitem__, select(xs, ys, points, method)))
            else:
                timed_kept = timed
        return SeriesResult(
            decimated_before=None,
            run=run,
            rank=rank,
            metric=metric,
            by="time",
            stored=len(timed),
            points=timed_kept,
            method=method if len(timed_kept) < len(timed) else "none",
        )

    def raw_points(self, run: str, metric: str, rank: int = 0) -> list[SeriesPoint]:
        """Every stored point of a series with its step and event time (where known), by
        step (decimated older points included), then step-less points by time: exports."""
        steps, values, _ = self._step_points(run, metric, rank, "-inf", "+inf")
        index = self._client.zrange(self.keys.time_index(run, rank), 0, -1, withscores=True)
        times = {int(_text(m)): score / 1000.0 for m, score in index}
        out = [
            SeriesPoint(x=float(step), value=value, step=step, t=times.get(step))
            for step, value in zip(steps.tolist(), values.tolist(), strict=True)
        ]
        out.extend(
            p for p in self._timed_points(run, metric, rank, "-inf", "+inf") if p.step is None
        )
        return out

    def alerts(self, run: str, count: int = 100) -> list[Alert]:
        """The newest `count` alert transitions of a run, oldest first."""
        entries = self._client.xrevrange(self.keys.alerts(run), count=count)
        alerts = [Alert.model_validate_json(fields[b"alert"]) for _, fields in entries]
        return list(reversed(alerts))

    def active_alerts(self, run: str) -> list[Alert]:
        """Alerts of a run now open, oldest first: firing, and pending (a rule's condition
        holding for less than its `for`; see `Alert.status`)."""
        bodies = self._client.hvals(self.keys.active_alerts(run))
        return sorted((Alert.model_validate_json(b) for b in bodies), key=lambda a: a.t)

    # -- served models (issue 23) --------------------------------------------------

    def models(self, now: float | None = None) -> list[ModelInfo]:
        """Every served model, most recently active first, with its versions (newest
        first); with `retention_s`, only models active within it."""
        since = "-inf"
        if self.retention_s is not None:
            since = str((now if now is not None else time.time()) - self.retention_s)
        names = self._client.zrevrangebyscore(self.keys.models(), "+inf", since, withscores=True)
        out = []
        for name, score in names:
            model = _text(name)
            versions = self._client.zrevrange(self.keys.model_versions(model), 0, -1)
            out.append(ModelInfo(model=model, last_t=score, versions=[_text(v) for v in versions]))
        return out

    def _version(self, model: str, version: str | None) -> str | None:
        if version is not None:
            return version
        newest = self._client.zrevrange(self.keys.model_versions(model), 0, 0)
        return _text(newest[0]) if newest else None

    def drift(self, model: str, version: str | None = None, windows: int = 20) -> ModelDrift:
        """Drift of a model version (default: its newest) in its judged windows: the
        newest report in full (per feature: PSI, Jensen-Shannon, the calibrated
        threshold, KS and Wasserstein with their error bounds, data quality), the
        features drifted in each of the last `windows`, and the firing drift alerts."""
        found = self._version(model, version)
        if found is None:
            return ModelDrift(model=model, version=version)
        raw = self._client.hgetall(self.keys.model_drift(model, found))
        reports = sorted((json.loads(body) for body in raw.values()), key=lambda r: int(r["start"]))
        history = [
            {"start": r["start"], "predictions": r["predictions"], "drifted": r["drifted"]}
            for r in reports[-windows:]
        ]
        latest = reports[-1] if reports else None
        firing = sorted(
            {
                a.metric or ""
                for a in self.active_alerts(model)
                if a.rule in ("feature_drift", "prediction_drift")
                and a.status == "firing"  # not a user rule's pending one
                and a.labels.get("version") == found
            }
        )
        return ModelDrift(model=model, version=found, latest=latest, history=history, firing=firing)

    def performance(
        self, model: str, version: str | None = None, segment: str | None = None
    ) -> ModelPerformance:
        """Model and user metrics of a model version (default: its newest): over every
        window (`total`) and per window, for one `segment` (``country=DE``) or the model
        (the sum over its segments); plus the version's outcome counters (joined, late,
        orphan, duplicate)."""
        found = self._version(model, version)
        seg = segment or "__all__"
        if found is None:
            return ModelPerformance(model=model, version=version, segment=seg)
        raw = self._client.hgetall(self.keys.model_performance(model, found))
        windows = []
        total = None
        segments = set()
        for field, body in raw.items():
            start, _, name = _text(field).partition("|")
            segments.add(name)
            if name != seg:
                continue
            if start == "total":
                total = json.loads(body)
            else:
                windows.append({"start": int(start), **json.loads(body)})
        windows.sort(key=lambda w: w["start"])
        outcomes = {
            _text(k): int(v)
            for k, v in self._client.hgetall(self.keys.model_outcomes(model)).items()
        }
        return ModelPerformance(
            model=model,
            version=found,
            segment=seg,
            total=total,
            windows=windows,
            segments=sorted(segments - {"__all__"}),
            outcomes=outcomes,
        )

    def dump_run(self, run: str) -> dict[str, Any]:
        """Every per-run key with its type and full content (stream ids included): for
        comparisons in tests and for debugging, not for big runs."""
        out: dict[str, Any] = {}
        for key in sorted(_text(k) for k in self._scan(self.keys.run_pattern(run))):
            kind = _text(self._client.type(key))
            c = self._client
            if kind == "hash":
                value: Any = dict(sorted(c.hgetall(key).items()))
            elif kind == "zset":
                value = c.zrange(key, 0, -1, withscores=True)
            elif kind == "set":
                value = sorted(c.smembers(key))
            elif kind == "stream":
                value = c.xrange(key)
            else:
                value = c.dump(key)
            out[key] = (kind, value)
        return out

    def _scan(self, pattern: str) -> list[Any]:
        return list(self._client.scan_iter(match=pattern, count=1000))

    # --- Bulk reads for the dashboard: one round trip for many series or runs. ---

    def _step_replies(
        self,
        run: str,
        series: list[tuple[int, str]],
        from_step: int | None,
        to_step: int | None,
    ) -> list[Any]:
        """One pipeline for many (rank, metric) series: per series, its raw members in
        [from_step, to_step], its oldest raw member with score, its decimated members."""
        lo: int | str = "-inf" if from_step is None else from_step
        hi: int | str = "+inf" if to_step is None else to_step
        pipe = self._client.pipeline(transaction=False)
        for rank, metric in series:
            step_key = self.keys.series(run, SERIES_STEP, rank, metric)
            pipe.zrange(step_key, lo, hi, byscore=True)
            pipe.zrange(step_key, 0, 0, withscores=True)
            pipe.zrange(self.keys.series(run, SERIES_COARSE, rank, metric), lo, hi, byscore=True)
        return pipe.execute() if series else []

    def step_columns_many(
        self,
        run: str,
        series: list[tuple[int, str]],
        from_step: int | None = None,
        to_step: int | None = None,
    ) -> list[tuple[list[int], list[float], float | None]]:
        """Steps, values and decimation boundary of many (rank, metric) series of a run in
        [from_step, to_step], in the order asked, read in one pipeline (as `series`, not
        downsampled): a chart of 64 ranks is one round trip, not 64."""
        replies = self._step_replies(run, series, from_step, to_step)
        out: list[tuple[list[int], list[float], float | None]] = []
        with _no_gc_pause():
            for i in range(len(series)):
                raw, first, coarse = replies[3 * i : 3 * i + 3]
                oldest_raw = first[0][1] if first else math.inf
                steps, values = _step_columns(coarse)
                older = bisect.bisect_left(steps, oldest_raw)
                del steps[older:], values[older:]
                decimated_before = oldest_raw if steps else None
                raw_steps, raw_values = _step_columns(raw)
                steps.extend(raw_steps)
                values.extend(raw_values)
                out.append((steps, values, decimated_before))
        return out

    def step_arrays_many(
        self,
        run: str,
        series: list[tuple[int, str]],
        from_step: int | None = None,
        to_step: int | None = None,
    ) -> list[tuple[IntArray, FloatArray]]:
        """Steps and values of many (rank, metric) series of a run in [from_step, to_step]
        as numpy arrays (decimated points before the oldest raw one, then the raw ones),
        in one pipeline: `step_columns_many` without Python lists."""
        replies = self._step_replies(run, series, from_step, to_step)
        out: list[tuple[IntArray, FloatArray]] = []
        with _no_gc_pause():
            for i in range(len(series)):
                raw, first, coarse = replies[3 * i : 3 * i + 3]
                steps, values = _member_columns(raw)
                if coarse:
                    oldest_raw = first[0][1] if first else math.inf
                    old_steps, old_values = _member_columns(coarse)
                    older = int(np.searchsorted(old_steps, oldest_raw, "left"))
                    if older:
                        steps = np.concatenate((old_steps[:older], steps))
                        values = np.concatenate((old_values[:older], values))
                out.append((steps, values))
        return out

    def run_line(
        self,
        run: str,
        metric: str,
        rank: int | None = None,
        from_step: int | None = None,
        to_step: int | None = None,
    ) -> tuple[IntArray, FloatArray]:
        """One line of a run for comparisons: `rank`'s series, or (None) the mean over
        the ranks that logged `metric` at each step. A non-finite value on one rank makes
        that step's mean non-finite: a fault shows instead of being averaged away."""
        if rank is not None:
            return self.step_arrays_many(run, [(rank, metric)], from_step, to_step)[0]
        ranks = [r for r, m in self.series_names(run) if m == metric]
        arrays = self.step_arrays_many(run, [(r, metric) for r in ranks], from_step, to_step)
        if not arrays:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        steps = np.concatenate([a for a, _ in arrays])
        values = np.concatenate([v for _, v in arrays])
        uniq, inverse = np.unique(steps, return_inverse=True)
        sums = np.zeros(len(uniq), np.float64)
        counts = np.zeros(len(uniq), np.int64)
        np.add.at(sums, inverse, values)
        np.add.at(counts, inverse, 1)
        return uniq, sums / counts

    def columns(
        self,
        run: str,
        metrics: list[str] | None = None,
        ranks: list[int] | None = None,
        by: Literal["step", "time"] = "step",
        from_step: int | None = None,
        to_step: int | None = None,
    ) -> Columns:
        """The stored series of a run as numpy columns, one row per point (long format):
        step, rank, metric (codes into `Columns.metrics`), value, and with ``by="time"``
        the event time of the step (NaN where the rank's time index lacks it). No Python
        object is made per row: this is the columnar read path (`frame` builds a pandas
        DataFrame on it, ``stepstream export --parquet`` a Parquet file)."""
        if metrics is not None and ranks is not None:
            # Both named: no round trip to the series index (a series never stored
            # reads as no points).
            names = sorted({(r, m) for r in ranks for m in metrics})
        else:
            names = self.series_names(run)
            if metrics is not None:
                wanted_m = set(metrics)
                names = [(r, m) for r, m in names if m in wanted_m]
            if ranks is not None:
                wanted_r = set(ranks)
                names = [(r, m) for r, m in names if r in wanted_r]
        order = sorted({m for _, m in names})
        code = {m: i for i, m in enumerate(order)}
        arrays = self.step_arrays_many(run, names, from_step, to_step)
        sizes = np.fromiter((len(s) for s, _ in arrays), np.int64, len(arrays))
        empty_i = np.empty(0, np.int64)
        step = np.concatenate([s for s, _ in arrays]) if arrays else empty_i
        value = np.concatenate([v for _, v in arrays]) if arrays else np.empty(0, np.float64)
        rank = np.repeat(np.fromiter((r for r, _ in names), np.int64, len(names)), sizes)
        metric = np.repeat(np.fromiter((code[m] for _, m in names), np.int32, len(names)), sizes)
        t = None
        if by == "time":
            t = np.full(len(step), np.nan)
            rank_list = sorted({r for r, _ in names})
            pipe = self._client.pipeline(transaction=False)
            for r in rank_list:
                pipe.zrange(self.keys.time_index(run, r), 0, -1, withscores=True)
            for r, index in zip(rank_list, pipe.execute() if rank_list else [], strict=True):
                if not index:
                    continue
                idx_steps = np.fromiter((int(_text(m)) for m, _ in index), np.int64, len(index))
                idx_t = np.fromiter((sc for _, sc in index), np.float64, len(index)) / 1000.0
                sort = np.argsort(idx_steps, kind="stable")
                idx_steps, idx_t = idx_steps[sort], idx_t[sort]
                mine = rank == r
                pos = np.searchsorted(idx_steps, step[mine])
                pos = np.minimum(pos, len(idx_steps) - 1)
                found = idx_steps[pos] == step[mine]
                t[mine] = np.where(found, idx_t[pos], np.nan)
        return Columns(run, tuple(order), step, rank, metric, value, t)

    def frame(
        self,
        run: str,
        metrics: list[str] | None = None,
        ranks: list[int] | None = None,
        by: Literal["step", "time"] = "step",
        wide: bool = False,
    ) -> Any:
        """A run's series as a pandas DataFrame (needs the ``pandas`` extra): columns
        ``step`` (or ``time``, seconds since the epoch), ``rank``, ``metric`` (a
        categorical) and ``value``, sorted by metric, rank and x. ``wide=True`` pivots it
        to one row per step (or time) and a column per (metric, rank), as W&B's
        ``run.history()`` has one column per metric."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ConfigError(
                "reader.frame() needs pandas: pip install 'stepstream[pandas]' "
                "(reader.columns() gives the same data as numpy arrays)"
            ) from exc
        cols = self.columns(run, metrics, ranks, by)
        x_name = "time" if by == "time" else "step"
        x = cols.t if by == "time" else cols.step
        df = pd.DataFrame(
            {
                x_name: x,
                "rank": cols.rank,
                "metric": pd.Categorical.from_codes(cols.metric, categories=list(cols.metrics)),
                "value": cols.value,
            }
        )
        if by == "time":
            df.insert(1, "step", cols.step)
        if wide:
            return df.pivot_table(
                index=x_name, columns=["metric", "rank"], values="value", observed=True
            )
        return df

    def runs_overview(
        self, runs: list[str], clock_points: int = 20
    ) -> list[tuple[list[RankLiveness], list[Alert], list[tuple[int, float]]]]:
        """Per run, in one pipeline: rank liveness (no `alive`), alerts now firing (oldest
        first) and the newest `clock_points` (step, event time s) of rank 0's time index,
        from which a step rate follows."""
        pipe = self._client.pipeline(transaction=False)
        for run in runs:
            pipe.hgetall(self.keys.ranks(run))
            pipe.hvals(self.keys.active_alerts(run))
            pipe.zrange(self.keys.time_index(run, 0), -clock_points, -1, withscores=True)
        replies = pipe.execute() if runs else []
        out = []
        now = time.time()
        for i in range(len(runs)):
            ranks_raw, active_raw, clock_raw = replies[3 * i : 3 * i + 3]
            ranks = []
            for r, body in ranks_raw.items():
                live = RankLiveness(rank=int(_text(r)), **json.loads(body))
                live.age_s = max(0.0, now - live.t)
                ranks.append(live)
            ranks.sort(key=lambda r: r.rank)
            active = sorted((Alert.model_validate_json(b) for b in active_raw), key=lambda a: a.t)
            clock = sorted((int(_text(m)), score / 1000.0) for m, score in clock_raw)
            out.append((ranks, active, clock))
        return out

    @property
    def client(self) -> Any:
        """The redis-py client (the dashboard's silence store writes through it)."""
        return self._client
