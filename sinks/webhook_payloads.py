"""Webhook bodies for a notification (the alert transitions of one run, grouped): generic
JSON and Slack-compatible. Pure."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

from stepstream.contract import Alert

WebhookFormat = Literal["json", "slack"]

#: Version of the generic notification body; bumped on incompatible changes.
BODY_VERSION = 1
#: Transitions listed in one Slack message; the rest are counted.
SLACK_MAX_LINES = 20
SLACK_MAX_CHARS = 2900

_SEVERITY_EMOJI = {
    "info": ":information_source:",
    "warning": ":warning:",
    "critical": ":rotating_light:",
}


def idempotency_key(alert: Alert) -> str:
    """Same transition, same key: receivers drop a redelivered alert by it."""
    raw = f"{alert.fingerprint}\x1f{alert.status}\x1f{alert.t!r}\x1f{alert.step}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def notification_key(alerts: Sequence[Alert]) -> str:
    """Same transitions, same key: the ``Idempotency-Key`` of one notification."""
    raw = "\x1f".join(idempotency_key(a) for a in alerts).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def group_status(alerts: Sequence[Alert]) -> Literal["firing", "resolved"]:
    """``firing`` while any alert of the group is, after its last transition here."""
    latest = {a.fingerprint: a.status for a in alerts}
    return "firing" if "firing" in latest.values() else "resolved"


def generic_body(run: str, alerts: Sequence[Alert]) -> dict[str, Any]:
    """The documented JSON body: the run's transitions in order, each with its key."""
    items = []
    for alert in alerts:
        item: dict[str, Any] = json.loads(alert.model_dump_json())
        item["idempotency_key"] = idempotency_key(alert)
        items.append(item)
    return {
        "version": BODY_VERSION,
        "run": run,
        "status": group_status(alerts),
        "firing": sum(a.status == "firing" for a in alerts),
        "resolved": sum(a.status == "resolved" for a in alerts),
        "alerts": items,
        "idempotency_key": notification_key(alerts),
    }


def slack_line(alert: Alert) -> str:
    """One transition as one Slack line."""
    if alert.status == "resolved":
        icon, state = ":white_check_mark:", "RESOLVED"
    else:
        icon, state = _SEVERITY_EMOJI.get(alert.severity, ""), alert.severity.upper()
    where = f"run `{alert.run}`" + (f" rank {alert.rank}" if alert.rank is not None else "")
    return f"{icon} [{state}] {alert.rule} on {where}: {alert.summary}"


def slack_body(run: str, alerts: Sequence[Alert]) -> dict[str, Any]:
    """A Slack incoming-webhook message: one line per transition (``text`` + a block)."""
    lines = [slack_line(a) for a in alerts[:SLACK_MAX_LINES]]
    if len(alerts) > SLACK_MAX_LINES:
        lines.append(f"… and {len(alerts) - SLACK_MAX_LINES} more on run `{run}`")
    if len(alerts) > 1:
        head = f"*{len(alerts)} alert transitions on run `{run}`* ({group_status(alerts)})"
        lines.insert(0, head)
    # Slack rejects section text over 3,000 characters.
    text = "\n".join(lines)[:SLACK_MAX_CHARS]
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        "idempotency_key": notification_key(alerts),
    }


def body_for(run: str, alerts: Sequence[Alert], fmt: WebhookFormat) -> bytes:
    """The request body of one notification in the target's format."""
    body = slack_body(run, alerts) if fmt == "slack" else generic_body(run, alerts)
    return json.dumps(body).encode()
