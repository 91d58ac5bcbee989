"""What a batch of stage output becomes in Redis, computed without touching Redis.

Pure logic: the writer executes a WritePlan in one pipeline. Many values go in one HSET
(one mapping per key per flush) because Redis is command-bound, not value-bound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from stepstream.contract import Alert, WindowUpdate
from stepstream.keys import RedisKeys, format_value, series_field

ALERT_STREAM_MAXLEN = 10_000


@dataclass
class WritePlan:
    """Redis writes gathered from many messages; later values of a field replace earlier."""

    keys: RedisKeys
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    run_activity: dict[str, float] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)
    stream_entries: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    hash_deletes: dict[str, list[str]] = field(default_factory=dict)
    publishes: list[tuple[str, str]] = field(default_factory=list)
    window_names: dict[str, set[str]] = field(default_factory=dict)

    def _hset(self, key: str, mapping: dict[str, str]) -> None:
        self.hashes.setdefault(key, {}).update(mapping)

    def _touch(self, run: str, at: float) -> None:
        if at > self.run_activity.get(run, 0.0):
            self.run_activity[run] = at
        self.window_names.setdefault(run, set())

    def add_window_update(self, update: WindowUpdate) -> None:
        """Latest values, window stats, liveness and metadata of one rank's update."""
        keys, run, rank = self.keys, update.run, update.rank
        self._touch(run, update.t)
        self._hset(
            keys.latest(run),
            {series_field(rank, m): format_value(v) for m, v in update.latest.items()},
        )
        for window, stats in update.windows.items():
            if not stats:
                continue
            self._hset(
                keys.window(run, window),
                {series_field(rank, m): s.model_dump_json() for m, s in stats.items()},
            )
            self.window_names[run].add(window)
            self.sets.setdefault(keys.windows_index(run), set()).add(window)
        liveness = {"node": update.node, "step": update.step, "t": update.t}
        self._hset(keys.ranks(run), {str(rank): json.dumps(liveness)})
        meta = {"world": str(update.world), "last_t": repr(update.t)}
        self._hset(keys.meta(run), meta)

    def add_alert(self, alert: Alert) -> None:
        """History entry, active-set change and pub/sub message of one alert transition."""
        keys, run = self.keys, alert.run
        self._touch(run, alert.t)
        body = alert.model_dump_json()
        self.stream_entries.append(
            (keys.alerts(run), {"fingerprint": alert.fingerprint, "alert": body})
        )
        if alert.status == "firing":
            self._hset(keys.active_alerts(run), {alert.fingerprint: body})
        else:
            self.hash_deletes.setdefault(keys.active_alerts(run), []).append(alert.fingerprint)
            self.hashes.get(keys.active_alerts(run), {}).pop(alert.fingerprint, None)
        self.publishes.append((keys.alerts_channel(run), body))

    def expiring_keys(self) -> list[str]:
        """Every per-run key this plan touches; each gets the retention TTL."""
        out: list[str] = []
        for run, windows in self.window_names.items():
            out.extend(self.keys.run_keys(run, sorted(windows)))
        return out

    def is_empty(self) -> bool:
        """True when there is nothing to write."""
        return not (self.hashes or self.stream_entries or self.hash_deletes or self.publishes)
