"""Wires webhook delivery into a faust app: one agent on the alerts topic."""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from pydantic import ValidationError

from sinks.webhooks import DeliveryResult, WebhookDispatcher
from stepstream.contract import Alert
from stepstream.deadletter import dead_letter as build_dead_letter
from stepstream.settings import Settings
from stepstream.topics import Topics

log = logging.getLogger(__name__)


def add_webhook_agent(app: faust.App, settings: Settings) -> WebhookDispatcher | None:
    """Add the delivery agent when webhooks are configured; return its dispatcher."""
    if not settings.webhooks:
        return None
    topics = Topics(settings.topic_prefix)
    raw: dict[str, Any] = {
        "key_serializer": "raw",
        "value_serializer": "raw",
        "partitions": settings.partitions,
    }
    deadletters = app.topic(topics.deadletter, **raw)

    async def dead_letter(alert: Alert, result: DeliveryResult) -> None:
        letter = build_dead_letter(
            stage="sink/alerts-webhooks",
            reason="webhook",
            detail=f"{result.url}: {result.reason} after {result.attempts} attempts",
            topic=topics.alerts,
            key=alert.run.encode(),
            value=alert.to_bytes(),
            partition=None,
            offset=None,
            now=time.time(),
        )
        try:
            await deadletters.send(key=alert.run.encode(), value=letter.to_bytes())
        except Exception:
            log.exception("could not dead-letter an undeliverable alert of run %s", alert.run)

    dispatcher = WebhookDispatcher(
        settings.webhooks,
        dead_letter,
        group_wait_s=settings.alert_group_wait_s,
        group_interval_s=settings.alert_group_interval_s,
    )

    @app.agent(app.topic(topics.alerts, **raw), name="alerts-webhooks")
    async def alerts_webhooks(stream: faust.StreamT) -> None:
        # Manual acks: an alert's offset commits only after its notification was
        # delivered or dead-lettered, not when it was queued for its group.
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            try:
                alert = Alert.model_validate_json(event.value)
            except ValidationError:
                event.ack()  # the alerts sink dead-letters it; nothing to notify
                continue
            try:
                dispatcher.submit(alert, event.ack)
            except Exception:
                log.exception("webhook dispatch of alert %s failed", alert.fingerprint)
                event.ack()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _close(app: faust.App, **kwargs: object) -> None:
        await dispatcher.close()

    return dispatcher
