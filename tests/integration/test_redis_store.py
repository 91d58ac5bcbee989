"""The Redis store against a real valkey-server: round trips, replay, TTLs, outages, AUTH,
HTTP, exports. The writer path is RedisWriter (+ write_with_retry), as the sink runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from processors.alerting.silence_store import SilenceStore, load_silences, new_silence
from processors.alerting.silences import Silence
from query.export import export_csv, export_tensorboard
from query.http_api import create_api
from query.reader import MetricsReader
from sinks.app import write_with_retry
from sinks.local_redis import LocalRedis
from sinks.plan import SeriesLimits, WritePlan
from sinks.redis_writer import RedisWriter
from stepstream.contract import (
    Alert,
    Batch,
    CrossRankStats,
    CrossRankUpdate,
    Record,
    WindowStats,
    WindowUpdate,
)
from stepstream.keys import SERIES_COARSE, SERIES_STEP, SERIES_TIME, RedisKeys, text_series_member
from stepstream.redis_client import WRITE_COMMANDS, acl_rules, async_client, sync_client
from stepstream.settings import Settings
from stepstream.stored_stats import OpenStats, OpenWindowUpdate

pytestmark = pytest.mark.integration

RETENTION_S = 3600
KEYS = RedisKeys()


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRedis]:
    with LocalRedis() as srv:
        yield srv


@pytest.fixture
def run() -> str:
    return f"st-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def reader(server: LocalRedis) -> Iterator[MetricsReader]:
    with MetricsReader.from_url(server.url) as r:
        yield r


def value(rank: int, step: int) -> float:
    if (rank, step) == (1, 30):
        return math.nan
    return 1.0 / (1 + step) + rank


def batches(run: str, ranks: int = 2, steps: int = 60, per: int = 10) -> list[Batch]:
    out = []
    for start in range(0, steps, per):
        for rank in range(ranks):
            out.append(
                Batch(
                    run=run,
                    rank=rank,
                    world=ranks,
                    records=[
                        Record(
                            seq=s,
                            t=1_700_000_000.0 + s / 10,
                            step=s,
                            values={"loss": value(rank, s), "grad/norm:l1": float(s)},
                        )
                        for s in range(start, start + per)
                    ],
                )
            )
    return out


def updates(run: str, steps: int = 60) -> list[WindowUpdate]:
    out = []
    for step in range(9, steps, 10):
        for rank in (0, 1):
            v = value(rank, step)
            stats = OpenStats.model_validate(
                {
                    "count": step + 1,
                    "mean": 0.5 + rank,
                    "min": 0.1,
                    "max": 1.0 + rank,
                    "last": v,
                    "std": 0.25,
                    "p95": 0.9,
                }
            )
            out.append(
                OpenWindowUpdate(
                    run=run,
                    rank=rank,
                    world=2,
                    node=f"n{rank}",
                    step=step,
                    t=time.time(),
                    latest={"loss": v},
                    windows={"50steps": {"loss": stats}, "10s": {"loss": stats}},
                )
            )
    return out


def alerts(run: str) -> list[Alert]:
    base = {
        "fingerprint": f"nonfinite/{run}/1/loss",
        "rule": "nonfinite",
        "run": run,
        "rank": 1,
        "metric": "loss",
        "step": 30,
        "raised_at": 5.0,
        "evidence": {"value": math.nan},
    }
    return [
        Alert(status="firing", t=3.0, **base),
        Alert(status="resolved", t=4.0, **base),
        Alert(status="firing", t=6.0, **base),
    ]


def write_all(
    url: str,
    messages: Sequence[object],
    flush_every: int,
    limits: SeriesLimits | None = None,
    cluster: bool = False,
    clock: Callable[[], float] = time.time,
) -> None:
    """Plan and write `messages` in flushes of `flush_every`, like the sink's take()."""

    async def go() -> None:
        client = async_client(url, cluster)
        writer = RedisWriter(client, RETENTION_S, clock)
        try:
            for i in range(0, len(messages), flush_every):
                plan = WritePlan(KEYS, limits or SeriesLimits())
                for m in messages[i : i + flush_every]:
                    if isinstance(m, Batch):
                        plan.add_batch(m)
                    elif isinstance(m, WindowUpdate):
                        plan.add_window_update(m)
                    elif isinstance(m, CrossRankUpdate):
                        plan.add_crossrank(m)
                    else:
                        assert isinstance(m, Alert)
                        plan.add_alert(m)
                await write_with_retry(writer, plan, max_backoff_s=0.2)
        finally:
            await client.aclose()

    asyncio.run(go())


def all_messages(run: str) -> list[object]:
    return [*batches(run), *updates(run), *alerts(run)]


def test_write_then_read_round_trips_exactly(
    server: LocalRedis, reader: MetricsReader, run: str
) -> None:
    write_all(server.url, all_messages(run), flush_every=7)
    series = reader.series(run, "loss", rank=1)
    assert [p.step for p in series.points] == list(range(60))
    for p in series.points:
        expected = value(1, p.step or 0)
        assert (math.isnan(p.value) and math.isnan(expected)) or p.value == expected
    by_time = reader.series_by_time(
        run, "grad/norm:l1", rank=0, from_t=1_700_000_001.0, to_t=1_700_000_002.0
    )
    assert [(p.step, p.value) for p in by_time.points] == [(s, float(s)) for s in range(10, 21)]
    assert reader.series_names(run) == [
        (0, "grad/norm:l1"),
        (0, "loss"),
        (1, "grad/norm:l1"),
        (1, "loss"),
    ]
    rows = {(r.window, r.rank): r.stats for r in reader.rolling(run)}
    assert set(rows) == {(w, r) for w in ("10s", "50steps") for r in (0, 1)}
    assert rows[("50steps", 1)].count == 60 and rows[("50steps", 1)].max == 2.0
    assert rows[("50steps", 1)].numbers()["p95"] == 0.9  # a stat WindowStats lacks today
    assert reader.latest(run) == {(0, "loss"): value(0, 59), (1, "loss"): value(1, 59)}
    meta = reader.run_meta(run)
    assert (meta.world, meta.windows) == (2, ["10s", "50steps"])
    assert [(r.rank, r.node, r.step, r.alive) for r in meta.ranks] == [
        (0, "n0", 59, True),
        (1, "n1", 59, True),
    ]
    history = reader.alerts(run)
    assert [(a.status, a.t) for a in history] == [
        ("firing", 3.0),
        ("resolved", 4.0),
        ("firing", 6.0),
    ]
    assert math.isnan(history[0].evidence["value"] or 0.0)
    assert [a.t for a in reader.active_alerts(run)] == [6.0]
    assert run in [r.run for r in reader.runs()]


def test_series_written_as_text_by_the_previous_release_still_read(
    server: LocalRedis, reader: MetricsReader, run: str
) -> None:
    # Steps 0-29 as the previous release stored them (text members), then the sink
    # writes steps 20-59 (20-29 again: its uncommitted range replayed after the upgrade).
    admin = redis.Redis.from_url(server.url)
    try:
        for kind, every in ((SERIES_STEP, 1), (SERIES_COARSE, 10)):
            admin.zadd(
                KEYS.series(run, kind, 1, "loss"),
                {text_series_member(s, s, value(1, s)): s for s in range(0, 30, every)},
            )
        admin.zadd(
            KEYS.series(run, SERIES_TIME, 1, "gpu"),
            {
                text_series_member(None, 0, math.inf): 1_700_000_000_000.0,
                text_series_member(None, 1, 50.0): 1_700_000_001_000.0,  # replayed below
            },
        )
    finally:
        admin.close()
    stepless = Batch(
        run=run, rank=1, records=[Record(seq=1, t=1_700_000_001.0, values={"gpu": 50.0})]
    )
    write_all(server.url, [*[b for b in batches(run) if b.rank == 1][2:], stepless], 4)
    got = reader.series(run, "loss", rank=1)
    assert [p.step for p in got.points] == list(range(60))
    want = [value(1, s) for s in range(60)]
    assert [repr(p.value) for p in got.points] == [repr(v) for v in want]  # NaN at 30
    assert reader.step_columns_many(run, [(1, "loss")])[0][0] == list(range(60))
    gpu = reader.series_by_time(run, "gpu", rank=1)
    assert [(p.t, p.value) for p in gpu.points] == [
        (1_700_000_000.0, math.inf),
        (1_700_000_001.0, 50.0),
    ]
    raw = reader.raw_points(run, "loss", rank=1)
    assert [p.step for p in raw] == list(range(60))
    # Window stats: rank 1's value as the previous release stored it (a JSON object, named
    # by its field only) beside rank 0's, written by the sink now.
    stats = WindowStats(count=3, mean=math.nan, min=0.5, max=2.0, last=1.0)
    admin = redis.Redis.from_url(server.url)
    try:
        admin.hset(KEYS.window(run, "50steps"), "1|loss", stats.model_dump_json())
        admin.sadd(KEYS.windows_index(run), "50steps")
    finally:
        admin.close()
    write_all(server.url, [u for u in updates(run) if u.rank == 0][-1:], 1)
    rows = reader.rolling(run, "50steps")
    assert [(r.rank, r.metric, r.stats.count, r.stats.max) for r in rows] == [
        (0, "loss", 60, 1.0),
        (1, "loss", 3, 2.0),
    ]
    assert math.isnan(rows[1].stats.mean or 0.0) and rows[0].stats.p95 == 0.9


def test_replaying_a_range_twice_changes_nothing(
    server: LocalRedis, reader: MetricsReader, run: str
) -> None:
    limits = SeriesLimits(
        max_points=25, decimate_every=5, coarse_max_points=8, time_horizon_s=4.0, time_max_points=30
    )
    messages = all_messages(run)
    write_all(server.url, messages, flush_every=5, limits=limits)
    before = reader.dump_run(run)
    # The same range again, flushed in other groupings (a rebalance mid-range).
    write_all(server.url, messages, flush_every=3, limits=limits)
    write_all(server.url, messages[10:40], flush_every=11, limits=limits)
    after = reader.dump_run(run)
    # liveness and latest carry wall-clock t from the updates, identical on replay
    assert after == before
    assert len(before) >= 15
    # Trims applied: newest 25 raw steps, decimated older ones, time horizon of 4 s.
    series = reader.series(run, "loss", rank=0)
    steps = [p.step for p in series.points]
    assert steps == [0, 5, 10, 15, 20, 25, 30, *range(35, 60)][-len(steps) :]
    assert steps[-25:] == list(range(35, 60)) and series.decimated_before == 35
    # Ranges: inside the raw points (no coarse read), across the edge, and before it only.
    ranges = {(40, 44): [40, 41, 42, 43, 44], (20, 37): [20, 25, 30, 35, 36, 37]}
    ranges[(5, 30)] = [5, 10, 15, 20, 25, 30]
    for (lo, hi), want in ranges.items():
        part = reader.series(run, "loss", rank=0, from_step=lo, to_step=hi)
        got = [p.step for p in part.points]
        assert got == [s for s in want if s in steps], (lo, hi, got)
        assert part.decimated_before == (35 if got and got[0] < 35 else None)
    by_time = reader.series_by_time(run, "loss", rank=0)
    # The time index keeps the newest 30 steps (30..59) of the 4 s horizon (19..59); their
    # values are those the step series still holds: 30 (decimated) and 35..59 (raw).
    assert [p.step for p in by_time.points] == [30, *range(35, 60)]


def test_every_per_run_key_has_a_ttl_within_retention(
    server: LocalRedis, reader: MetricsReader, run: str
) -> None:
    write_all(server.url, all_messages(run), flush_every=50)
    client = redis.Redis.from_url(server.url)
    try:
        keys = [k.decode() for k in client.scan_iter(match=KEYS.run_pattern(run))]
        assert len(keys) >= 15
        ttls = {k: client.ttl(k) for k in keys}
        assert all(0 < t <= RETENTION_S for t in ttls.values()), ttls
    finally:
        client.close()


def test_redis_killed_mid_stream_loses_nothing(run: str) -> None:
    """RedisWriter + write_with_retry (the sink's write path) against a server that is
    killed -9 and restarted on the same port while the writer keeps going."""
    messages: list[object] = list(batches(run, ranks=2, steps=200, per=5))
    with LocalRedis(persist=True) as srv:

        async def go() -> int:
            client = async_client(srv.url, socket_timeout=1, socket_connect_timeout=1)
            writer = RedisWriter(client, RETENTION_S)
            retries = 0
            try:
                for i in range(0, len(messages), 4):
                    if i == 20:
                        srv.kill()
                        loop = asyncio.get_running_loop()
                        loop.call_later(1.0, srv.start)  # back after a second
                    plan = WritePlan(KEYS)
                    for m in messages[i : i + 4]:
                        plan.add_batch(m)  # type: ignore[arg-type]
                    start = time.monotonic()
                    await write_with_retry(writer, plan, max_backoff_s=0.2)
                    retries += time.monotonic() - start > 0.5
            finally:
                await client.aclose()
            return retries

        assert asyncio.run(go()) >= 1  # a write did wait for the server
        with MetricsReader.from_url(srv.url) as reader:
            for rank in (0, 1):
                points = reader.series(run, "loss", rank=rank).points
                assert [p.step for p in points] == list(range(200))


def test_auth_password_urls_work_and_a_wrong_password_fails(run: str) -> None:
    with LocalRedis(password="s3cret-pw") as srv:
        write_all(srv.url, batches(run, steps=20), flush_every=4)
        with MetricsReader.from_url(srv.url) as reader:
            assert len(reader.series(run, "loss", rank=0).points) == 20
        wrong = srv.url.replace("s3cret-pw", "nope")
        with (
            MetricsReader.from_url(wrong) as reader,
            pytest.raises(redis.exceptions.AuthenticationError),
        ):
            reader.runs()


@dataclass
class AclUser:
    """A user made for one test: its URL and what the server refused it."""

    url: str
    name: str
    admin: redis.Redis

    def refusals(self) -> set[tuple[str, str]]:
        """(reason, object) of every ACL LOG entry of this user: ("command", "zadd") ..."""
        return {
            (e["reason"], e["object"]) for e in self.admin.acl_log() if e["username"] == self.name
        }


@contextlib.contextmanager
def acl_user(server: LocalRedis, rules: list[str]) -> Iterator[AclUser]:
    """A user with `rules` on `server` for the duration of the block."""
    name, password = f"u-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", *rules)
        yield AclUser(f"redis://{name}:{password}@127.0.0.1:{server.port}/0", name, admin)
    finally:
        admin.execute_command("ACL", "DELUSER", name)
        admin.close()


def test_least_privilege_acl_user_runs_the_sink_reader_and_silences(
    server: LocalRedis, run: str
) -> None:
    """The ACL documented in docs/redis-schema.md: the sink prefix's keys and alert
    channels, and only the commands stepstream sends."""
    with acl_user(server, acl_rules(KEYS)) as user:
        url = user.url
        subscriber = redis.Redis.from_url(server.url).pubsub()
        try:
            subscriber.subscribe(KEYS.alerts_channel(run))
            write_all(url, all_messages(run), flush_every=7)
            published = [subscriber.get_message(timeout=2) for _ in range(3)]
        finally:
            subscriber.close()
        assert [m["type"] for m in published if m] == ["subscribe", "message", "message"]
        with MetricsReader.from_url(url, retention_s=RETENTION_S) as reader:
            assert [p.step for p in reader.series(run, "loss", rank=0).points] == list(range(60))
            timed = reader.series_by_time(run, "grad/norm:l1", rank=0, to_t=1_700_000_000.5)
            assert [(p.step, p.value) for p in timed.points] == [(s, float(s)) for s in range(6)]
            assert reader.latest(run) == {(0, "loss"): value(0, 59), (1, "loss"): value(1, 59)}
            assert {(r.window, r.rank) for r in reader.rolling(run)} == {
                (w, r) for w in ("10s", "50steps") for r in (0, 1)
            }
            meta = reader.run_meta(run)
            assert (meta.world, meta.windows, 0 < (meta.ttl_s or 0) <= RETENTION_S) == (
                2,
                ["10s", "50steps"],
                True,
            )
            assert [(a.status, a.t) for a in reader.alerts(run)] == [
                ("firing", 3.0),
                ("resolved", 4.0),
                ("firing", 6.0),
            ]
            assert [a.t for a in reader.active_alerts(run)] == [6.0]
            assert run in [r.run for r in reader.runs()]
        # The CLI's silence commands and the alerting stage's silence refresh.
        client = sync_client(url)
        try:
            store = SilenceStore(client, KEYS)
            silence = new_silence({"run": run}, 60.0, "ops", "acl test")
            store.add(silence)
            assert store.expire(silence.id)
            assert silence.id in [s.id for s in store.list(include_expired=True)]
        finally:
            client.close()
        loaded = asyncio.run(_load_silences(url))
        assert silence.id in [s.id for s in loaded]
        # Nothing was refused, not even what redis-py ignores (CLIENT SETINFO).
        assert user.refusals() == set()


async def _load_silences(url: str) -> list[Silence]:
    client = async_client(url)
    try:
        return await load_silences(client, KEYS)
    finally:
        await client.aclose()


def test_read_only_acl_user_queries_but_cannot_write(server: LocalRedis, run: str) -> None:
    write_all(server.url, all_messages(run), flush_every=20)
    with (
        acl_user(server, acl_rules(KEYS, read_only=True)) as user,
        MetricsReader.from_url(user.url) as reader,
        MetricsReader.from_url(server.url) as admin_view,
    ):
        assert reader.series(run, "loss", rank=1).stored == 60
        assert reader.rolling(run) == admin_view.rolling(run)
        assert [a.t for a in reader.alerts(run)] == [3.0, 4.0, 6.0]
        assert user.refusals() == set()
        with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions to run"):
            write_all(user.url, batches(run, steps=10), flush_every=10)
        refused = user.refusals()
        assert {reason for reason, _ in refused} == {"command"}
        assert ("command", "zadd") in refused
        assert {command for _, command in refused} <= set(WRITE_COMMANDS)


def test_acl_user_of_another_prefix_gets_no_permission_error(server: LocalRedis, run: str) -> None:
    with acl_user(server, acl_rules(RedisKeys("elsewhere"))) as user:
        with pytest.raises(
            redis.exceptions.NoPermissionError, match="No permissions to access a key"
        ):
            write_all(user.url, batches(run, steps=10), flush_every=10)
        with (
            MetricsReader.from_url(user.url) as reader,
            pytest.raises(redis.exceptions.NoPermissionError),
        ):
            reader.runs()
        refused = user.refusals()
        # keys only: the updates notice is refused at the run's key it is routed by
        assert {reason for reason, _ in refused} == {"key"}
        assert ("key", KEYS.runs()) in refused
        assert all(key.startswith(f"{KEYS.prefix}:") for _, key in refused)
    with MetricsReader.from_url(server.url) as reader:
        assert reader.series_names(run) == []  # nothing got through


def test_http_api_serves_the_same_queries_and_metrics(server: LocalRedis, run: str) -> None:
    write_all(server.url, all_messages(run), flush_every=20)
    api = create_api(lambda: MetricsReader.from_url(server.url), metrics_max_series=3)
    with TestClient(api) as http:
        assert run in [r["run"] for r in http.get("/runs").json()]
        assert http.get(f"/runs/{run}").json()["world"] == 2
        latest = http.get(f"/runs/{run}/latest").json()
        assert latest[0] == {"rank": 0, "metric": "loss", "value": value(0, 59)}
        series = http.get(f"/runs/{run}/series/1/loss", params={"points": 10}).json()
        assert series["stored"] == 60 and series["method"] == "lttb"
        assert {"x": 30.0, "value": "NaN", "step": 30, "t": None} in series["points"]
        timed = http.get(
            f"/runs/{run}/series/0/grad/norm:l1", params={"by": "time", "from": 1_700_000_005.0}
        ).json()
        assert [p["step"] for p in timed["points"]] == list(range(50, 60))
        rolling = http.get(f"/runs/{run}/rolling", params={"window": "50steps"}).json()
        assert rolling[1]["stats"]["std"] == 0.25
        assert len(http.get(f"/runs/{run}/alerts").json()) == 3
        assert len(http.get(f"/runs/{run}/alerts", params={"active": True}).json()) == 1
        assert http.get("/runs/bad%7Bid/latest").status_code == 400
        assert http.get("/runs/nope-run").status_code == 404
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert "stepstream_exporter_series 3.0" in metrics.text
        assert "/runs/{run}/series/{rank}/{metric}" in http.get("/openapi.json").json()["paths"]


def test_crossrank_and_quality_round_trip_through_reader_http_and_cli(
    server: LocalRedis, run: str
) -> None:
    stats = CrossRankStats(ranks=2, mean=1.5, min=1.0, max=2.0, std=0.5, argmin=1, argmax=0)
    updates = [
        CrossRankUpdate(
            run=run,
            step=step,
            t=float(step),
            world=2,
            stats={"loss": stats.model_copy(update={"mean": float(step)})},
            quality={"50steps": {"quality/val/acc": WindowStats(count=64 * step, mean=0.5)}},
        )
        for step in (1, 2, 3)
    ]
    write_all(server.url, updates, flush_every=2)
    with MetricsReader.from_url(server.url) as reader:
        (row,) = reader.crossrank(run)
        assert (row.metric, row.step, row.t, row.ranks, row.mean) == ("loss", 3, 3.0, 2, 3.0)
        assert (row.min, row.max, row.std, row.argmin, row.argmax) == (1.0, 2.0, 0.5, 1, 0)
        (quality,) = reader.quality(run)
        assert (quality.window, quality.metric) == ("50steps", "quality/val/acc")
        assert (quality.stats.count, quality.stats.mean) == (192, 0.5)
    api = create_api(lambda: MetricsReader.from_url(server.url))
    with TestClient(api) as http:
        assert http.get(f"/runs/{run}/crossrank").json()[0]["mean"] == 3.0
        assert http.get(f"/runs/{run}/quality").json()[0]["stats"]["count"] == 192
    env = {**os.environ, "STEPSTREAM_REDIS_URL": server.url}
    out = subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "query", "--run", run, "--across-ranks", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r.get("metric") for r in rows] == ["loss", "quality/val/acc"]


def test_tensorboard_and_csv_exports_read_back(
    server: LocalRedis, reader: MetricsReader, run: str, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_all(server.url, batches(run, steps=40), flush_every=6)
    assert export_tensorboard(reader, run, tmp_path / "tb") == 2 * 2 * 40
    acc = EventAccumulator(str(tmp_path / "tb" / "rank1"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["grad/norm:l1", "loss"]
    got = [(e.step, e.value, e.wall_time) for e in acc.Scalars("loss")]
    assert [s for s, _, _ in got] == list(range(40))
    for step, v, wall in got:
        expected = value(1, step)
        # TensorBoard stores float32
        assert (math.isnan(v) and math.isnan(expected)) or math.isclose(v, expected, rel_tol=1e-6)
        assert math.isclose(wall, 1_700_000_000.0 + step / 10, abs_tol=1e-3)
    assert export_csv(reader, run, tmp_path / "x.csv") == 160
    lines = (tmp_path / "x.csv").read_text().splitlines()
    assert lines[0] == "run,rank,metric,step,t,value"
    assert f"{run},1,loss,30,1700000003.0,nan" in lines


def test_cli_query_views_and_export(server: LocalRedis, run: str, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from stepstream.cli import app

    write_all(server.url, all_messages(run), flush_every=30)
    cli = CliRunner()
    base = ["query", "--redis-url", server.url, "--state-dir", str(tmp_path), "--run", run]

    def as_json(*extra: str) -> object:
        result = cli.invoke(app, [*base, *extra, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    latest = as_json("--latest")
    assert latest == [
        {"rank": 0, "metric": "loss", "value": value(0, 59)},
        {"rank": 1, "metric": "loss", "value": value(1, 59)},
    ]
    series = as_json("--series", "loss", "--rank", "1", "--from-step", "28", "--to-step", "31")
    assert [(p["step"], p["value"]) for p in series["points"]] == [
        (28, value(1, 28)),
        (29, value(1, 29)),
        (30, "NaN"),
        (31, value(1, 31)),
    ]
    assert len(as_json("--series", "loss", "--points", "10")["points"]) <= 11
    assert [a["status"] for a in as_json("--alerts")] == ["firing", "resolved", "firing"]
    assert [r["rank"] for r in as_json("--ranks")["ranks"]] == [0, 1]
    rolling = as_json("--window", "50steps")
    assert {(r["rank"], r["stats"]["p95"]) for r in rolling} == {(0, 0.9), (1, 0.9)}
    table = cli.invoke(app, base)
    assert table.exit_code == 0 and "p95" in table.output and "50steps" in table.output
    # The runs table shows when a run was last active as a local time, not Unix seconds.
    runs = cli.invoke(app, base[:-2])
    with MetricsReader.from_url(server.url) as reader:
        (info,) = [r for r in reader.runs() if r.run == run]
    shown = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.last_activity))
    assert runs.exit_code == 0 and shown in runs.output, runs.output
    bad = cli.invoke(app, ["query", "--redis-url", server.url, "--run", "a{b}"])
    assert bad.exit_code == 1 and "invalid run id" in bad.output
    out = cli.invoke(
        app,
        [
            "export",
            "--redis-url",
            server.url,
            "--state-dir",
            str(tmp_path),
            "--run",
            run,
            "--csv",
            str(tmp_path / "r.csv"),
        ],
    )
    assert out.exit_code == 0 and (tmp_path / "r.csv").read_text().count("\n") == 241


def test_only_unsuppressed_alerts_reach_pubsub(
    server: LocalRedis, reader: MetricsReader, run: str
) -> None:
    import redis

    subscriber = redis.Redis.from_url(server.url).pubsub()
    subscriber.subscribe(KEYS.alerts_channel(run))
    try:
        assert subscriber.get_message(timeout=2)["type"] == "subscribe"  # type: ignore[index]
        base = {"rule": "spike", "run": run, "rank": 0, "t": 5.0, "raised_at": 6.0}
        muted = Alert(fingerprint="m1", suppressed_by="silence:s1", **base)
        loud = Alert(fingerprint="l1", **base)
        write_all(server.url, [muted, loud], flush_every=10)
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not got:
            message = subscriber.get_message(timeout=0.5)
            if message and message["type"] == "message":
                got.append(json.loads(message["data"])["fingerprint"])
        assert got == ["l1"]
        assert subscriber.get_message(timeout=0.5) is None
    finally:
        subscriber.close()
    assert sorted(a.fingerprint for a in reader.alerts(run)) == ["l1", "m1"]


def activity(run: str, t: float, step: int = 0) -> Batch:
    """One point of `run` at event time `t`."""
    return Batch(run=run, rank=0, records=[Record(seq=step, t=t, step=step, values={"loss": 1.0})])


def test_runs_idle_longer_than_the_retention_leave_the_registry(run: str) -> None:
    """A store of its own: the registry is global, and pruning it is what is tested."""
    now = time.time()
    then = now - 2 * RETENTION_S
    old, fresh = f"{run}-old", f"{run}-new"
    with LocalRedis() as srv:
        admin = redis.Redis.from_url(srv.url)
        try:
            # Written two retentions ago, when it was fresh.
            write_all(srv.url, [activity(old, then)], flush_every=1, clock=lambda: then)
            with MetricsReader.from_url(srv.url) as everything:
                assert [(r.run, r.last_activity) for r in everything.runs()] == [(old, then)]
            # Before any write prunes it, a reader given the retention hides it already.
            settings = Settings(redis_url=srv.url, retention_s=RETENTION_S)
            with MetricsReader.from_settings(settings) as current:
                assert current.runs() == []
                assert [r.run for r in current.runs(now=then + 1)] == [old]

            write_all(srv.url, [activity(fresh, now)], flush_every=1)
            with MetricsReader.from_url(srv.url) as everything:
                assert [(r.run, r.last_activity) for r in everything.runs()] == [(fresh, now)]
                assert 0 < admin.ttl(KEYS.runs()) <= RETENTION_S  # an idle store empties

                # Its keys' TTLs ran on the server's clock, not the test's: expire them now.
                admin.delete(*admin.scan_iter(match=KEYS.run_pattern(old)))
                # A replay of the expired run rewrites its keys (they expire again) but does
                # not list it again; an older message of a live run does not move it back.
                write_all(
                    srv.url, [activity(old, then, step=1), activity(fresh, now - 60, step=1)], 1
                )
                assert [(r.run, r.last_activity) for r in everything.runs()] == [(fresh, now)]
                assert [p.step for p in everything.series(old, "loss").points] == [1]
                assert 0 < admin.ttl(KEYS.series(old, "step", 0, "loss")) <= RETENTION_S
        finally:
            admin.close()


def live_update_seen(settings: Settings, run: str, write: Callable[[], None]) -> str:
    """The first live-update event for `run` that the dashboard's subscription (made as
    `stepstream serve` makes it from `settings`) receives while `write` stores the run."""
    from query.dashboard.app import dashboard_options
    from query.dashboard.hub import UpdateHub

    factory = dashboard_options(settings, "127.0.0.1").hub_client
    assert factory is not None, "live updates are off with these settings"

    async def go() -> str:
        hub = UpdateHub(factory, RedisKeys(settings.key_prefix))
        listener = hub.listen(run)
        await hub.start()
        try:
            await asyncio.wait_for(hub.connected.wait(), 10)
            await asyncio.sleep(0.3)  # PSUBSCRIBE's reply is not awaited by redis-py
            await asyncio.to_thread(write)
            event, _ = await asyncio.wait_for(listener.queue.get(), 10)
            return event
        finally:
            await hub.stop()

    return asyncio.run(go())


def test_read_only_acl_user_gets_live_updates(server: LocalRedis, run: str) -> None:
    """A dashboard server running as the query-only user updates its pages live: its
    subscription is allowed (it used to be refused, and pages never updated)."""
    with acl_user(server, acl_rules(KEYS, read_only=True)) as user:
        settings = Settings(redis_url=user.url, redis_cluster=False)
        seen = live_update_seen(
            settings, run, lambda: write_all(server.url, all_messages(run), flush_every=20)
        )
        assert seen in ("update", "alert")
        assert user.refusals() == set()
