"""The reference of a model version: per feature its kind (numeric or categorical), its
fixed bins with the reference's counts in them, its range, and a KLL sketch; the same for
the score. Built from values the user gives (`pm.reference`) or from the first window of
traffic, stored once, read by every worker."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from processors.serving.bins import NumericBins
from processors.serving.categorical import CategoricalBins
from processors.serving.sketches import kll_doubles_sketch, sketch_of
from stepstream.serving_contract import NON_FINITE_STRINGS

NUMERIC = "numeric"
CATEGORICAL = "categorical"


def as_number(value: object) -> float | None:
    """`value` as a float if it is a number (bools are numbers), else None."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


@dataclass
class FeatureReference:
    """One feature's (or the score's) reference."""

    kind: str
    counts: list[int]
    numeric: NumericBins | None = None
    categorical: CategoricalBins | None = None
    sketch: bytes | None = None
    _sketch: Any = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        """Number of bins."""
        return len(self.counts)

    def kll(self) -> Any:
        """The reference sketch (deserialized once)."""
        if self._sketch is None and self.sketch is not None:
            self._sketch = kll_doubles_sketch.deserialize(self.sketch)
        return self._sketch

    def to_json(self) -> dict[str, Any]:
        """As stored."""
        out: dict[str, Any] = {"kind": self.kind, "counts": self.counts}
        if self.numeric is not None:
            out["bins"] = self.numeric.to_json()
        if self.categorical is not None:
            out["bins"] = self.categorical.to_json()
        if self.sketch is not None:
            out["kll"] = base64.b64encode(self.sketch).decode()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureReference:
        """A reference stored by `to_json`."""
        kind = data["kind"]
        blob = data.get("kll")
        return cls(
            kind=kind,
            counts=[int(c) for c in data["counts"]],
            numeric=NumericBins.from_json(data["bins"]) if kind == NUMERIC else None,
            categorical=CategoricalBins.from_json(data["bins"]) if kind == CATEGORICAL else None,
            sketch=base64.b64decode(blob) if blob else None,
        )


def feature_reference(values: Sequence[object], top_k: int) -> FeatureReference | None:
    """The reference of one feature's values: numeric when most present values are
    numbers, else categorical; None when nothing usable is there."""
    # Missing: null, and the wire's non-finite strings ("NaN", "Infinity").
    present = [
        v for v in values if v is not None and not (type(v) is str and v in NON_FINITE_STRINGS)
    ]
    numbers = [n for n in (as_number(v) for v in present) if n is not None and math.isfinite(n)]
    if numbers and len(numbers) * 2 >= len(present):
        bins = NumericBins.from_values(numbers)
        blob = sketch_of(numbers).serialize()
        return FeatureReference(NUMERIC, bins.counts(numbers), numeric=bins, sketch=blob)
    strings = [v for v in present if isinstance(v, str)]
    if not strings:
        return None
    cats = CategoricalBins.from_values(strings, top_k)
    return FeatureReference(CATEGORICAL, cats.counts(strings), categorical=cats)


@dataclass
class Reference:
    """A model version's reference."""

    features: dict[str, FeatureReference]
    score: FeatureReference | None
    source: str
    """``given`` (pm.reference) or ``traffic`` (the first window of predictions)."""

    @classmethod
    def build(
        cls,
        features: Mapping[str, Sequence[object]],
        scores: Sequence[float],
        top_k: int,
        source: str,
    ) -> Reference:
        """The reference of the given values."""
        refs = {}
        for name, values in features.items():
            ref = feature_reference(values, top_k)
            if ref is not None:
                refs[name] = ref
        score_ref = feature_reference(list(scores), top_k) if scores else None
        if score_ref is not None and score_ref.kind != NUMERIC:
            score_ref = None
        return cls(refs, score_ref, source)

    def to_bytes(self) -> bytes:
        """As stored in Redis."""
        return orjson.dumps(
            {
                "source": self.source,
                "features": {k: v.to_json() for k, v in self.features.items()},
                "score": self.score.to_json() if self.score is not None else None,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Reference:
        """A reference stored by `to_bytes`."""
        d = orjson.loads(raw)
        score = d.get("score")
        return cls(
            {k: FeatureReference.from_json(v) for k, v in d["features"].items()},
            FeatureReference.from_json(score) if score else None,
            d.get("source", "given"),
        )


class ReferenceBuilder:
    """Collects the first predictions of a version without a given reference, up to
    `size` of them or the end of their first window, whichever comes first."""

    def __init__(self, size: int, until: float) -> None:
        self.size = size
        self.until = until
        self.values: dict[str, list[object]] = {}
        self.scores: list[float] = []
        self.count = 0

    def add(self, features: Mapping[str, object], score: float | None) -> None:
        """One prediction's values."""
        self.count += 1
        for name, value in features.items():
            self.values.setdefault(name, []).append(value)
        if score is not None:
            self.scores.append(score)

    def ready(self, t: float) -> bool:
        """True once enough values are in, or the first window is over at `t`."""
        return self.count >= self.size or (self.count > 0 and t >= self.until)

    def build(self, top_k: int) -> Reference:
        """The reference of what was collected."""
        return Reference.build(self.values, self.scores, top_k, "traffic")
