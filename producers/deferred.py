"""Values whose conversion to floats waits for the publisher thread.

The training thread stacks many numbers into one tensor and hands it over; ``tolist()``
(a device sync on GPU) then runs on the publisher thread, never on the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Deferred(Protocol):
    """Anything the publisher resolves off-thread into values and an optional text."""

    def resolve(self) -> tuple[dict[str, float], str | None]:
        """The record's values, and its text (None for none)."""
        ...


class TensorValues:
    """Names and a 1-d tensor (or any object with ``tolist()``) of the same length."""

    __slots__ = ("names", "tensor")

    def __init__(self, names: Sequence[str], tensor: Any) -> None:
        self.names = list(names)
        self.tensor = tensor

    def resolve(self) -> tuple[dict[str, float], str | None]:
        """Pair each name with its converted number."""
        numbers = self.tensor.tolist()
        return {n: float(v) for n, v in zip(self.names, numbers, strict=True)}, None
