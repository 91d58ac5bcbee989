"""Wires webhook delivery into a faust app: one agent on the alerts topic."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import faust
from pydantic import ValidationError

from sinks.webhooks import DeliveryResult, WebhookDispatcher
from stepstream.contract import Alert
from stepstream.deadletter import dead_letter as build_dead_letter
from stepstream.faust_seam import add_acking_agent, on_shutdown, raw_topic
from stepstream.messages import Message
from stepstream.settings import Settings
from stepstream.topics import Topics

log = logging.getLogger(__name__)


def add_webhook_agent(app: faust.App, settings: Settings) -> WebhookDispatcher | None:
    """Add the delivery agent when webhooks are configured; return its dispatcher."""
    if not settings.webhooks:
        return None
    topics = Topics(settings.topic_prefix)
    deadletters = raw_topic(app, topics.deadletter)

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

    def deliver(message: Message, ack: Callable[[], object]) -> None:
        # Manual acks: an alert's offset commits only after its notification was
        # delivered or dead-lettered, not when it was queued for its group.
        if message.value is None:
            ack()  # the alerts sink dead-letters it; nothing to notify
            return
        try:
            alert = Alert.model_validate_json(message.value)
        except ValidationError:
            ack()  # the alerts sink dead-letters it; nothing to notify
            return
        try:
            dispatcher.submit(alert, ack)
        except Exception:
            log.exception("webhook dispatch of alert %s failed", alert.fingerprint)
            ack()

    add_acking_agent(app, "alerts-webhooks", topics.alerts, deliver)
    on_shutdown(app, dispatcher.close)
    return dispatcher
