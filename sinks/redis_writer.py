"""Executes WritePlans against Redis in one non-transactional pipeline per flush."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sinks.plan import ALERT_SCRIPT, WritePlan


class RedisWriter:
    """Writes plans to Redis; every per-run key gets `retention_s` as TTL on each write.

    `client` is a redis.asyncio Redis or RedisCluster. No MULTI: each command is
    idempotent, so a pipeline cut short by an outage is simply sent again. `clock` is
    the time the run registry's retention cutoff is taken from (tests move it).
    """

    def __init__(
        self, client: Any, retention_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._retention_s = retention_s
        self._clock = clock

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
        for command, args, *options in plan.registry_commands(self._clock(), self._retention_s):
            getattr(pipe, command)(*args, **(options[0] if options else {}))
        for key in plan.expiring_keys():
            pipe.expire(key, self._retention_s)
        for command, args in plan.notice_commands():
            getattr(pipe, command)(*args)
        commands = len(pipe)
        await pipe.execute()
        return commands
