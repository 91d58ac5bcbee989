"""Redis clients built from settings: plain, AUTH/ACL and TLS URLs, or Redis Cluster.

Clients are created here, inside factories, never at import time.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from stepstream.redis_acl import (  # re-exported: the ACL lists live beside the pure ACL logic
    CONNECT_COMMANDS,
    READ_COMMANDS,
    SUBSCRIBE_COMMANDS,
    WRITE_COMMANDS,
    acl_rules,
)

__all__ = [
    "CONNECT_COMMANDS",
    "READ_COMMANDS",
    "SUBSCRIBE_COMMANDS",
    "WRITE_COMMANDS",
    "acl_rules",
    "async_client",
    "sync_client",
]

# URLs carry everything else: redis://user:password@host:port/db for AUTH/ACL, rediss://
# for TLS (with ssl_cert_reqs, ssl_ca_certs ... as query parameters).


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
