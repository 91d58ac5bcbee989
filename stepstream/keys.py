"""The Redis key schema, defined once: the sink writes it, readers read it.

Every per-run key is ``<prefix>:{<run>}:<suffix>``. The hash tag ``{run}`` puts one run in
one Redis Cluster slot, so multi-key commands and scripts on a run work there too.

Nothing is escaped: every variable part is validated and rejected when it could reach
another key. Run ids match ``RUN_ID_PATTERN`` (no braces, colons, spaces), so the hash tag
is always the run id and a run id cannot end early or add a suffix. The key prefix may not
hold braces (it would move the hash tag). Window names match ``WINDOW_NAME_PATTERN``.
Metric names match ``METRIC_NAME_PATTERN`` (no ``|``), and series fields are
``"<rank>|<metric>"`` with an integer rank, so a series field parses back to exactly one
(rank, metric). Suffixes form disjoint namespaces (``win:``, ``series:step:`` ...), so no
accepted input makes two different things share a key. See docs/redis-schema.md.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic_core

from stepstream.contract import METRIC_NAME_PATTERN, RUN_ID_PATTERN
from stepstream.contract import WINDOW_STATS_FIELDS as WINDOW_STATS_FIELDS
from stepstream.errors import ConfigError
from stepstream.window_values import pack_window_stats

WINDOW_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Window names (``50steps``, ``10s``): safe as a key suffix."""

KEY_PREFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
"""Key prefixes: no braces, so the run's hash tag stays the first ``{...}`` of a key."""

_RUN_RE = re.compile(RUN_ID_PATTERN)
_METRIC_RE = re.compile(METRIC_NAME_PATTERN)
_WINDOW_RE = re.compile(WINDOW_NAME_PATTERN)
_PREFIX_RE = re.compile(KEY_PREFIX_PATTERN)
FIELD_SEPARATOR = "|"
MEMBER_SEPARATOR = "|"

# The three stored shapes of one raw series (see docs/redis-schema.md).
SERIES_STEP = "step"
SERIES_COARSE = "coarse"
SERIES_TIME = "time"
SERIES_KINDS = (SERIES_STEP, SERIES_COARSE, SERIES_TIME)


def check_run_id(run: str) -> str:
    """Return `run` if it is a valid run id, else raise ConfigError saying what is allowed."""
    if not isinstance(run, str) or not _RUN_RE.fullmatch(run):
        raise ConfigError(
            f"invalid run id {run!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return run


def check_metric(metric: str) -> str:
    """Return `metric` if it is a valid metric name, else raise ConfigError."""
    if not isinstance(metric, str) or not _METRIC_RE.fullmatch(metric):
        raise ConfigError(
            f"invalid metric name {metric!r}: use 1-200 letters, digits and '_./:@-' "
            "(no '|' or spaces), starting with a letter, digit or '_'"
        )
    return metric


def check_window(window: str) -> str:
    """Return `window` if it is a valid window name, else raise ConfigError."""
    if not isinstance(window, str) or not _WINDOW_RE.fullmatch(window):
        raise ConfigError(
            f"invalid window name {window!r}: use 1-64 letters, digits, '.', '_' or '-' "
            "such as 50steps or 10s"
        )
    return window


def check_rank(rank: int) -> int:
    """Return `rank` if it is a non-negative int (bools are not ranks), else ConfigError."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ConfigError(f"invalid rank {rank!r}: ranks are integers >= 0")
    return rank


#: The field of the goodput hash holding the newest `Goodput` (see `RedisKeys.goodput`).
GOODPUT_FIELD = "latest"


@dataclass(frozen=True)
class RedisKeys:
    """Builds every Redis key and channel name stepstream uses."""

    prefix: str = "stepstream"

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ConfigError(
                f"invalid key prefix {self.prefix!r}: use letters, digits and '._:-' "
                "(no braces or spaces), e.g. STEPSTREAM_KEY_PREFIX=stepstream"
            )

    def runs(self) -> str:
        """Sorted set: run id scored by its last activity (event time, Unix seconds). Not
        per run; runs idle longer than the retention leave it (`WritePlan.registry_commands`)."""
        return f"{self.prefix}:runs"

    def _run(self, run: str, suffix: str) -> str:
        return f"{self.prefix}:{{{check_run_id(run)}}}:{suffix}"

    def meta(self, run: str) -> str:
        """Hash: run metadata (world size, last event time)."""
        return self._run(run, "meta")

    def ranks(self, run: str) -> str:
        """Hash: rank -> JSON liveness (node, step, last event time)."""
        return self._run(run, "ranks")

    def latest(self, run: str) -> str:
        """Hash: ``rank|metric`` -> latest value (float text; NaN and Infinity as words)."""
        return self._run(run, "latest")

    def window(self, run: str, window: str) -> str:
        """Hash: ``rank|metric`` -> stats of one window (``50steps``, ``10s``): a packed
        value (`stepstream.window_values`) or a JSON row (`window_stats_json`)."""
        return self._run(run, f"win:{check_window(window)}")

    def metric_codes(self, run: str) -> str:
        """Hash: 16 hex digits of a `metric_code` -> the metric name: names the metrics
        of a run's packed window values."""
        return self._run(run, "mcodes")

    def crossrank(self, run: str) -> str:
        """Hash: ``m`` -> JSON stats of the metric across ranks at the newest finished
        step (step, t, ranks, mean, min, max, std, argmin, argmax)."""
        return self._run(run, "crossrank")

    def quality(self, run: str) -> str:
        """Hash: ``w|m`` -> JSON WindowStats of a run-level quality metric (summed over
        ranks) over window w."""
        return self._run(run, "quality")

    def goodput(self, run: str) -> str:
        """Hash: ``latest`` -> JSON `Goodput` of the run after its newest finished step
        (effective training time ratio, badput by cause, the slowest ranks' share)."""
        return self._run(run, "goodput")

    def windows_index(self, run: str) -> str:
        """Set: the window names a run has stats for."""
        return self._run(run, "windows")

    def alerts(self, run: str) -> str:
        """Stream: every alert transition of a run, oldest first, each stored once."""
        return self._run(run, "alerts")

    def active_alerts(self, run: str) -> str:
        """Hash: fingerprint -> JSON of each alert now firing."""
        return self._run(run, "alerts:active")

    def alerts_seen(self, run: str) -> str:
        """Hash: ``fingerprint|status|t`` -> 1 for every transition already stored (dedup)."""
        return self._run(run, "alerts:seen")

    def series_index(self, run: str) -> str:
        """Set: ``rank|metric`` of every raw series stored for a run."""
        return self._run(run, "series")

    def series(self, run: str, kind: str, rank: int, metric: str) -> str:
        """Sorted set of one raw series.

        ``step``: scored by step, the newest points, every one. ``coarse``: scored by step,
        one point in `series_decimate_every` steps, kept longer for plotting. ``time``:
        points logged without a step, scored by event time in ms, trimmed by age (points
        with a step are found by time through `time_index`). Members: see `series_member`.
        """
        if kind not in SERIES_KINDS:
            raise ConfigError(f"invalid series kind {kind!r}: use one of {SERIES_KINDS}")
        return self._run(run, f"series:{kind}:{series_field(rank, metric)}")

    def time_index(self, run: str, rank: int) -> str:
        """Sorted set: step -> event time in ms of its first record, per rank. Series by
        time of metrics logged with a step read their points by step through it."""
        return self._run(run, f"tindex:{check_rank(rank)}")

    def silences(self) -> str:
        """Hash: silence id -> JSON silence (matchers, start, end, author, comment)."""
        return f"{self.prefix}:silences"

    def alerts_channel(self, run: str) -> str:
        """Pub/sub channel receiving each alert transition of a run as JSON."""
        return f"{self.prefix}:alerts:{check_run_id(run)}"

    def alerts_channel_pattern(self) -> str:
        """Glob of every run's alerts channel (ACL ``&`` rules, PSUBSCRIBE)."""
        return f"{self.prefix}:alerts:*"

    def updates_channel(self, run: str) -> str:
        """Pub/sub channel receiving one small JSON notice per sink flush that wrote to a
        run (``{"run", "step"}``): live views fetch the new points when it arrives."""
        return f"{self.prefix}:updates:{check_run_id(run)}"

    def updates_channel_pattern(self) -> str:
        """Glob of every run's updates channel (ACL ``&`` rules, PSUBSCRIBE)."""
        return f"{self.prefix}:updates:*"

    def key_pattern(self) -> str:
        """Glob of every key stepstream writes or reads (ACL ``~`` rules). The prefix holds
        no glob characters, so it matches exactly the keys under it."""
        return f"{self.prefix}:*"

    def run_keys(self, run: str, windows: list[str]) -> list[str]:
        """Every per-run key except the raw series keys, for TTL refresh and cleanup."""
        keys = [
            self.meta(run),
            self.ranks(run),
            self.latest(run),
            self.crossrank(run),
            self.quality(run),
            self.goodput(run),
            self.windows_index(run),
            self.metric_codes(run),
            self.alerts(run),
            self.active_alerts(run),
            self.alerts_seen(run),
            self.series_index(run),
        ]
        keys.extend(self.window(run, w) for w in windows)
        return keys

    def series_keys(self, run: str, rank: int, metric: str) -> list[str]:
        """The keys of one raw series, one per kind."""
        return [self.series(run, kind, rank, metric) for kind in SERIES_KINDS]

    # -- served models (issue 23). A model's keys share its hash tag ``{model}`` (model
    # names follow run ids); the ``serve:`` suffixes are a namespace of their own, so a
    # run and a model of the same name never share a key. Every one expires after
    # `retention_s` without a write, except the pending predictions (label horizon).

    def models(self) -> str:
        """Sorted set: model name scored by its last prediction (event time)."""
        return f"{self.prefix}:models"

    def _serve(self, model: str, suffix: str) -> str:
        return self._run(model, f"serve:{suffix}")

    def model_versions(self, model: str) -> str:
        """Sorted set: version of a model scored by its last prediction."""
        return self._serve(model, "versions")

    def model_segments(self, model: str, version: str) -> str:
        """Set: the segments of a version with their own series (at most the top K)."""
        return self._serve(model, f"segments:{check_window(version)}")

    def model_reference(self, model: str, version: str) -> str:
        """String: JSON reference of a version (bins, categories, sample, range)."""
        return self._serve(model, f"ref:{check_window(version)}")

    def model_windows(self, model: str, version: str) -> str:
        """Sorted set: window start (Unix seconds) of every window with data."""
        return self._serve(model, f"windows:{check_window(version)}")

    def model_counts(self, model: str, version: str, start: int) -> str:
        """Hash: the integer counts of one window (drift bins, categories, data quality),
        added to by every worker (HINCRBY)."""
        return self._serve(model, f"counts:{check_window(version)}:{int(start)}")

    def model_labels(self, model: str, version: str, start: int) -> str:
        """Hash: ``segment|counter`` -> label counts and sums of the predictions of one
        window (confusion, score histograms by label, squared and absolute errors, clicks,
        conversions, label delays), added to as outcomes join."""
        return self._serve(model, f"labels:{check_window(version)}:{int(start)}")

    def model_label_totals(self, model: str, version: str) -> str:
        """Hash: the label counts of every window of a version, added up (as `model_labels`)."""
        return self._serve(model, f"labels:{check_window(version)}:total")

    def model_sketches(self, model: str, version: str, start: int) -> str:
        """Hash: ``partition|feature`` -> serialized KLL sketch of one window (one writer
        per partition; readers merge them)."""
        return self._serve(model, f"kll:{check_window(version)}:{int(start)}")

    def model_performance(self, model: str, version: str) -> str:
        """Hash: ``start|segment`` -> JSON metrics of a window (``__all__``: the model, the
        sum over its segments; start ``total``: every window added up)."""
        return self._serve(model, f"perf:{check_window(version)}")

    def model_drift(self, model: str, version: str) -> str:
        """Hash: window start -> JSON drift report of a closed window."""
        return self._serve(model, f"drift:{check_window(version)}")

    def model_outcomes(self, model: str) -> str:
        """Hash: outcome counters of a model that belong to no window: ``orphan``,
        ``late``, ``duplicate``, ``joined``."""
        return self._serve(model, "outcomes")

    def model_pending(self, model: str, day: int) -> str:
        """Hash: prediction id -> compact JSON of a prediction served on UTC day `day`
        (days since the epoch) waiting for its outcome; expires after the label horizon."""
        return self._serve(model, f"pending:{int(day)}")

    def run_pattern(self, run: str) -> str:
        """SCAN MATCH pattern of every per-run key (run ids hold no glob characters)."""
        return f"{self.prefix}:{{{check_run_id(run)}}}:*"


def series_field(rank: int, metric: str) -> str:
    """Hash field / set member naming one series inside a run."""
    return f"{check_rank(rank)}{FIELD_SEPARATOR}{check_metric(metric)}"


def parse_series_field(field: str) -> tuple[int, str]:
    """Inverse of series_field."""
    rank, _, metric = field.partition(FIELD_SEPARATOR)
    return int(rank), metric


# Binary series members (see docs/redis-schema.md, "Series members"): a tag byte, then
# step and seq as big-endian offset-binary uint64 (value + 2**63, so member bytes sort as
# the numbers do: points of one step come in seq order), then the value as a big-endian
# IEEE-754 float64, bit for bit (NaN and infinities included). Text members never start
# with the tag (they start with a digit or "|"), so every member says which format it is.
SERIES_MEMBER_TAG = 1
SERIES_MEMBER_FORMAT = ">BQQd"
SERIES_MEMBER_SIZE = struct.calcsize(SERIES_MEMBER_FORMAT)
SERIES_MEMBER_FIELDS = (("tag", "u1"), ("step", ">u8"), ("seq", ">u8"), ("value", ">f8"))
"""numpy dtype spec of one binary member: readers decode a whole range with one
``numpy.frombuffer(b"".join(members), dtype)``."""
SERIES_INT_OFFSET = 1 << 63
"""Added to step and seq before packing (offset binary)."""
SERIES_NO_STEP = 0
"""The packed step of a point logged without a step (the step -2**63 is never packed)."""
_MEMBER = struct.Struct(SERIES_MEMBER_FORMAT)
_HEAD = struct.Struct(SERIES_MEMBER_FORMAT[:-1])
_MAX_PACKED = (1 << 64) - 1
pack_series_value = struct.Struct(">" + SERIES_MEMBER_FORMAT[-1]).pack
"""The last 8 bytes of a binary member: `series_member_head(step, seq) +
pack_series_value(value)` is `series_member(step, seq, value)` (the sink's inner loop)."""


def series_member_head(step: int | None, seq: int) -> bytes | None:
    """The first 17 bytes of the binary members of a record (tag, step, seq), or None
    when step or seq does not fit in int64 (those points are stored as text)."""
    packed_step = SERIES_NO_STEP if step is None else step + SERIES_INT_OFFSET
    packed_seq = seq + SERIES_INT_OFFSET
    if not 0 <= packed_seq <= _MAX_PACKED:
        return None
    if step is not None and not SERIES_NO_STEP < packed_step <= _MAX_PACKED:
        return None
    return _HEAD.pack(SERIES_MEMBER_TAG, packed_step, packed_seq)


def series_member(step: int | None, seq: int, value: float) -> bytes:
    """Sorted-set member of one point: `SERIES_MEMBER_SIZE` packed bytes (see
    `SERIES_MEMBER_FORMAT`); a text member (`text_series_member`) for a step or seq
    outside int64, which readers take as well.

    Everything that identifies the point is in the member, and the same point always
    packs to the same bytes, so writing it twice (a replayed Kafka range) is a no-op of
    ZADD, never a second point.
    """
    head = series_member_head(step, seq)
    if head is None:
        return text_series_member(step, seq, value).encode()
    return head + pack_series_value(value)


def is_packed_member(member: bytes | str) -> bool:
    """True for a binary member (`series_member`), False for a text one."""
    return (
        isinstance(member, bytes)
        and len(member) == SERIES_MEMBER_SIZE
        and member[0] == SERIES_MEMBER_TAG
    )


def text_series_member(step: int | None, seq: int, value: float) -> str:
    """The text member of one point, ``step|seq|value`` (``|17|NaN`` without a step):
    what releases before the binary members wrote, and still what a point whose step
    or seq does not fit in int64 is stored as."""
    return MEMBER_SEPARATOR.join(("" if step is None else str(step), str(seq), format_value(value)))


def parse_series_member(member: bytes | str) -> tuple[int | None, int, float]:
    """Inverse of series_member and text_series_member: (step, seq, value), whichever
    format the member is in."""
    if isinstance(member, bytes) and is_packed_member(member):
        _, packed_step, packed_seq, value = _MEMBER.unpack(member)
        step = None if packed_step == SERIES_NO_STEP else packed_step - SERIES_INT_OFFSET
        return step, packed_seq - SERIES_INT_OFFSET, value
    text = member.decode() if isinstance(member, bytes) else member
    step_text, seq_text, value_text = text.split(MEMBER_SEPARATOR, 2)
    return (int(step_text) if step_text else None), int(seq_text), float(value_text)


WINDOW_STATS_POSITIONS = 12
"""How many of the contract's window stats (`WINDOW_STATS_FIELDS`, in its order) a window
value holds by position: the layout's version, not a second list of names. A stat the
contract gains is stored by name with the extras, so that a reader of this layout never
misreads a position; raising this number is a new storage layout (readers first, and
`query.legacy` for values stored before)."""

STORED_WINDOW_STATS: tuple[str, ...] = WINDOW_STATS_FIELDS[:WINDOW_STATS_POSITIONS]
"""The stats a window value holds by position, in this order."""
_STORED_SET = frozenset(STORED_WINDOW_STATS)


def window_stats_value(rank: int, metric: str, window: str, stats: Mapping[str, Any]) -> bytes:
    """A window hash value: packed (`stepstream.window_values`) when the layout holds the
    stats, else the JSON row of `window_stats_json`. Readers read both. Write the metric's
    code to the run's code table (`RedisKeys.metric_codes`) beside it."""
    packed = pack_window_stats(rank, metric, stats)
    return packed if packed is not None else window_stats_json(rank, metric, window, stats)


def window_stats_json(rank: int, metric: str, window: str, stats: Mapping[str, Any]) -> bytes:
    """A window hash value as a JSON row: ``[rank,"metric","window",[count,nonfinite,...,flags]]``
    with the stats of `STORED_WINDOW_STATS` (the contract's `WindowStats`) by position,
    then, only when there are any, an object of the other stats by name
    (``[...,flags,{"p999":0.5}]``). Non-finite floats are the strings ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``. The layout of what the packed one cannot hold (open
    flags, extra stats), and of every value stored before it.

    Each value holds its whole row, so a reader decodes a window by joining the values
    into one JSON array (no per-row Python); the field (``rank|metric``) still names it.
    `stats` is a validated stats model's fields and extras (the sink's OpenStats).
    """
    values: list[Any] = [stats.get(name) for name in STORED_WINDOW_STATS]
    extra = {k: v for k, v in stats.items() if k not in _STORED_SET}
    if extra:
        values.append(extra)
    return pydantic_core.to_json([rank, metric, window, values], inf_nan_mode="strings")


def step_window_name(size: int) -> str:
    """Name of a window over the last `size` steps."""
    return f"{size}steps"


def time_window_name(seconds: float) -> str:
    """Name of a window over the last `seconds` of event time."""
    return f"{seconds:g}s"


def format_value(value: float) -> str:
    """A float as Redis text that float() reads back, non-finite values included."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)
