"""Webhook delivery with timeout, retry with exponential backoff, and a dead letter.

At-least-once: a delivery is retried until the receiver answers 2xx or the attempts are
spent; every request carries an ``Idempotency-Key`` header (also in the body) so a
receiver can drop duplicates. 4xx answers other than 408 and 429 are not retried: the
request itself is wrong and will stay wrong.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from sinks.webhook_payloads import body_for, idempotency_key
from stepstream.contract import Alert
from stepstream.settings import WebhookTarget

RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True)
class DeliveryResult:
    """How delivering one alert to one target ended."""

    url: str
    delivered: bool
    attempts: int
    status: int | None
    reason: str


DeadLetterHook = Callable[[Alert, DeliveryResult], Awaitable[None]]


def backoff_delay(attempt: int, base_s: float, cap_s: float = 30.0) -> float:
    """Full-jitter exponential backoff before retry number `attempt` (1-based)."""
    return random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))


async def deliver(
    session: aiohttp.ClientSession, target: WebhookTarget, alert: Alert
) -> DeliveryResult:
    """POST one alert to one target, retrying as the target's policy says."""
    body = body_for(alert, target.format)
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": idempotency_key(alert),
        **target.headers,
    }
    status: int | None = None
    reason = ""
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    for attempt in range(1, target.max_attempts + 1):
        try:
            async with session.post(
                target.url, data=body, headers=headers, timeout=timeout
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    return DeliveryResult(target.url, True, attempt, status, "ok")
                reason = f"HTTP {status}"
                if 400 <= status < 500 and status not in RETRYABLE_4XX:
                    return DeliveryResult(target.url, False, attempt, status, reason)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            status, reason = None, f"{type(exc).__name__}: {exc}"
        if attempt < target.max_attempts:
            await asyncio.sleep(backoff_delay(attempt, target.backoff_s))
    return DeliveryResult(target.url, False, target.max_attempts, status, reason)


class WebhookDispatcher:
    """Delivers each alert to every target concurrently; failures go to `dead_letter`."""

    def __init__(self, targets: list[WebhookTarget], dead_letter: DeadLetterHook) -> None:
        self.targets = targets
        self._dead_letter = dead_letter
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed = 0

    async def dispatch(self, alert: Alert) -> list[DeliveryResult]:
        """Deliver to every target whose severity filter admits the alert."""
        if alert.suppressed_by is not None:  # silenced or inhibited: recorded, not notified
            return []
        targets = [t for t in self.targets if alert.severity in t.severities]
        if not targets:
            return []
        if self._session is None:
            self._session = aiohttp.ClientSession()
        results = await asyncio.gather(*(deliver(self._session, t, alert) for t in targets))
        for result in results:
            if result.delivered:
                self.delivered += 1
            else:
                self.failed += 1
                await self._dead_letter(alert, result)
        return list(results)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
