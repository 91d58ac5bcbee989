"""Label matching shared by selectors, silences and inhibition rules.

A matcher value is a glob (``loss*``) or several separated by ``|`` (``straggler|throughput``);
a leading ``!`` negates it. Matching is on an alert's labels as strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase


def match_value(pattern: str, value: str | None) -> bool:
    """True when `value` matches the pattern (None only matches ``*``)."""
    negate = pattern.startswith("!")
    body = pattern[1:] if negate else pattern
    if value is None:
        hit = body == "*"
    else:
        hit = any(fnmatchcase(value, alt) for alt in body.split("|"))
    return hit != negate


def match_all(matchers: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when every matcher matches the label of the same name."""
    return all(match_value(p, labels.get(name)) for name, p in matchers.items())
