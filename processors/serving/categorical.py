"""Categorical features: the reference's top K categories get bins, every other value
shares ``__other__``; a value the reference never held at all is also an unseen category
(a data-quality count)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

OTHER = "__other__"
#: Distinct reference categories remembered for the unseen check (beyond: not checked).
MAX_SEEN = 10_000


@dataclass(frozen=True)
class CategoricalBins:
    """Top-K categories of a reference (most frequent first, ties by name), then other."""

    top: tuple[str, ...]
    seen: frozenset[str]
    complete: bool
    """True when `seen` holds every reference category (the unseen check is exact)."""

    @classmethod
    def from_values(cls, values: Iterable[object], top_k: int) -> CategoricalBins:
        """Bins of the string values of a reference (other types are ignored)."""
        counts = Counter(v for v in values if isinstance(v, str))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        top = tuple(name for name, _ in ranked[:top_k])
        seen = frozenset(name for name, _ in ranked[:MAX_SEEN])
        return cls(top, seen, len(ranked) <= MAX_SEEN)

    @property
    def size(self) -> int:
        """Number of bins (top K plus other)."""
        return len(self.top) + 1

    def index(self, value: str) -> int:
        """The bin of `value`: its place in the top K, else the other bin (last)."""
        try:
            return self.top.index(value)
        except ValueError:
            return len(self.top)

    def positions(self) -> dict[str, int]:
        """Top category -> bin (cached)."""
        found: dict[str, int] | None = self.__dict__.get("_positions")
        if found is None:
            found = {v: i for i, v in enumerate(self.top)}
            object.__setattr__(self, "_positions", found)
        return found

    def unseen(self, value: str) -> bool:
        """True if the reference never held `value` (False when not known)."""
        return self.complete and value not in self.seen

    def counts(self, values: Iterable[object]) -> list[int]:
        """Counts of the string `values` per bin."""
        out = [0] * self.size
        for v in values:
            if isinstance(v, str):
                out[self.index(v)] += 1
        return out

    def names(self) -> list[str]:
        """Bin names, in order."""
        return [*self.top, OTHER]

    def to_json(self) -> dict[str, object]:
        """The bins as stored in the reference."""
        return {"top": list(self.top), "seen": sorted(self.seen), "complete": self.complete}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CategoricalBins:
        """Bins stored by `to_json`."""
        top = data["top"]
        seen = data["seen"]
        assert isinstance(top, list) and isinstance(seen, list)
        return cls(tuple(top), frozenset(seen), bool(data["complete"]))
