"""The Redis key schema, defined once: the sink writes it, readers read it.

Every per-run key carries the hash tag ``{run}`` so one run lives in one Redis Cluster
slot and multi-key commands on a run work there. Run ids are validated against
``RUN_ID_PATTERN`` (no braces, colons or spaces), so a run id can never reach another
run's keys. Hash fields of a run are ``"<rank>|<metric>"``; metric names cannot hold ``|``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from stepstream.contract import METRIC_NAME_PATTERN, RUN_ID_PATTERN
from stepstream.errors import ConfigError

_RUN_RE = re.compile(RUN_ID_PATTERN)
_METRIC_RE = re.compile(METRIC_NAME_PATTERN)
FIELD_SEPARATOR = "|"


def check_run_id(run: str) -> str:
    """Return `run` if it is a valid run id, else raise ConfigError saying what is allowed."""
    if not _RUN_RE.match(run):
        raise ConfigError(
            f"invalid run id {run!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return run


@dataclass(frozen=True)
class RedisKeys:
    """Builds every Redis key and channel name stepstream uses."""

    prefix: str = "stepstream"

    def runs(self) -> str:
        """Sorted set: run id scored by its last activity (Unix seconds)."""
        return f"{self.prefix}:runs"

    def _run(self, run: str, suffix: str) -> str:
        return f"{self.prefix}:{{{check_run_id(run)}}}:{suffix}"

    def meta(self, run: str) -> str:
        """Hash: run metadata (world size, first/last seen, last step)."""
        return self._run(run, "meta")

    def ranks(self, run: str) -> str:
        """Hash: rank -> JSON liveness (node, pid, step, last event time, last seen)."""
        return self._run(run, "ranks")

    def latest(self, run: str) -> str:
        """Hash: ``rank|metric`` -> latest value (float text; NaN and Infinity as words)."""
        return self._run(run, "latest")

    def window(self, run: str, window: str) -> str:
        """Hash: ``rank|metric`` -> JSON WindowStats of one window (``50steps``, ``10s``)."""
        return self._run(run, f"win:{window}")

    def windows_index(self, run: str) -> str:
        """Set: the window names a run has stats for."""
        return self._run(run, "windows")

    def alerts(self, run: str) -> str:
        """Stream: every alert transition of a run, oldest first."""
        return self._run(run, "alerts")

    def active_alerts(self, run: str) -> str:
        """Hash: fingerprint -> JSON of each alert now firing."""
        return self._run(run, "alerts:active")

    def alerts_channel(self, run: str) -> str:
        """Pub/sub channel receiving each alert transition of a run as JSON."""
        return f"{self.prefix}:alerts:{check_run_id(run)}"

    def run_keys(self, run: str, windows: list[str]) -> list[str]:
        """Every per-run key, for TTL refresh and cleanup."""
        keys = [
            self.meta(run),
            self.ranks(run),
            self.latest(run),
            self.windows_index(run),
            self.alerts(run),
            self.active_alerts(run),
        ]
        keys.extend(self.window(run, w) for w in windows)
        return keys


def series_field(rank: int, metric: str) -> str:
    """Hash field of one series inside a run's hashes."""
    if not _METRIC_RE.match(metric):
        raise ConfigError(f"invalid metric name {metric!r}: see METRIC_NAME_PATTERN")
    return f"{rank}{FIELD_SEPARATOR}{metric}"


def parse_series_field(field: str) -> tuple[int, str]:
    """Inverse of series_field."""
    rank, _, metric = field.partition(FIELD_SEPARATOR)
    return int(rank), metric


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
