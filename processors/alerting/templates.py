"""Alert summaries and descriptions with ``{{ name }}`` placeholders.

Deliberately not a template language: a rule file must not be able to run code, so only
named values are substituted, and unknown names stay visible instead of failing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")


def _show(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return f"{value:.4g}"
    return str(value)


def render(template: str, values: Mapping[str, object]) -> str:
    """Replace ``{{ name }}`` by ``values[name]``; ``{{ labels.team }}`` looks into dicts.
    Unknown names are left as ``<name?>`` so a typo shows in the alert, not as a crash."""

    def substitute(match: re.Match[str]) -> str:
        current: object = values
        for part in match.group(1).split("."):
            if isinstance(current, Mapping) and part in current:
                current = current[part]
            else:
                return f"<{match.group(1)}?>"
        return _show(current)

    return _PLACEHOLDER.sub(substitute, template)
