"""Executes WritePlans against Redis in one non-transactional pipeline per flush."""

from __future__ import annotations

import redis.asyncio as aioredis

from sinks.plan import ALERT_STREAM_MAXLEN, WritePlan


class RedisWriter:
    """Writes plans to Redis; every per-run key gets `retention_s` as TTL on each write."""

    def __init__(self, client: aioredis.Redis, retention_s: int) -> None:
        self._client = client
        self._retention_s = retention_s

    async def write(self, plan: WritePlan) -> int:
        """Send the plan in one pipeline; return the number of commands sent."""
        if plan.is_empty():
            return 0
        pipe = self._client.pipeline(transaction=False)
        for key, mapping in plan.hashes.items():
            if mapping:
                pipe.hset(key, mapping=mapping)
        for key, fields in plan.hash_deletes.items():
            pipe.hdel(key, *fields)
        for key, members in plan.sets.items():
            pipe.sadd(key, *members)
        for key, entry in plan.stream_entries:
            pipe.xadd(key, entry, maxlen=ALERT_STREAM_MAXLEN, approximate=True)
        if plan.run_activity:
            pipe.zadd(plan.keys.runs(), plan.run_activity, gt=True)
        for key in plan.expiring_keys():
            pipe.expire(key, self._retention_s)
        for channel, message in plan.publishes:
            pipe.publish(channel, message)
        commands = len(pipe)
        await pipe.execute()
        return commands
