"""Webhook bodies and delivery against a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest

from sinks.webhook_payloads import body_for, idempotency_key
from sinks.webhooks import WebhookDispatcher, deliver
from stepstream.contract import Alert
from stepstream.settings import WebhookTarget


def alert(**overrides: object) -> Alert:
    base = {
        "fingerprint": "fp1",
        "rule": "nonfinite",
        "run": "r",
        "rank": 1,
        "metric": "loss",
        "step": 40,
        "t": 5.0,
        "raised_at": 6.0,
        "summary": "loss is NaN",
        "evidence": {"value": math.nan},
    }
    return Alert(**{**base, **overrides})


class Receiver:
    """An HTTP server answering `fail_first` requests with `fail_status`, then 200."""

    def __init__(self, fail_first: int = 0, fail_status: int = 500) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.requests: list[tuple[dict[str, str], dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), json.loads(body)))
                failing = len(receiver.requests) <= receiver.fail_first
                self.send_response(receiver.fail_status if failing else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.close()


def test_generic_body_keeps_the_alert_and_nan_evidence() -> None:
    body = json.loads(body_for(alert(), "json"))
    assert body["fingerprint"] == "fp1" and body["evidence"]["value"] == "NaN"
    assert body["idempotency_key"] == idempotency_key(alert())


def test_slack_body_reads_well() -> None:
    body = json.loads(body_for(alert(severity="critical"), "slack"))
    assert body["text"] == ":rotating_light: [CRITICAL] nonfinite on run `r` rank 1: loss is NaN"
    resolved = json.loads(body_for(alert(status="resolved"), "slack"))
    assert "[RESOLVED]" in resolved["text"]


def test_idempotency_key_differs_per_transition_not_per_delivery() -> None:
    assert idempotency_key(alert()) == idempotency_key(alert(raised_at=99.0))
    assert idempotency_key(alert()) != idempotency_key(alert(status="resolved"))
    assert idempotency_key(alert()) != idempotency_key(alert(t=6.0))


def test_failing_receiver_gets_the_alert_after_retries(receiver: Receiver) -> None:
    target = WebhookTarget(url=receiver.url, backoff_s=0.01, max_attempts=5)

    async def go() -> object:
        async with aiohttp.ClientSession() as session:
            return await deliver(session, target, alert())

    result = asyncio.run(go())
    assert (result.delivered, result.attempts, result.status) == (True, 3, 200)
    keys = {headers["Idempotency-Key"] for headers, _ in receiver.requests}
    assert keys == {idempotency_key(alert())}  # the receiver dedups the 3 tries to 1


def test_client_errors_are_not_retried_and_go_to_the_dead_letter() -> None:
    bad = Receiver(fail_first=10, fail_status=400)
    letters: list[tuple[Alert, object]] = []

    async def dead_letter(a: Alert, result: object) -> None:
        letters.append((a, result))

    async def go() -> None:
        dispatcher = WebhookDispatcher(
            [WebhookTarget(url=bad.url, backoff_s=0.01, max_attempts=5)], dead_letter
        )
        await dispatcher.dispatch(alert())
        await dispatcher.close()

    try:
        asyncio.run(go())
    finally:
        bad.close()
    assert len(bad.requests) == 1
    assert len(letters) == 1 and letters[0][1].reason == "HTTP 400"  # type: ignore[attr-defined]


def test_unreachable_target_exhausts_attempts() -> None:
    target = WebhookTarget(
        url="http://127.0.0.1:9/none", backoff_s=0.0, max_attempts=3, timeout_s=1
    )

    async def go() -> object:
        async with aiohttp.ClientSession() as session:
            return await deliver(session, target, alert())

    result = asyncio.run(go())
    assert (result.delivered, result.attempts, result.status) == (False, 3, None)


def test_severity_filter() -> None:
    calls: list[Alert] = []

    async def dead_letter(a: Alert, result: object) -> None:
        calls.append(a)

    async def go() -> list:
        d = WebhookDispatcher(
            [
                WebhookTarget(
                    url="http://127.0.0.1:9/x", severities=["critical"], max_attempts=1, timeout_s=1
                )
            ],
            dead_letter,
        )
        skipped = await d.dispatch(alert(severity="info"))
        await d.close()
        return skipped

    assert asyncio.run(go()) == [] and calls == []
