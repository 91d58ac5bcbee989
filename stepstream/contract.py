"""The wire contract: what travels on stepstream's topics, as versioned pydantic models.

Every message is JSON. JSON has no NaN or Infinity, and a NaN loss is the most important
value this system carries, so non-finite floats are written as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` and read back as floats. Readers ignore unknown fields;
a message whose major version ``v`` is newer than ours is rejected with reason ``version``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic_core import from_json

from stepstream.errors import ContractError

SCHEMA_VERSION = 1

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""Run ids are safe in topic keys, Redis keys and URLs: no braces, colons or spaces."""

METRIC_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_./:@-]{0,199}$"
"""Metric names may be hierarchical (``grad_norm/layer1.weight``) but never contain ``|``."""

MAX_TEXT_CHARS = 16_384
"""Longest free text of a record (a log message with its traceback); the SDK truncates."""

MAX_LABEL_CHARS = 256
"""Longest node name and publisher incarnation id."""

MAX_INT = 2**63 - 1
"""Integers on the wire fit a signed 64-bit integer (seq, pid); ranks and world sizes a
32-bit one (`MAX_RANK`): readers in any language can hold them."""
MAX_RANK = 2**31 - 1

RunId = Annotated[str, StringConstraints(pattern=RUN_ID_PATTERN)]
MetricName = Annotated[str, StringConstraints(pattern=METRIC_NAME_PATTERN)]


class WireModel(BaseModel):
    """Base of every message model: unknown fields ignored, non-finite floats as strings."""

    # Only keys are cached while parsing: pydantic's default also caches string values
    # (run names, incarnations, nodes) in a process-wide table that outlives the runs.
    # Scattered over the allocator's arenas, those survivors kept stages 1 and 2 that had
    # forgotten 720 runs 33 MiB above where they started, in process, against 8 MiB with
    # keys only (issue 21); parsing costs the same.
    model_config = ConfigDict(
        extra="ignore", ser_json_inf_nan="strings", frozen=False, cache_strings="keys"
    )

    def to_bytes(self) -> bytes:
        """Serialize to the JSON bytes that go on a topic (as `model_dump_json`, without
        its str round trip)."""
        return self.__pydantic_serializer__.to_json(self)


class RecordKind(StrEnum):
    """What a record describes; processors route records by kind."""

    TRAIN = "train"
    EVAL = "eval"
    SYSTEM = "system"
    GRAD = "grad"
    HEARTBEAT = "heartbeat"
    LOG = "log"
    QUALITY = "quality"


class Record(WireModel):
    """One observation: a set of named values at one step and event time."""

    seq: int = Field(
        ge=0, le=MAX_INT, description="Per publisher incarnation, gap-free, for dedup."
    )
    t: float = Field(description="Event time, Unix seconds, taken when log() was called.")
    step: int | None = Field(None, ge=0, description="Training step, when the record has one.")
    kind: RecordKind = RecordKind.TRAIN
    values: dict[MetricName, float] = Field(default_factory=dict)
    text: str | None = Field(
        None, max_length=MAX_TEXT_CHARS, description="Free text for log records (data: escape it)."
    )


class Batch(WireModel):
    """One message on the telemetry topic: what one rank's publisher sent in one flush."""

    v: int = SCHEMA_VERSION
    run: RunId
    rank: int = Field(ge=0, le=MAX_RANK)
    world: int = Field(1, ge=1, le=MAX_RANK)
    node: str = Field("", max_length=MAX_LABEL_CHARS)
    pid: int = Field(0, ge=-MAX_INT, le=MAX_INT)
    incarnation: str = Field(
        "",
        max_length=MAX_LABEL_CHARS,
        description="Unique per publisher start; seq restarts with it.",
    )
    records: list[Record] = Field(default_factory=list)

    @property
    def key(self) -> bytes:
        """The Kafka key: all of one series lands in one partition."""
        return series_key(self.run, self.rank)


class WindowStats(WireModel):
    """Rolling statistics of one metric over one window. Non-finite values are counted,
    not averaged, so one NaN does not hide the rest of the window.

    The one definition of window statistics: its fields, in this order, are
    `WINDOW_STATS_FIELDS`, from which every other stats struct is derived (the
    processor's `Summary`, the sink's `OpenStats`, the reader's and the HTTP API's
    `RollingStats`). The store keeps the first `stepstream.keys.STORED_WINDOW_STATS` of
    them by position: append a new field, and it is stored by name with the extra stats
    until the stored layout grows (`stepstream.keys.WINDOW_STATS_POSITIONS`).
    """

    count: int = 0
    nonfinite: int = 0
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    last: float | None = None
    std: float | None = None
    ema: float | None = None
    p50: float | None = None
    p95: float | None = None
    slope: float | None = None
    flags: list[str] | None = Field(
        None, description="Detectors whose episode on this series is open at this update."
    )


WINDOW_STATS_FIELDS: tuple[str, ...] = tuple(WindowStats.model_fields)
"""The window statistics by name, in their stored order: `WindowStats`' fields."""

WINDOW_STATS_NUMBERS: tuple[str, ...] = tuple(
    name for name in WINDOW_STATS_FIELDS if name != "flags"
)
"""The numeric window statistics (all but the detectors' `flags`): what a processor
computes from a window's values (`processors.windows.Summary`)."""


def window_stats_types() -> list[tuple[str, Any, Any]]:
    """(name, type, default) of every window statistic, in stored order: what a struct
    outside pydantic (a dataclass, a msgspec Struct) is built from."""
    return [(name, f.annotation, f.default) for name, f in WindowStats.model_fields.items()]


class WindowUpdate(WireModel):
    """One message on the windows topic: the fresh stats of one rank after one batch."""

    v: int = SCHEMA_VERSION
    run: RunId
    rank: int = Field(ge=0)
    world: int = 1
    node: str = ""
    step: int | None = None
    t: float = 0.0
    latest: dict[MetricName, float] = Field(default_factory=dict)
    windows: dict[str, dict[MetricName, WindowStats]] = Field(
        default_factory=dict, description="window name -> metric -> stats"
    )
    status: str | None = Field(
        None, description="The rank's lifecycle status from its newest heartbeat, if any."
    )


CROSS_RANK_WINDOW = "ranks"
"""Window name of cross-rank stats: one step, every rank."""


class StepPoint(WireModel):
    """The values of one rank at one step that stage 2 compares across ranks."""

    step: int = Field(ge=0)
    t: float
    values: dict[MetricName, float] = Field(default_factory=dict)
    quality: dict[MetricName, float] = Field(
        default_factory=dict,
        description="Quality sufficient statistics (quality/<task>/...) of this rank at this "
        "step, summed over its records; additive, so stage 2 sums them across ranks.",
    )


class RankSummary(WireModel):
    """One message on the summaries topic (key = run): what stage 1 saw of one rank in one
    batch, compact enough for a per-run stage to hold every rank of a run."""

    v: int = SCHEMA_VERSION
    run: RunId
    rank: int = Field(ge=0)
    world: int = 1
    node: str = ""
    last_step: int | None = None
    last_t: float = 0.0
    records: int = 0
    steps: list[StepPoint] = Field(default_factory=list)
    nonfinite: list[StepPoint] = Field(
        default_factory=list,
        description="Non-finite values of rank-local metrics, by step, for as long as they "
        "last (the cross-rank stage names the rank where they started).",
    )
    flags: list[Alert] = Field(
        default_factory=list,
        description="Stage 1's detector findings for this rank: stage 2 groups them into "
        "one incident per run and detector.",
    )
    status: str | None = Field(
        None,
        description="The rank's lifecycle status from its newest heartbeat (starting, "
        "running, closing, crashed); None before any.",
    )
    phase: str | None = Field(
        None, description="The training thread's phase at the newest heartbeat (vocabulary)."
    )
    phase_s: float | None = Field(None, description="Seconds it had been in that phase.")
    stack: str | None = Field(
        None, description="The training thread's stack, captured by the SDK when it was stuck."
    )
    stack_t: float | None = Field(None, description="Event time the stack was captured.")
    incarnation: str = Field(
        "", description="The rank's publisher incarnation: a new one is a restart."
    )
    mesh: dict[str, int] | None = Field(
        None,
        description="The rank's device-mesh coordinate per role (dp, fsdp, tp, pp) from its "
        "newest heartbeat that carried them; None for a job every rank holds whole (DDP).",
    )
    partition: int | None = Field(
        None,
        description="The telemetry partition stage 1 read the rank from: its silence is "
        "judged only while that partition is read (see ReadMark).",
    )


#: The summaries-topic key of read marks (a run id cannot start with "~").
READ_MARK_KEY = b"~read"


class ReadMark(WireModel):
    """One message on the summaries topic, keyed READ_MARK_KEY and sent to every one of its
    partitions by stage 1 of one worker at `t` (its clock): for each telemetry partition
    it holds, `read` gives how many seconds before `t` it had read everything the broker
    held of it (0.0: read to its end).

    Stage 2 judges a rank silent (dead, a lost node) only once its partition was read
    past its last word. A worker cut off from the broker sends none, and one lagging
    behind tells how far: their ranks' silence is not taken for the ranks' own.
    """

    v: int = SCHEMA_VERSION
    t: float
    read: dict[int, float] = Field(default_factory=dict)
    worker: str = ""


class CrossRankStats(WireModel):
    """One metric at one step across the ranks that reported it."""

    ranks: int
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    std: float | None = None
    argmin: int | None = None
    argmax: int | None = None
    combined: float | None = Field(
        None,
        description="The job's value of a norm: under sharding the root of the ranks' "
        "summed squared shares, else the replicas' common value (their median); what "
        "torch.nn.utils.clip_grad_norm_ returns. Only on steps every rank reported.",
    )


class Goodput(WireModel):
    """A run's live goodput (stage 2, `processors.goodput`): how much of its wall time
    trained and where the rest went. Carried on the cross-rank topic with each finished
    step's update; the sink keeps the newest per run."""

    run: RunId
    step: int | None = Field(None, description="Newest finished step counted.")
    t: float = Field(0.0, description="Event time of that step.")
    steps: int = 0
    wall_s: float = Field(0.0, description="Wall seconds covered: the steps and the gaps.")
    productive_s: float = 0.0
    ettr: float | None = Field(None, description="Effective training time ratio.")
    badput_s: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds lost per cause (stepstream.vocabulary.BADPUT_CAUSES).",
    )
    slowest_by_rank: dict[str, float] = Field(
        default_factory=dict,
        description="The slowest_rank badput by the rank the peers waited for.",
    )


class CrossRankUpdate(WireModel):
    """One message on the cross-rank topic: per-step stats of a run across its ranks."""

    v: int = SCHEMA_VERSION
    run: RunId
    step: int
    t: float
    world: int = 1
    stats: dict[MetricName, CrossRankStats] = Field(default_factory=dict)
    quality: dict[str, dict[MetricName, WindowStats]] = Field(
        default_factory=dict,
        description="window name -> run-level quality metric (quality/<task>/...) -> stats "
        "(count = examples, mean = last = value): statistics of the window's finished steps "
        "summed across ranks.",
    )
    goodput: Goodput | None = Field(
        None, description="The run's goodput after this step (absent when not counted)."
    )


Severity = Literal["info", "warning", "critical"]
#: An alert's transitions, Prometheus-style: ``pending`` while its condition holds for less
#: than its rule's ``for`` (visible, never notified), ``firing``, then ``resolved``; or
#: ``withdrawn`` when a pending alert's condition stops before it fired. Withdrawn is a
#: state of its own, not ``resolved``, so that "resolved" counts only alerts that fired.
AlertStatus = Literal["pending", "firing", "resolved", "withdrawn"]
#: The statuses of an alert still open (kept in the run's active-alert hash).
OPEN_STATUSES: frozenset[str] = frozenset({"pending", "firing"})
#: The statuses anyone is notified of (webhooks, anything that pages).
NOTIFY_STATUSES: frozenset[str] = frozenset({"firing", "resolved"})


class Alert(WireModel):
    """One alert transition on the alerts topic."""

    v: int = SCHEMA_VERSION
    fingerprint: str = Field(description="Stable id of (rule, run, rank, metric).")
    rule: str
    status: AlertStatus = "firing"
    severity: Severity = "critical"
    run: RunId
    rank: int | None = None
    metric: str | None = None
    step: int | None = None
    t: float = Field(description="Event time of the record that caused the transition.")
    raised_at: float = Field(description="Wall-clock time the processor raised it.")
    active_since: float | None = Field(
        None,
        description="Event time the rule's condition started holding (pending and firing "
        "alerts of the alert engine; Prometheus's activeAt).",
    )
    summary: str = ""
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    suppressed_by: str | None = Field(
        None, description="Silence id or inhibiting alert: stored, but nobody is notified."
    )
    action: str | None = Field(None, description="stop, checkpoint or scale_lr:<f> for training.")
    evidence: dict[str, float | None] = Field(
        default_factory=dict, description="Numbers behind the flag: value, threshold, window."
    )
    affected: list[str] = Field(
        default_factory=list,
        description="The series of the incident ('rank 1: loss'), first first, bounded.",
    )


RankSummary.model_rebuild()  # its `flags` are Alerts, defined after it


class ControlAction(WireModel):
    """One message on the control topic: a rule's action for a training job to consider.

    The job decides; nothing is forced. `rank` None means every rank of the run.
    """

    v: int = SCHEMA_VERSION
    run: RunId
    rank: int | None = None
    action: Literal["stop", "checkpoint", "scale_lr"]
    factor: float | None = Field(None, description="For scale_lr: multiply the LR by this.")
    rule: str
    fingerprint: str
    step: int | None = None
    t: float
    summary: str = ""

    @classmethod
    def from_alert(cls, alert: Alert) -> ControlAction | None:
        """The action a firing alert carries (``stop``, ``checkpoint``, ``scale_lr:<f>``)."""
        if not alert.action or alert.status != "firing":
            return None
        name, _, factor = alert.action.partition(":")
        if name not in ("stop", "checkpoint", "scale_lr"):
            return None
        return cls(
            run=alert.run,
            rank=alert.rank,
            action=name,
            factor=float(factor) if factor else None,
            rule=alert.rule,
            fingerprint=alert.fingerprint,
            step=alert.step,
            t=alert.t,
            summary=alert.summary,
        )


class DeadLetter(WireModel):
    """A message a stage could not use, kept with the reason so nothing is lost silently.

    Bounded in size whatever the message was: `payload` is an excerpt of the original value
    (at most `stepstream.deadletter.EXCERPT_BYTES` bytes of it), with `size` and `sha256` of
    the whole value. Built by `stepstream.deadletter.dead_letter`.
    """

    v: int = SCHEMA_VERSION
    stage: str = Field("", description="Who rejected it: app/agent, e.g. processor/series-stage.")
    reason: str = Field(description="Short tag: null, empty, too_large, undecodable, schema, ...")
    detail: str = Field(description="What was wrong, for a human (bounded).")
    topic: str = Field(description="The topic the message was read from.")
    partition: int | None = None
    offset: int | None = None
    key: str | None = Field(None, description="Excerpt of the message key, if any (bounded).")
    size: int | None = Field(description="Bytes in the original value; null for a tombstone.")
    sha256: str | None = Field(description="Hex SHA-256 of the original value; null if none.")
    payload: str = Field(description="Excerpt of the original value, in `payload_encoding`.")
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    truncated: bool = Field(False, description="True if `payload` is less than the value.")
    t: float = Field(description="Wall-clock time the stage rejected it.")


def series_key(run: str, rank: int) -> bytes:
    """Kafka key of one rank's series of a run (``"R:r"``)."""
    return f"{run}:{rank}".encode()


def run_key(run: str) -> bytes:
    """Kafka key that co-locates everything of one run (stage 2, alerts)."""
    return run.encode()


def _peek_version(raw: bytes) -> int | None:
    """Best-effort read of ``v`` for a better error message; only used on the error path.
    Parsed with pydantic's bounded parser: deep nesting cannot exhaust the Python stack."""
    try:
        doc = from_json(raw)
    except (ValueError, RecursionError):
        return None
    version = doc.get("v") if isinstance(doc, dict) else None
    return version if isinstance(version, int) else None


def check_value(raw: object, max_bytes: int | None = None) -> bytes:
    """`raw` if it is bytes worth parsing (any topic), else raise ContractError: ``null``
    for a tombstone, ``empty``, ``too_large`` beyond `max_bytes`, ``undecodable``."""
    if raw is None:
        raise ContractError("null", "the message has no value (a tombstone)")
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise ContractError("undecodable", f"the value is {type(raw).__name__}, not bytes")
    if not raw:
        raise ContractError("empty", "the message value is empty")
    if max_bytes is not None and len(raw) > max_bytes:
        raise ContractError("too_large", f"{len(raw)} bytes > limit {max_bytes}")
    return bytes(raw)


def decode_batch(raw: bytes | None, max_bytes: int | None = None) -> Batch:
    """Decode one telemetry message, or raise ContractError naming the reason.

    Anything a topic can hold is answered: a null value (tombstone) is ``null``, zero bytes
    ``empty``, more than `max_bytes` ``too_large`` (not parsed at all), bytes that are not
    JSON (non-UTF-8, nested deeper than the parser allows) ``undecodable``, JSON that is
    not a batch ``schema``, an unknown major version ``version``.
    """
    raw = check_value(raw, max_bytes)
    try:
        batch = Batch.model_validate_json(raw)
    except ValidationError as exc:
        version = _peek_version(raw)
        if version is not None and version > SCHEMA_VERSION:
            raise ContractError(
                "version", f"schema v{version} is newer than this reader (v{SCHEMA_VERSION})"
            ) from exc
        reason = "undecodable" if _is_json_error(exc) else "schema"
        raise ContractError(reason, _short_errors(exc)) from exc
    if batch.v > SCHEMA_VERSION:
        raise ContractError(
            "version", f"schema v{batch.v} is newer than this reader (v{SCHEMA_VERSION})"
        )
    if batch.v < 1:
        raise ContractError("version", f"schema v{batch.v} does not exist (versions start at 1)")
    return batch


def validation_reason(exc: ValidationError) -> tuple[str, str]:
    """(reason, detail) of a message that failed its model: ``undecodable`` when it was
    not JSON (or nested too deep), else ``schema`` with the first errors' fields."""
    return ("undecodable" if _is_json_error(exc) else "schema"), _short_errors(exc)


def _is_json_error(exc: ValidationError) -> bool:
    return any(err["type"] == "json_invalid" for err in exc.errors())


def _short_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"(+{more} more)")
    return "; ".join(parts)
