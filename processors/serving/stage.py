"""One batch of serving records in, the counter deltas and pending records out.

The stage holds no durable state: pending predictions are looked up by the caller (the
wiring reads them from Redis before `apply`) and written back from `Effects`. Counts are
integers keyed by field name, so what several workers write adds up:

- window counts (``counts``): ``n`` predictions; ``f|<feature>|<bin>`` bin counts;
  ``s|<bin>`` score bins; ``q|<feature>|missing|type|range|unseen`` data quality;
- label counts (``labels``): ``<segment>|<counter>`` with the counters of
  `processors.serving.metrics` (``preds`` at prediction time, the rest as outcomes join).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from pydantic import ValidationError

from processors.serving.categorical import OTHER
from processors.serving.join import Pending, facets_of, join, pending_day
from processors.serving.metrics import delay_bin, label_deltas
from processors.serving.reference import NUMERIC, Reference, ReferenceBuilder
from stepstream.serving_contract import (
    MAX_CATEGORY_CHARS,
    MAX_FEATURES,
    NON_FINITE_STRINGS,
    OutcomeRecord,
    PredictionRecord,
    ReferenceRecord,
    valid_id,
)

#: The segment of predictions logged without one, and of segments past the top K.
NO_SEGMENT = "__none__"
OTHER_SEGMENT = OTHER
QUALITY = ("missing", "type", "range", "unseen")


def window_start(t: float, window_s: float) -> int:
    """The start (Unix seconds, integer) of the window holding event time `t`."""
    return int(math.floor(t / window_s) * window_s)


def segment_name(segment: Mapping[str, str]) -> str:
    """``key=value`` pairs sorted by key, joined by ``,`` (``__none__`` for none)."""
    if not segment:
        return NO_SEGMENT
    return ",".join(f"{k}={str(v)[:MAX_CATEGORY_CHARS]}" for k, v in sorted(segment.items()))


def _number(value: Any) -> Any:
    # Non-finite numbers travel as strings (JSON has none).
    if isinstance(value, str) and value in NON_FINITE_STRINGS:
        return NON_FINITE_STRINGS[value]
    return value


@dataclass
class Rejection:
    """A record the stage could not use."""

    reason: str
    detail: str


@dataclass
class Parsed:
    """The usable records of one message."""

    model: str
    version: str
    predictions: list[Prediction] = field(default_factory=list)
    outcomes: list[OutcomeRecord] = field(default_factory=list)
    references: list[ReferenceRecord] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


#: Feature and segment names seen valid (a prediction's 20 names are not matched against
#: the pattern again for every prediction); bounded.
_GOOD_NAMES: set[str] = set()
_MAX_GOOD_NAMES = 100_000
_PLAIN = (float, int)
_VALUE_TYPES = frozenset({float, int, str, bool, type(None)})


class Prediction(NamedTuple):
    """A checked prediction record (the fields of `PredictionRecord`, as a tuple: cheap to
    build tens of thousands of times a second)."""

    id: str
    t: float
    features: dict[str, Any]
    score: float | None
    prediction: float | None
    segment: dict[str, str]

    @classmethod
    def of(cls, record: PredictionRecord) -> Prediction:
        """The tuple of a validated model."""
        return cls(
            record.id, record.t, record.features, record.score, record.prediction, record.segment
        )


def _plain_prediction(raw: dict[str, Any]) -> Prediction | None:
    """The record of a prediction in the SDK's plain shape (known names, finite numbers),
    built without pydantic's per-field validation (most of the stage's parse CPU); None
    for anything else, which pydantic then validates (and names what is wrong)."""
    pid = raw.get("id")
    t = raw.get("t")
    features = raw.get("features", {})
    score = raw.get("score")
    prediction = raw.get("prediction")
    segment = raw.get("segment", {})
    if not (
        type(pid) is str
        and type(t) in _PLAIN
        and type(features) is dict
        and (score is None or type(score) in _PLAIN)
        and (prediction is None or type(prediction) in _PLAIN)
        and type(segment) is dict
        and _GOOD_NAMES.issuperset(features)
        and _VALUE_TYPES.issuperset(map(type, features.values()))
        and _GOOD_NAMES.issuperset(segment)
        and all(type(v) is str for v in segment.values())
        and valid_id(pid)
    ):
        return None
    return Prediction(
        pid,
        float(t),  # type: ignore[arg-type]
        features,
        None if score is None else float(score),
        None if prediction is None else float(prediction),
        segment,
    )


def parse_records(model: str, version: str, records: list[Any]) -> Parsed:
    """Check each record on its own: hostile ones (bad id, NaN score, too many features,
    wrong shape) are rejected with a reason; the rest are kept."""
    out = Parsed(model, version)
    for raw in records:
        if not isinstance(raw, dict):
            out.rejected.append(Rejection("schema", "a record is a JSON object"))
            continue
        kind = raw.get("kind")
        try:
            if kind == "prediction":
                features = raw.get("features")
                if isinstance(features, dict) and len(features) > MAX_FEATURES:
                    out.rejected.append(
                        Rejection("too_many_features", f"{len(features)} > {MAX_FEATURES}")
                    )
                    continue
                score = _number(raw.get("score"))
                if isinstance(score, float) and not math.isfinite(score):
                    out.rejected.append(Rejection("non_finite_score", f"score {score}"))
                    continue
                # Non-finite feature values stay strings here: the counting treats
                # "NaN"/"Infinity" as missing (no per-value pass at parse time).
                record = _plain_prediction(raw) or Prediction.of(
                    PredictionRecord.model_validate(raw)
                )
                if not math.isfinite(record.t):
                    raise ValueError("t is not finite")
                if len(_GOOD_NAMES) > _MAX_GOOD_NAMES:
                    _GOOD_NAMES.clear()
                _GOOD_NAMES.update(record.features)
                _GOOD_NAMES.update(record.segment)
                out.predictions.append(record)
            elif kind == "outcome":
                label = _number(raw.get("label"))
                if isinstance(label, float) and not math.isfinite(label):
                    out.rejected.append(Rejection("non_finite_label", f"label {label}"))
                    continue
                outcome = OutcomeRecord.model_validate(raw)
                if not facets_of(outcome.label, outcome.clicked, outcome.converted):
                    out.rejected.append(
                        Rejection("empty_outcome", "no label, clicked or converted")
                    )
                    continue
                out.outcomes.append(outcome)
            elif kind == "reference":
                out.references.append(ReferenceRecord.model_validate(raw))
            else:
                out.rejected.append(Rejection("schema", f"unknown record kind {kind!r}"))
        except (ValidationError, ValueError) as exc:
            reason = "bad_id" if _bad_id(exc) else "schema"
            out.rejected.append(Rejection(reason, str(exc).splitlines()[0][:300]))
    return out


def _bad_id(exc: Exception) -> bool:
    if isinstance(exc, ValidationError):
        return any(err["loc"][:1] == ("id",) for err in exc.errors())
    return False


_PLAIN_NUMBERS = frozenset({float, int, bool, type(None)})


def numeric_column(column: list[Any]) -> tuple[np.ndarray, int]:
    """A column of a numeric feature as floats (missing and non-finite: NaN) and how many
    values were not numbers (left out)."""
    if _PLAIN_NUMBERS.issuperset(map(type, column)):
        return np.asarray(column, dtype=np.float64), 0
    mistyped = 0
    out = []
    for value in column:
        kind = type(value)
        if kind is float or kind is int or kind is bool:
            out.append(float(value))
        elif value is None or (kind is str and value in NON_FINITE_STRINGS):
            out.append(math.nan)
        else:
            mistyped += 1
    return np.asarray(out, dtype=np.float64), mistyped


def _add_quality(counts: Counter[str], name: str, problem: str, count: int) -> None:
    if count:
        counts[f"q|{name}|{problem}"] += count


@dataclass
class Effects:
    """What one batch changes, for the wiring to write."""

    counts: dict[tuple[str, int], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    labels: dict[tuple[str, int], dict[str, float]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    pending: dict[str, tuple[int, Pending]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    versions: dict[str, float] = field(default_factory=dict)
    new_segments: set[tuple[str, str]] = field(default_factory=set)
    sketch_values: dict[tuple[str, int, str], list[Any]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """Finite values per (version, window start, feature or ``score``), numpy arrays."""
    to_count: dict[tuple[str, int], tuple[Reference, list[Prediction]]] = field(
        default_factory=dict
    )
    preds: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    join_delays_s: list[float] = field(default_factory=list)
    """Event-time delay of each joined outcome (for the label-delay distribution)."""
    built: dict[str, Reference] = field(default_factory=dict)
    """References built from traffic in this batch, by version (to store)."""


def _add(target: dict[str, float], segment: str, deltas: Mapping[str, float]) -> None:
    for name, value in deltas.items():
        key = f"{segment}|{name}"
        target[key] = target.get(key, 0) + value


class ModelStage:
    """The serving stage of one model: references by version, segment caps, reference
    builders; `apply` turns parsed records into `Effects`."""

    def __init__(
        self,
        model: str,
        *,
        window_s: float,
        horizon_s: float,
        top_k: int,
        reference_size: int,
    ) -> None:
        self.model = model
        self.window_s = window_s
        self.horizon_s = horizon_s
        self.top_k = top_k
        self.reference_size = reference_size
        self.references: dict[str, Reference] = {}
        self.builders: dict[str, ReferenceBuilder] = {}
        self.segments: dict[str, set[str]] = {}

    def set_reference(self, version: str, reference: Reference) -> None:
        """Use `reference` for `version` from now on (a builder in progress stops)."""
        self.references[version] = reference
        self.builders.pop(version, None)

    def reference_from(self, record: ReferenceRecord) -> Reference:
        """The reference of a reference record."""
        return Reference.build(record.features, record.scores, self.top_k, "given")

    def segment_of(self, version: str, name: str, effects: Effects) -> str:
        """`name` if it has (or gets) a series of its own, else ``__other__``. The first K
        segments seen get series (by arrival, not by traffic: a stream has no top K
        before it ends). Each worker admits from the set it loaded plus its own: with W
        workers, up to W x K segments in the worst case."""
        admitted = self.segments.setdefault(version, set())
        if name in admitted or name == NO_SEGMENT:
            return name
        if len(admitted) < self.top_k:
            admitted.add(name)
            effects.new_segments.add((version, name))
            return name
        return OTHER_SEGMENT

    def apply(
        self,
        parsed: Parsed,
        found: Mapping[str, Pending | None],
        effects: Effects,
    ) -> None:
        """Add the effects of `parsed` (one message). `found` holds the stored pending
        record of every id in it (None: none stored); records pending in this batch are
        seen by the outcomes after them."""
        version = parsed.version
        for record in parsed.predictions:
            self._prediction(version, record, found, effects)
        for (v, start), (reference, records) in effects.to_count.items():
            self._count(v, start, reference, records, effects)
        effects.to_count.clear()
        for (v, start, segment), count in effects.preds.items():
            _add(effects.labels[(v, start)], segment, {"preds": count})
        effects.preds.clear()
        for outcome in parsed.outcomes:
            self._outcome(outcome, found, effects)

    def _lookup(
        self, pid: str, found: Mapping[str, Pending | None], effects: Effects
    ) -> Pending | None:
        mine = effects.pending.get(pid)
        return mine[1] if mine is not None else found.get(pid)

    def _prediction(
        self,
        version: str,
        record: Prediction,
        found: Mapping[str, Pending | None],
        effects: Effects,
    ) -> None:
        if self._lookup(record.id, found, effects) is not None:
            # Seen before: a replay after a restart, or a repeated id. It adds nothing.
            effects.outcomes["duplicate_prediction"] += 1
            return
        start = window_start(record.t, self.window_s)
        segment = self.segment_of(version, segment_name(record.segment), effects)
        effects.pending[record.id] = (
            pending_day(record.t),
            Pending(record.t, version, segment, record.score, record.prediction),
        )
        effects.versions[version] = max(effects.versions.get(version, 0.0), record.t)
        effects.preds[(version, start, segment)] += 1
        if version in effects.built:
            # Built from traffic in this batch: another worker may have stored its own
            # first (the wiring adopts the stored one), so counting waits for the next batch.
            return
        reference = self.references.get(version)
        if reference is None:
            builder = self.builders.get(version)
            if builder is None:
                builder = ReferenceBuilder(self.reference_size, start + self.window_s)
                self.builders[version] = builder
            builder.add(record.features, record.score)
            if builder.ready(record.t):
                built = builder.build(self.top_k)
                self.set_reference(version, built)
                effects.built[version] = built
            return
        # Counted per window and feature, column by column, at the end of the message.
        effects.to_count.setdefault((version, start), (reference, []))[1].append(record)

    def _count(
        self,
        version: str,
        start: int,
        reference: Reference,
        records: list[Prediction],
        effects: Effects,
    ) -> None:
        """Add the drift and quality counts of `records` (one window) column by column:
        20 features of thousands of predictions are 20 numpy passes, not 20 Python loops
        per prediction."""
        counts = effects.counts[(version, start)]
        counts["n"] += len(records)
        rows = [r.features for r in records]
        for name, ref in reference.features.items():
            column = [row.get(name) for row in rows]
            if ref.kind == NUMERIC and ref.numeric is not None:
                values, mistyped = numeric_column(column)
                bins = ref.numeric
                finite = values[np.isfinite(values)]
                missing = len(values) - len(finite)
                _add_quality(counts, name, "missing", missing)
                _add_quality(counts, name, "type", mistyped)
                out = int(np.count_nonzero((finite < bins.low) | (finite > bins.high)))
                _add_quality(counts, name, "range", out)
                binned = np.bincount(
                    np.searchsorted(bins.edges, finite, side="right"), minlength=bins.size
                )
                for i, c in enumerate(binned.tolist()):
                    if c:
                        counts[f"f|{name}|{i}"] += c
                if len(finite):
                    effects.sketch_values[(version, start, name)].append(finite)
            elif ref.categorical is not None:
                cats = ref.categorical
                top = cats.positions()
                other = len(cats.top)
                binned_list = [0] * cats.size
                for value in column:
                    if type(value) is str:
                        if value in NON_FINITE_STRINGS:
                            counts[f"q|{name}|missing"] += 1
                            continue
                        index = top.get(value)
                        if index is None:
                            index = other
                            if cats.unseen(value):
                                counts[f"q|{name}|unseen"] += 1
                        binned_list[index] += 1
                    elif value is None or (type(value) is float and value != value):
                        counts[f"q|{name}|missing"] += 1
                    else:
                        counts[f"q|{name}|type"] += 1
                for i, c in enumerate(binned_list):
                    if c:
                        counts[f"f|{name}|{i}"] += c
        score_ref = reference.score
        if score_ref is not None and score_ref.numeric is not None:
            scores = np.asarray([r.score for r in records if r.score is not None], dtype=float)
            _add_quality(counts, "score", "missing", len(records) - len(scores))
            binned = np.bincount(
                np.searchsorted(score_ref.numeric.edges, scores, side="right"),
                minlength=score_ref.numeric.size,
            )
            for i, c in enumerate(binned.tolist()):
                if c:
                    counts[f"s|{i}"] += c
            if len(scores):
                effects.sketch_values[(version, start, "score")].append(scores)

    def _outcome(
        self, outcome: OutcomeRecord, found: Mapping[str, Pending | None], effects: Effects
    ) -> None:
        pending = self._lookup(outcome.id, found, effects)
        facets = facets_of(outcome.label, outcome.clicked, outcome.converted)
        verdict, fresh = join(pending, facets, outcome.t, self.horizon_s)
        effects.outcomes[verdict] += 1
        if verdict != "joined":
            return
        assert pending is not None
        effects.pending[outcome.id] = (pending_day(pending.t), pending)
        start = window_start(pending.t, self.window_s)
        deltas: dict[str, float] = {}
        if "label" in fresh and outcome.label is not None:
            deltas.update(label_deltas(pending.score, pending.prediction, outcome.label))
            delay = max(0.0, outcome.t - pending.t)
            deltas[f"d{delay_bin(delay)}"] = 1
            effects.join_delays_s.append(delay)
        if "clicked" in fresh or "converted" in fresh:
            deltas["fb"] = 1
        if "clicked" in fresh and outcome.clicked:
            deltas["clicks"] = 1
        if "converted" in fresh and outcome.converted:
            deltas["conv"] = 1
        _add(effects.labels[(pending.version, start)], pending.segment, deltas)
