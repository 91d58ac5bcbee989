"""The query API: typed reads of what the sink wrote to Redis."""

from __future__ import annotations

import json

import redis
from pydantic import BaseModel

from stepstream.contract import Alert, WindowStats
from stepstream.keys import RedisKeys, parse_series_field


class RunInfo(BaseModel):
    """A run in the registry."""

    run: str
    last_activity: float
    world: int | None = None


class RankLiveness(BaseModel):
    """The latest thing heard from one rank."""

    rank: int
    node: str = ""
    step: int | None = None
    t: float = 0.0


class RollingRow(BaseModel):
    """Rolling stats of one (rank, metric) over one window."""

    rank: int
    metric: str
    window: str
    stats: WindowStats


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class MetricsReader:
    """Reads runs, rolling stats, latest values and alerts of the Redis store."""

    def __init__(self, client: redis.Redis, keys: RedisKeys | None = None) -> None:
        self._client = client
        self.keys = keys or RedisKeys()

    @classmethod
    def from_url(cls, url: str, key_prefix: str = "stepstream") -> MetricsReader:
        """A reader over a Redis URL (``redis://``, ``rediss://``)."""
        return cls(redis.Redis.from_url(url), RedisKeys(key_prefix))

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()

    def runs(self) -> list[RunInfo]:
        """Every run, most recently active first."""
        entries = self._client.zrevrange(self.keys.runs(), 0, -1, withscores=True)
        out = []
        for member, score in entries:
            run = _text(member)
            world = self._client.hget(self.keys.meta(run), "world")
            out.append(RunInfo(run=run, last_activity=score, world=int(world) if world else None))
        return out

    def windows(self, run: str) -> list[str]:
        """The window names a run has stats for."""
        return sorted(_text(w) for w in self._client.smembers(self.keys.windows_index(run)))

    def rolling(self, run: str, window: str | None = None) -> list[RollingRow]:
        """Rolling stats of every (rank, metric) of a run, sorted by window, rank, metric."""
        names = [window] if window else self.windows(run)
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.window(run, name))
        rows = []
        for name, mapping in zip(names, pipe.execute(), strict=True):
            for field, body in mapping.items():
                rank, metric = parse_series_field(_text(field))
                stats = WindowStats.model_validate_json(body)
                rows.append(RollingRow(rank=rank, metric=metric, window=name, stats=stats))
        rows.sort(key=lambda r: (r.window, r.rank, r.metric))
        return rows

    def latest(self, run: str) -> dict[tuple[int, str], float]:
        """Latest value of every (rank, metric) of a run."""
        mapping = self._client.hgetall(self.keys.latest(run))
        return {parse_series_field(_text(f)): float(_text(v)) for f, v in mapping.items()}

    def ranks(self, run: str) -> list[RankLiveness]:
        """Liveness of every rank of a run, by rank."""
        mapping = self._client.hgetall(self.keys.ranks(run))
        out = [RankLiveness(rank=int(_text(r)), **json.loads(b)) for r, b in mapping.items()]
        return sorted(out, key=lambda r: r.rank)

    def alerts(self, run: str, count: int = 100) -> list[Alert]:
        """The newest `count` alert transitions of a run, oldest first."""
        entries = self._client.xrevrange(self.keys.alerts(run), count=count)
        alerts = [Alert.model_validate_json(fields[b"alert"]) for _, fields in entries]
        return list(reversed(alerts))

    def active_alerts(self, run: str) -> list[Alert]:
        """Alerts of a run now firing."""
        bodies = self._client.hvals(self.keys.active_alerts(run))
        return sorted((Alert.model_validate_json(b) for b in bodies), key=lambda a: a.t)
