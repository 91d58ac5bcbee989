"""Webhook delivery: grouped per run, with timeout, retry with backoff, and a dead letter.

Transitions are grouped into notifications per run (`sinks.notify_groups`): the first of a
quiet run waits `group_wait_s`, later ones go out at most every `group_interval_s`.

At-least-once: a notification is retried until the receiver answers 2xx or the attempts
are spent; every request carries an ``Idempotency-Key`` header (also in the body, and one
per transition inside it) so a receiver can drop duplicates. 4xx answers other than 408
and 429 are not retried: the request itself is wrong and will stay wrong. A transition is
acknowledged (its Kafka offset may commit) only once every target got it or dead-lettered
it, so a worker that dies with notifications queued sends them again after restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from sinks.notify_groups import NotificationGroups
from sinks.webhook_payloads import body_for, notification_key
from stepstream.contract import NOTIFY_STATUSES, Alert
from stepstream.settings import WebhookTarget

RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True)
class DeliveryResult:
    """How delivering one notification to one target ended."""

    url: str
    delivered: bool
    attempts: int
    status: int | None
    reason: str


DeadLetterHook = Callable[[Alert, DeliveryResult], Awaitable[None]]
Ack = Callable[[], object]


def backoff_delay(attempt: int, base_s: float, cap_s: float = 30.0) -> float:
    """Full-jitter exponential backoff before retry number `attempt` (1-based)."""
    return random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))


async def deliver(
    session: aiohttp.ClientSession,
    target: WebhookTarget,
    run: str,
    alerts: Sequence[Alert],
) -> DeliveryResult:
    """POST one notification (the transitions `alerts` of `run`) to one target, retrying
    as the target's policy says."""
    body = body_for(run, alerts, target.format)
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": notification_key(alerts),
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
    """Groups transitions per run and delivers each notification to every target whose
    severity filter admits some of it; failures go to `dead_letter`, one per transition.

    `submit` never waits for the network; call it from the consuming loop. Notifications
    of one run are delivered one after another, so a receiver sees a run's transitions in
    order even while an earlier notification is being retried.
    """

    def __init__(
        self,
        targets: list[WebhookTarget],
        dead_letter: DeadLetterHook,
        group_wait_s: float = 0.0,
        group_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.targets = targets
        self._dead_letter = dead_letter
        self._clock = clock
        self._groups: NotificationGroups[tuple[Alert, Ack | None]] = NotificationGroups(
            group_wait_s, group_interval_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._wake: asyncio.Event | None = None
        self._timer: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._order: dict[str, asyncio.Lock] = {}
        self._order_users: Counter[str] = Counter()
        self.delivered = 0
        self.failed = 0

    def submit(self, alert: Alert, ack: Ack | None = None) -> None:
        """Queue one transition; `ack` is called once it was delivered or dead-lettered
        everywhere (at once for a transition nobody is to be notified of)."""
        # Pending and withdrawn alerts are stored and shown, never notified (Prometheus
        # sends Alertmanager firing alerts only): a `for` exists to keep them quiet.
        wanted = (
            alert.status in NOTIFY_STATUSES
            and alert.suppressed_by is None
            and any(alert.severity in t.severities for t in self.targets)
        )
        if not wanted:  # pending, silenced, inhibited or filtered out: not notified
            if ack is not None:
                ack()
            return
        self._groups.add(alert.run, (alert, ack), self._clock())
        self._ensure_timer()
        assert self._wake is not None
        self._wake.set()

    async def dispatch(self, alert: Alert) -> None:
        """Queue one transition and wait until its notification has been sent."""
        done = asyncio.Event()
        self.submit(alert, done.set)
        await done.wait()

    async def flush(self) -> None:
        """Send everything queued now, ignoring group timing, and wait for the sends."""
        for run, items in self._groups.drain():
            self._start_send(run, items)
        while self._sending:
            await asyncio.gather(*list(self._sending), return_exceptions=True)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Try to send what is queued for up to `timeout_s`, then stop. Transitions not
        delivered by then stay unacknowledged, so they are consumed again after restart."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout_s)
        for task in [*self._sending, *([self._timer] if self._timer else [])]:
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        if self._timer is not None:
            await asyncio.gather(self._timer, return_exceptions=True)
            self._timer = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ensure_timer(self) -> None:
        if self._timer is None or self._timer.done():
            self._wake = asyncio.Event()
            self._timer = asyncio.get_running_loop().create_task(self._release_due())

    async def _release_due(self) -> None:
        """Sleep until the next group is due (or something new arrives); send due groups."""
        assert self._wake is not None
        while True:
            due = self._groups.next_due()
            wait = None if due is None else max(0.0, due - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            for run, items in self._groups.pop_due(self._clock()):
                self._start_send(run, items)

    def _start_send(self, run: str, items: list[tuple[Alert, Ack | None]]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(run, items))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, run: str, items: list[tuple[Alert, Ack | None]]) -> None:
        lock = self._order.setdefault(run, asyncio.Lock())
        self._order_users[run] += 1
        try:
            async with lock:  # FIFO: a run's notifications leave in order
                await self._deliver_everywhere(run, [alert for alert, _ in items])
        finally:
            self._order_users[run] -= 1
            if not self._order_users[run]:
                del self._order_users[run], self._order[run]
        for _, ack in items:
            if ack is not None:
                ack()

    async def _deliver_everywhere(self, run: str, alerts: list[Alert]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        session = self._session
        plans = [
            (target, [a for a in alerts if a.severity in target.severities])
            for target in self.targets
        ]
        plans = [(target, mine) for target, mine in plans if mine]
        results = await asyncio.gather(
            *(deliver(session, target, run, mine) for target, mine in plans)
        )
        for (_, mine), result in zip(plans, results, strict=True):
            if result.delivered:
                self.delivered += len(mine)
                continue
            self.failed += len(mine)
            for alert in mine:
                await self._dead_letter(alert, result)
