"""The store on a real 3-node Valkey cluster on loopback: a run's keys share one slot, so
the sink's pipelines and the alert script (3 keys) and multi-key reads of a run work."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from query.reader import MetricsReader
from sinks.local_redis import LocalRedis
from stepstream.errors import StackError
from stepstream.keys import RedisKeys
from stepstream.redis_client import acl_rules
from stepstream.settings import Settings

from .test_redis_store import KEYS, all_messages, live_update_seen, value, write_all

pytestmark = pytest.mark.integration

SLOT_RANGES = [(0, 5460), (5461, 10922), (10923, 16383)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[LocalRedis]]:
    nodes: list[LocalRedis] = []
    try:
        for _ in SLOT_RANGES:
            nodes.append(LocalRedis(cluster=True).start())
        reason = _form(nodes)
        if reason:
            pytest.skip(f"the 3-node cluster did not form: {reason}")
        yield nodes
    except StackError as exc:
        pytest.skip(f"cannot start cluster-mode servers: {exc}")
    finally:
        for node in nodes:
            node.close()


def _form(nodes: list[LocalRedis]) -> str | None:
    clients = [redis.Redis(port=n.port) for n in nodes]
    try:
        for client, (lo, hi) in zip(clients, SLOT_RANGES, strict=True):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for node in nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.cluster_port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [c.execute_command("CLUSTER", "INFO") for c in clients]
            text = [s.decode() if isinstance(s, bytes) else str(s) for s in states]
            if all("cluster_state:ok" in t and "cluster_known_nodes:3" in t for t in text):
                return None
            time.sleep(0.2)
        return f"cluster state after 20 s: {text[0][:200]!r}"
    except redis.RedisError as exc:
        return str(exc)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()


def test_sink_and_reader_work_on_redis_cluster(cluster: list[LocalRedis]) -> None:
    run = f"cl-{uuid.uuid4().hex[:8]}"
    url = cluster[0].url
    # Wait until a client sees the whole slot map (gossip settles after cluster_state ok).
    write_all(url, all_messages(run), flush_every=9, cluster=True)
    with MetricsReader.from_url(url, cluster=True) as reader:
        assert [p.step for p in reader.series(run, "loss", rank=0).points] == list(range(60))
        assert reader.latest(run)[(0, "loss")] == value(0, 59)
        assert [a.status for a in reader.alerts(run)] == ["firing", "resolved", "firing"]
        assert {r.window for r in reader.rolling(run)} == {"10s", "50steps"}
    keys = RedisKeys()
    client = RedisCluster.from_url(url)
    try:
        # A multi-key command over different keys of the run: legal only in one slot.
        members = client.execute_command("SUNION", keys.windows_index(run), keys.series_index(run))
        assert {m.decode() for m in members} == {
            "10s",
            "50steps",
            "0|loss",
            "1|loss",
            "0|grad/norm:l1",
            "1|grad/norm:l1",
        }
        slot = client.keyslot(keys.meta(run))
        owner = client.get_node_from_key(keys.meta(run))
        assert all(client.keyslot(k) == slot for k in keys.run_keys(run, ["50steps"]))
        assert owner is not None
    finally:
        client.close()


def test_least_privilege_acl_user_works_on_the_cluster(cluster: list[LocalRedis]) -> None:
    """The documented ACL covers what cluster clients add (slot map, command table).
    ACL users are per node: the rules go to every node, as an operator must do."""
    run = f"cl-{uuid.uuid4().hex[:8]}"
    name, password = f"u-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admins = [redis.Redis(port=n.port, decode_responses=True) for n in cluster]
    try:
        for admin in admins:
            admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", *acl_rules(KEYS))
        url = f"redis://{name}:{password}@127.0.0.1:{cluster[0].port}/0"
        write_all(url, all_messages(run), flush_every=9, cluster=True)
        with MetricsReader.from_url(url, cluster=True) as reader:
            assert [p.step for p in reader.series(run, "loss", rank=1).points] == list(range(60))
            assert [a.status for a in reader.alerts(run)] == ["firing", "resolved", "firing"]
            assert run in [r.run for r in reader.runs()]
        refused = [e for a in admins for e in a.acl_log() if e["username"] == name]
        assert refused == []
    finally:
        for admin in admins:
            with contextlib.suppress(redis.RedisError):
                admin.execute_command("ACL", "DELUSER", name)
            admin.close()


def test_live_updates_reach_the_dashboard_on_the_cluster(cluster: list[LocalRedis]) -> None:
    """The dashboard subscribes on one node; the sink's notices, published through the
    cluster client on whichever node, reach it (live updates used to be off on a cluster)."""
    run = f"cl-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=cluster[1].url, redis_cluster=True)
    write = lambda: write_all(cluster[0].url, all_messages(run), flush_every=9, cluster=True)  # noqa: E731
    assert live_update_seen(settings, run, write) in ("update", "alert")
