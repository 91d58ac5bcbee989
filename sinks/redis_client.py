"""Redis clients built from settings: plain, AUTH/ACL and TLS URLs, or Redis Cluster.

Clients are created here, inside factories, never at import time.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from stepstream.keys import RedisKeys

# URLs carry everything else: redis://user:password@host:port/db for AUTH/ACL, rediss://
# for TLS (with ssl_cert_reqs, ssl_ca_certs ... as query parameters).

# Every command stepstream sends, for least-privilege ACL users (docs/redis-schema.md).
# The integration tests run the sink, the reader and the silence store as users with
# exactly these rules and check that the ACL LOG stays empty, so a command added to the
# code without being added here fails a test instead of a deployment.
CONNECT_COMMANDS = (
    "client|setinfo",  # redis-py names itself on connect (ignores a refusal, but it is logged)
    "cluster|slots",  # RedisCluster clients load the slot map
    "command",  # the asyncio RedisCluster client loads the command table
)
READ_COMMANDS = (
    "zrange",
    "hget",
    "hgetall",
    "hvals",
    "smembers",
    "ttl",
    "xrange",
    "xrevrange",
)
# Not granted: MetricsReader.dump_run (a debugging aid) also needs SCAN, TYPE and DUMP,
# and SCAN lists key names outside the key patterns of a user.
WRITE_COMMANDS = (
    "hset",
    "sadd",
    "zadd",
    "zremrangebyrank",
    "zremrangebyscore",
    "expire",
    "eval",
    # called by the sink's alert script; ACLs apply to commands inside scripts too
    "hsetnx",
    "xadd",
    "hdel",
    "publish",
)


def acl_rules(keys: RedisKeys, read_only: bool = False) -> list[str]:
    """``ACL SETUSER`` rules of a least-privilege stepstream user under `keys`' prefix.

    The full user runs the sink, the alerting stage, the query API and silences; the
    read-only one only queries (CLI, HTTP API, exports). Prepend ``on >PASSWORD``.
    """
    rules = ["resetkeys", f"~{keys.key_pattern()}", "resetchannels"]
    if not read_only:
        rules.append(f"&{keys.alerts_channel_pattern()}")
    commands = CONNECT_COMMANDS + READ_COMMANDS + (() if read_only else WRITE_COMMANDS)
    return [*rules, "-@all", *(f"+{c}" for c in commands)]


def sync_client(url: str, cluster: bool = False, **options: Any) -> redis.Redis | RedisCluster:
    """A blocking client for `url`; a RedisCluster client when `cluster` is set."""
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def async_client(
    url: str, cluster: bool = False, **options: Any
) -> aioredis.Redis | AsyncRedisCluster:
    """An asyncio client for `url`; a RedisCluster client when `cluster` is set."""
    if cluster:
        return AsyncRedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)
