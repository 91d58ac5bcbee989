"""The sink faust app: raw series, window stats, cross-rank stats and alerts into Redis.

Raw series are read from the validated topic (what stage 1 accepted), not from raw
telemetry. A message a sink agent cannot use is dead-lettered once, with stage
``sink/<agent>``; no exception escapes an agent (``stepstream.faust_seam.guarded``).

Each agent takes up to `sink_batch` messages, plans them, and writes the plan in one
pipeline before it asks for more. faust commits only offsets of events the agent has
moved past, so while Redis is down (write_with_retry waits) no offset moves past what
Redis holds; on restart the uncommitted range is replayed, which the idempotent plan
turns into the same state.

Each agent is a (topic, handler) pair that `stepstream.faust_seam` runs: batching, the
guard, dead letters and offsets are the seam's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import faust
from pydantic import ValidationError
from redis.exceptions import BusyLoadingError, ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sinks.plan import SeriesLimits, WritePlan
from sinks.redis_writer import RedisWriter
from sinks.webhook_agent import add_webhook_agent
from stepstream.contract import (
    Alert,
    CrossRankUpdate,
    check_value,
    decode_batch,
    validation_reason,
)
from stepstream.errors import ConfigError, ContractError
from stepstream.faust_seam import Agent, DeadLetters, add_agents, make_app
from stepstream.keys import RedisKeys
from stepstream.messages import Message
from stepstream.redis_client import async_client
from stepstream.settings import Settings
from stepstream.stored_stats import OpenWindowUpdate
from stepstream.topics import Topics

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0

# Errors after which the same write may succeed later: the server is away, loading, or
# the cluster is resharding. Anything else is a bug or a misconfiguration and surfaces.
RETRYABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ClusterDownError,
    TryAgainError,
    OSError,
)


async def write_with_retry(
    writer: RedisWriter, plan: WritePlan, max_backoff_s: float = MAX_BACKOFF_S
) -> int:
    """Write until Redis takes it; return the commands sent. The agent waits meanwhile,
    so no offset moves past what is not yet in Redis; backoff doubles up to max_backoff_s."""
    delay = 0.1
    while True:
        try:
            return await writer.write(plan)
        except RETRYABLE as exc:
            log.warning("Redis write failed (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)


def _reason(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, ContractError):
        return exc.reason, exc.detail
    if isinstance(exc, ConfigError):
        return "unsafe-name", str(exc)
    if isinstance(exc, ValidationError):
        return validation_reason(exc)
    return "schema", str(exc).splitlines()[0]


def create_sink_app(settings: Settings) -> faust.App:
    """Build the sink app; nothing connects until a worker starts it."""
    topics = Topics(settings.topic_prefix)
    app = make_app(settings, topics.group("sink"))
    keys = RedisKeys(settings.key_prefix)
    limits = SeriesLimits.from_settings(settings)
    writer = RedisWriter(
        async_client(settings.redis_url, settings.redis_cluster), settings.retention_s
    )
    dead = DeadLetters.of(app, topics.deadletter)

    def sink(agent: str, topic: str, add: Callable[[WritePlan, bytes], None]) -> Agent:
        stage = f"sink/{agent}"

        async def handle(messages: list[Message]) -> None:
            plan = WritePlan(keys, limits)
            for message in messages:
                try:
                    add(plan, check_value(message.value))
                except (ValidationError, ContractError, ConfigError) as exc:
                    reason, detail = _reason(exc)
                    await dead.send(message, stage=stage, reason=reason, detail=detail)
            await write_with_retry(writer, plan)

        return Agent(agent, topic, stage, handle, settings.sink_batch, settings.sink_linger_s)

    add_agents(
        app,
        dead,
        [
            # Raw series come from stage 1's validated topic, never from raw telemetry:
            # what is stored passed the processor's checks, and bad telemetry has one
            # dead letter.
            sink(
                "series-sink",
                topics.validated,
                lambda plan, raw: plan.add_batch(decode_batch(raw)),
            ),
            sink(
                "windows-sink",
                topics.windows,
                lambda plan, raw: plan.add_window_update(OpenWindowUpdate.model_validate_json(raw)),
            ),
            sink(
                "crossrank-sink",
                topics.crossrank,
                lambda plan, raw: plan.add_crossrank(CrossRankUpdate.model_validate_json(raw)),
            ),
            sink(
                "alerts-sink",
                topics.alerts,
                lambda plan, raw: plan.add_alert(Alert.model_validate_json(raw)),
            ),
        ],
    )
    add_webhook_agent(app, settings)
    return app
