"""The sink faust app: window stats and alerts from Kafka into Redis, pipelined."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import faust
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from pydantic import ValidationError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sinks.plan import WritePlan
from sinks.redis_writer import RedisWriter
from sinks.webhook_agent import add_webhook_agent
from stepstream.contract import Alert, WindowUpdate
from stepstream.keys import RedisKeys
from stepstream.settings import Settings
from stepstream.streaming import dead_letter_of, make_app
from stepstream.topics import Topics

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0


async def write_with_retry(writer: RedisWriter, plan: WritePlan) -> None:
    """Write until Redis takes it. The agent waits meanwhile, so no offset moves past
    what is not yet in Redis; backoff doubles up to MAX_BACKOFF_S."""
    delay = 0.1
    while True:
        try:
            await writer.write(plan)
            return
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("Redis write failed (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)


def create_sink_app(settings: Settings) -> faust.App:
    """Build the sink app; nothing connects until a worker starts it."""
    topics = Topics(settings.topic_prefix)
    app = make_app(settings, topics.group("sink"))
    raw = {"key_serializer": "raw", "value_serializer": "raw", "partitions": settings.partitions}
    keys = RedisKeys(settings.key_prefix)
    client = aioredis.Redis.from_url(settings.redis_url)
    writer = RedisWriter(client, settings.retention_s)

    deadletters = app.topic(topics.deadletter, **raw)

    async def drain(stream: faust.StreamT, topic: str, add: Callable[[WritePlan, bytes], None]) -> None:
        async for events in stream.take_events(settings.sink_batch, within=settings.sink_linger_s):
            plan = WritePlan(keys)
            for event in events:
                try:
                    add(plan, event.value)
                except ValidationError as exc:
                    letter = dead_letter_of(event, topic, "schema", str(exc).splitlines()[0])
                    await deadletters.send(key=event.key, value=letter)
            await write_with_retry(writer, plan)

    @app.agent(app.topic(topics.windows, **raw), name="windows-sink")
    async def windows_sink(stream: faust.StreamT) -> None:
        await drain(
            stream,
            topics.windows,
            lambda plan, raw: plan.add_window_update(WindowUpdate.model_validate_json(raw)),
        )

    @app.agent(app.topic(topics.alerts, **raw), name="alerts-sink")
    async def alerts_sink(stream: faust.StreamT) -> None:
        await drain(
            stream,
            topics.alerts,
            lambda plan, raw: plan.add_alert(Alert.model_validate_json(raw)),
        )

    add_webhook_agent(app, settings)
    return app
