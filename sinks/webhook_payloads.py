"""Webhook bodies for an alert transition: generic JSON and Slack-compatible. Pure."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from stepstream.contract import Alert

WebhookFormat = Literal["json", "slack"]

_SEVERITY_EMOJI = {
    "info": ":information_source:",
    "warning": ":warning:",
    "critical": ":rotating_light:",
}


def idempotency_key(alert: Alert) -> str:
    """Same transition, same key: receivers drop a redelivered alert by it."""
    raw = f"{alert.fingerprint}\x1f{alert.status}\x1f{alert.t!r}\x1f{alert.step}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def generic_body(alert: Alert) -> dict[str, Any]:
    """The documented JSON body: the alert itself plus its idempotency key."""
    body: dict[str, Any] = json.loads(alert.model_dump_json())
    body["idempotency_key"] = idempotency_key(alert)
    return body


def slack_body(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` plus one section block)."""
    icon = _SEVERITY_EMOJI.get(alert.severity, "")
    state = "RESOLVED" if alert.status == "resolved" else alert.severity.upper()
    where = f"run `{alert.run}`" + (f" rank {alert.rank}" if alert.rank is not None else "")
    text = f"{icon} [{state}] {alert.rule} on {where}: {alert.summary}"
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        "idempotency_key": idempotency_key(alert),
    }


def body_for(alert: Alert, fmt: WebhookFormat) -> bytes:
    """The request body in the target's format."""
    body = slack_body(alert) if fmt == "slack" else generic_body(alert)
    return json.dumps(body).encode()
