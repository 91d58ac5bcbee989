"""Executes WritePlans against Redis in one non-transactional pipeline per flush."""

from __future__ import annotations

from typing import Any

from sinks.plan import ALERT_SCRIPT, WritePlan


class RedisWriter:
    """Writes plans to Redis; every per-run key gets `retention_s` as TTL on each write.

    `client` is a redis.asyncio Redis or RedisCluster. No MULTI: each command is
    idempotent, so a pipeline cut short by an outage is simply sent again.
    """

    def __init__(self, client: Any, retention_s: int) -> None:
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
        for key, members in plan.sets.items():
            pipe.sadd(key, *members)
        for command, args, *options in plan.series_commands():
            getattr(pipe, command)(*args, **(options[0] if options else {}))
        for alert in plan.alerts:
            pipe.eval(ALERT_SCRIPT, 3, *alert.keys, *alert.script_args())
        if plan.run_activity:
            pipe.zadd(plan.keys.runs(), plan.run_activity, gt=True)
        for key in plan.expiring_keys():
            pipe.expire(key, self._retention_s)
        commands = len(pipe)
        await pipe.execute()
        return commands
