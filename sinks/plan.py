"""What a batch of stage output becomes in Redis, computed without touching Redis.

Pure logic: the writer executes a WritePlan in one pipeline. Many values go in one HSET or
ZADD (one mapping per key per flush) because Redis is command-bound, not value-bound.

Every write is idempotent, so the sink may replay a Kafka range (it commits offsets only
after Redis took the writes, and a pipeline cut in half by an outage is resent whole):
hashes are overwritten with the same values, series points are sorted-set members that
hold everything identifying the point (ZADD of an existing member changes nothing), trims
keep the newest points by score whatever the grouping into flushes, and each alert
transition passes a dedup hash inside a script before it is appended to the history.
The run registry is the one write that depends on the clock: runs idle longer than the
retention leave it (see `WritePlan.registry_commands`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stepstream.contract import Alert, Batch, CrossRankUpdate, WindowUpdate
from stepstream.keys import (
    FIELD_SEPARATOR,
    GOODPUT_FIELD,
    SERIES_COARSE,
    SERIES_STEP,
    SERIES_TIME,
    RedisKeys,
    check_metric,
    check_window,
    format_value,
    pack_series_value,
    series_field,
    series_member,
    series_member_head,
    window_stats_value,
)
from stepstream.stored_stats import StoredRank
from stepstream.window_values import code_field, metric_code

ALERT_STREAM_MAXLEN = 10_000

# Appends an alert transition once: the dedup field (fingerprint|status|t) is claimed with
# HSETNX, and only a first claim adds to the history, updates the active set and
# publishes. Pending and firing alerts are active; resolved and withdrawn (a pending alert
# whose condition stopped before it fired) leave the set. A script, because a pipeline
# cannot make a write depend on another's reply; all its keys share the run's hash tag,
# so it runs on Redis Cluster too.
ALERT_SCRIPT = """
if redis.call('HSETNX', KEYS[2], ARGV[1], '1') == 0 then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'fingerprint', ARGV[2], 'alert', ARGV[4])
if ARGV[3] == 'firing' or ARGV[3] == 'pending' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
else
  redis.call('HDEL', KEYS[3], ARGV[2])
end
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[4]) end
return 1
"""

# PUBLISH of a run's updates notice, as a script that names one of the run's keys: Redis
# Cluster routes it to the run's slot (a pipelined bare PUBLISH has no key, and redis-py
# refuses it in cluster mode), and cluster PUBLISH reaches subscribers on every node.
NOTICE_SCRIPT = "return redis.call('PUBLISH', ARGV[1], ARGV[2])"


@dataclass(frozen=True)
class SeriesLimits:
    """How much of each raw series is kept (see Settings ``series_*``)."""

    max_points: int = 10_000
    decimate_every: int = 10
    coarse_max_points: int = 10_000
    time_horizon_s: float = 86_400.0
    time_max_points: int = 10_000

    @classmethod
    def from_settings(cls, settings: Any) -> SeriesLimits:
        """The limits configured in a stepstream Settings object."""
        return cls(
            max_points=settings.series_max_points,
            decimate_every=settings.series_decimate_every,
            coarse_max_points=settings.series_coarse_max_points,
            time_horizon_s=settings.series_time_horizon_s,
            time_max_points=settings.series_time_max_points,
        )


@dataclass
class SeriesWrite:
    """Points of one series gathered in one plan: member -> score, per stored shape."""

    by_step: dict[bytes, float] = field(default_factory=dict)
    coarse: dict[bytes, float] = field(default_factory=dict)
    by_time: dict[bytes, float] = field(default_factory=dict)
    newest_ms: float = float("-inf")


@dataclass(frozen=True)
class AlertWrite:
    """One alert transition, written through ALERT_SCRIPT."""

    keys: tuple[str, str, str]  # history stream, dedup hash, active hash
    dedup: str
    fingerprint: str
    status: str
    body: str
    channel: str

    def script_args(self) -> list[str]:
        """ARGV of ALERT_SCRIPT."""
        return [
            self.dedup,
            self.fingerprint,
            self.status,
            self.body,
            str(ALERT_STREAM_MAXLEN),
            self.channel,
        ]


@dataclass
class WritePlan:
    """Redis writes gathered from many messages; later values of a field replace earlier."""

    keys: RedisKeys
    limits: SeriesLimits = field(default_factory=SeriesLimits)
    hashes: dict[str, dict[str, str | bytes]] = field(default_factory=dict)
    run_activity: dict[str, float] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)
    alerts: list[AlertWrite] = field(default_factory=list)
    series: dict[tuple[str, int, str], SeriesWrite] = field(default_factory=dict)
    window_names: dict[str, set[str]] = field(default_factory=dict)
    time_index: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    values: int = 0
    """Metric values taken in (latest values, window stats, raw points), for throughput."""
    newest_step: dict[str, int] = field(default_factory=dict)
    """Per run, the newest step of the raw points in this plan (the updates notice)."""

    def _hset(self, key: str, mapping: Mapping[str, str | bytes]) -> None:
        self.hashes.setdefault(key, {}).update(mapping)

    def _touch(self, run: str, at: float) -> None:
        if at > self.run_activity.get(run, 0.0):
            self.run_activity[run] = at
        self.window_names.setdefault(run, set())

    def add_window_update(self, update: WindowUpdate) -> None:
        """Latest values, window stats, liveness and metadata of one rank's update.

        Raises ConfigError (and changes nothing) when a name could not be a safe key part.
        """
        keys, run, rank = self.keys, update.run, update.rank
        # Build everything first so a rejected update leaves the plan untouched.
        latest = {series_field(rank, m): format_value(v) for m, v in update.latest.items()}
        windows = {
            check_window(window): {
                series_field(rank, m): window_stats_value(
                    rank, m, window, {**s.__dict__, **(s.model_extra or {})}
                )
                for m, s in stats.items()
            }
            for window, stats in update.windows.items()
            if stats
        }
        self._touch(run, update.t)
        self._hset(keys.latest(run), latest)
        if windows:
            # The code table names the packed values' metrics. Written with every plan
            # that writes values (a field per metric per flush, not per update), so a
            # table lost with its key comes back with the next flush.
            names = {m for stats in update.windows.values() for m in stats}
            self._hset(keys.metric_codes(run), {code_field(metric_code(m)): m for m in names})
        for window, mapping in windows.items():
            self._hset(keys.window(run, window), mapping)
            self.window_names[run].add(window)
            self.sets.setdefault(keys.windows_index(run), set()).add(window)
        entry = StoredRank(node=update.node, step=update.step, t=update.t, status=update.status)
        liveness = entry.model_dump(exclude={"status"} if entry.status is None else set())
        self._hset(keys.ranks(run), {str(rank): json.dumps(liveness)})
        self._hset(keys.meta(run), {"world": str(update.world), "last_t": repr(update.t)})
        self.values += len(latest) + sum(len(m) for m in windows.values())

    def add_crossrank(self, update: CrossRankUpdate) -> None:
        """Cross-rank stats of one finished step and the run's quality windows.

        Raises ConfigError (and changes nothing) when a name could not be a safe key part.
        """
        keys, run = self.keys, update.run
        stats = {
            check_metric(m): json.dumps(
                {"step": update.step, "t": update.t, **s.model_dump(mode="json")}
            )
            for m, s in update.stats.items()
        }
        quality = {
            f"{check_window(w)}{FIELD_SEPARATOR}{check_metric(m)}": s.model_dump_json()
            for w, by_metric in update.quality.items()
            for m, s in by_metric.items()
        }
        self._touch(run, update.t)
        if stats:
            self._hset(keys.crossrank(run), stats)
        if quality:
            self._hset(keys.quality(run), quality)
        if update.goodput is not None:
            self._hset(keys.goodput(run), {GOODPUT_FIELD: update.goodput.model_dump_json()})
        self.values += len(stats) + len(quality)

    def add_batch(self, batch: Batch) -> None:
        """Every raw point of one telemetry batch, into its series by step and by time.

        Points with a step go to the by-step series (those whose step is a multiple of
        `decimate_every` also to the coarse series) and their record's step and time to
        the rank's time index; points without a step go to the by-time series.
        Members are `stepstream.keys.series_member` bytes, built from one head per record
        and the packed value (the same bytes, without a call per value).
        """
        metrics = {check_metric(m) for record in batch.records for m in record.values}
        limits, run, rank = self.limits, batch.run, batch.rank
        series = self.series
        for record in batch.records:
            if not record.values:
                continue
            t_ms = record.t * 1000.0
            step, seq = record.step, record.seq
            if step is not None:
                # One time-index entry per record, not per value: by-time reads of stepped
                # metrics go through it, so each value is written once (by step).
                index = self.time_index.setdefault((run, rank), {})
                index.setdefault(str(step), t_ms)
                coarse = step % limits.decimate_every == 0
            head = series_member_head(step, seq)
            for metric, value in record.values.items():
                write = series.get((run, rank, metric))
                if write is None:
                    write = series[(run, rank, metric)] = SeriesWrite()
                if head is not None:
                    member = head + pack_series_value(value)
                else:  # a step or seq outside int64: stored as text
                    member = series_member(step, seq, value)
                if step is not None:
                    write.by_step[member] = step
                    if coarse:
                        write.coarse[member] = step
                else:
                    write.by_time[member] = t_ms
                    write.newest_ms = max(write.newest_ms, t_ms)
            self.values += len(record.values)
            self._touch(run, record.t)
            if step is not None and step > self.newest_step.get(run, -1):
                self.newest_step[run] = step
        if metrics:
            names = self.sets.setdefault(self.keys.series_index(run), set())
            names.update(series_field(rank, m) for m in metrics)

    def add_alert(self, alert: Alert) -> None:
        """History entry, active-set change and pub/sub message of one alert transition."""
        keys, run = self.keys, alert.run
        self._touch(run, alert.t)
        self.alerts.append(
            AlertWrite(
                keys=(keys.alerts(run), keys.alerts_seen(run), keys.active_alerts(run)),
                dedup=f"{alert.fingerprint}|{alert.status}|{alert.t!r}",
                fingerprint=alert.fingerprint,
                status=alert.status,
                body=alert.model_dump_json(),
                # Silenced or inhibited: recorded, but subscribers are not notified.
                channel="" if alert.suppressed_by else keys.alerts_channel(run),
            )
        )
        self.values += 1

    def series_commands(self) -> list[tuple[Any, ...]]:
        """(command, args[, kwargs]) of every series write and trim, per series."""
        out: list[tuple[Any, ...]] = []
        lim = self.limits
        horizon_ms = lim.time_horizon_s * 1000.0
        for (run, rank, metric), write in self.series.items():
            if write.by_step:
                key = self.keys.series(run, SERIES_STEP, rank, metric)
                out.append(("zadd", (key, write.by_step)))
                out.append(("zremrangebyrank", (key, 0, -lim.max_points - 1)))
            if write.coarse:
                key = self.keys.series(run, SERIES_COARSE, rank, metric)
                out.append(("zadd", (key, write.coarse)))
                out.append(("zremrangebyrank", (key, 0, -lim.coarse_max_points - 1)))
            if write.by_time:
                key = self.keys.series(run, SERIES_TIME, rank, metric)
                out.append(("zadd", (key, write.by_time)))
                out.append(
                    ("zremrangebyscore", (key, "-inf", f"({write.newest_ms - horizon_ms!r}"))
                )
                out.append(("zremrangebyrank", (key, 0, -lim.time_max_points - 1)))
        for (run, rank), entries in self.time_index.items():
            key = self.keys.time_index(run, rank)
            newest = max(entries.values())
            # NX: a step keeps the time of its first record, whatever is replayed later.
            out.append(("zadd", (key, entries), {"nx": True}))
            out.append(("zremrangebyscore", (key, "-inf", f"({newest - horizon_ms!r}")))
            out.append(("zremrangebyrank", (key, 0, -lim.time_max_points - 1)))
        return out

    def registry_commands(self, now: float, retention_s: int) -> list[tuple[Any, ...]]:
        """(command, args[, kwargs]) keeping the run registry in step with the retention.

        Each run's newest activity in this plan goes in with ``ZADD GT`` (a replayed older
        message never moves a run back), runs whose last activity is older than
        ``now - retention_s`` are removed, and the registry itself gets the retention as
        TTL, so a store nobody writes to empties. Activity is event time, `now` the
        sink's clock: a run is listed while its newest event is within the retention.

        Runs of this plan that are already past the cutoff are not added: replaying the
        range of an expired run rewrites its per-run keys (which expire again after
        `retention_s`) but does not list the run again under its stale activity time.
        """
        if not self.run_activity:
            return []
        key = self.keys.runs()
        cutoff = now - retention_s
        fresh = {run: at for run, at in self.run_activity.items() if at >= cutoff}
        out: list[tuple[Any, ...]] = []
        if fresh:
            out.append(("zadd", (key, fresh), {"gt": True}))
        out.append(("zremrangebyscore", (key, "-inf", f"({cutoff!r}")))
        out.append(("expire", (key, retention_s)))
        return out

    def notice_commands(self) -> list[tuple[Any, ...]]:
        """One PUBLISH per run this plan writes to, on the run's updates channel, sent
        after the writes (through NOTICE_SCRIPT, keyed by the run's slot): a live view that
        fetches on the notice finds the points there.
        Per flush, not per value, so a busy run costs a few messages a second."""
        return [
            (
                "eval",
                (
                    NOTICE_SCRIPT,
                    1,
                    self.keys.latest(run),
                    self.keys.updates_channel(run),
                    json.dumps({"run": run, "step": self.newest_step.get(run)}),
                ),
            )
            for run in sorted(self.run_activity)
        ]

    def expiring_keys(self) -> list[str]:
        """Every per-run key this plan touches; each gets the retention TTL."""
        out: list[str] = []
        for run, windows in self.window_names.items():
            out.extend(self.keys.run_keys(run, sorted(windows)))
        for (run, rank, metric), write in self.series.items():
            if write.by_step:
                out.append(self.keys.series(run, SERIES_STEP, rank, metric))
            if write.coarse:
                out.append(self.keys.series(run, SERIES_COARSE, rank, metric))
            if write.by_time:
                out.append(self.keys.series(run, SERIES_TIME, rank, metric))
        out.extend(self.keys.time_index(run, rank) for run, rank in self.time_index)
        return out

    def is_empty(self) -> bool:
        """True when there is nothing to write."""
        return not (self.hashes or self.alerts or self.series or self.sets or self.time_index)
