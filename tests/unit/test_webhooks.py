"""Webhook bodies and delivery against a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest

from sinks.webhook_payloads import body_for, idempotency_key, notification_key
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
        #: When set, decides per request body instead of `fail_first`.
        self.fail_if: Callable[[dict], bool] | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), json.loads(body)))
                failing = len(receiver.requests) <= receiver.fail_first
                if receiver.fail_if is not None:
                    failing = receiver.fail_if(receiver.requests[-1][1])
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


def test_generic_body_lists_the_transitions_with_their_keys_and_nan_evidence() -> None:
    firing, resolved = alert(), alert(status="resolved", t=7.0, step=41)
    body = json.loads(body_for("r", [firing, resolved], "json"))
    assert body["run"] == "r" and body["version"] == 1
    assert (body["status"], body["firing"], body["resolved"]) == ("resolved", 1, 1)
    assert [a["status"] for a in body["alerts"]] == ["firing", "resolved"]
    assert body["alerts"][0]["fingerprint"] == "fp1"
    assert body["alerts"][0]["evidence"]["value"] == "NaN"
    assert [a["idempotency_key"] for a in body["alerts"]] == [
        idempotency_key(firing),
        idempotency_key(resolved),
    ]
    assert body["idempotency_key"] == notification_key([firing, resolved])


def test_group_status_is_firing_while_any_alert_still_fires() -> None:
    other = alert(fingerprint="fp2")
    body = json.loads(body_for("r", [alert(), other, alert(status="resolved")], "json"))
    assert body["status"] == "firing"  # fp1 resolved, fp2 still firing


def test_slack_body_reads_well() -> None:
    body = json.loads(body_for("r", [alert(severity="critical")], "slack"))
    assert body["text"] == ":rotating_light: [CRITICAL] nonfinite on run `r` rank 1: loss is NaN"
    resolved = json.loads(body_for("r", [alert(status="resolved")], "slack"))
    assert resolved["text"].startswith(":white_check_mark: [RESOLVED] nonfinite")
    many = [alert(rank=i, fingerprint=f"f{i}") for i in range(25)]
    lines = json.loads(body_for("r", many, "slack"))["text"].splitlines()
    assert lines[0] == "*25 alert transitions on run `r`* (firing)"
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "… and 5 more on run `r`"


def test_idempotency_key_differs_per_transition_not_per_delivery() -> None:
    assert idempotency_key(alert()) == idempotency_key(alert(raised_at=99.0))
    assert idempotency_key(alert()) != idempotency_key(alert(status="resolved"))
    assert idempotency_key(alert()) != idempotency_key(alert(t=6.0))
    assert notification_key([alert()]) != notification_key([alert(), alert(t=6.0)])


def test_failing_receiver_gets_the_notification_after_retries(receiver: Receiver) -> None:
    target = WebhookTarget(url=receiver.url, backoff_s=0.01, max_attempts=5)

    async def go() -> object:
        async with aiohttp.ClientSession() as session:
            return await deliver(session, target, "r", [alert()])

    result = asyncio.run(go())
    assert (result.delivered, result.attempts, result.status) == (True, 3, 200)
    keys = {headers["Idempotency-Key"] for headers, _ in receiver.requests}
    assert keys == {notification_key([alert()])}  # the receiver dedups the 3 tries to 1


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
            return await deliver(session, target, "r", [alert()])

    result = asyncio.run(go())
    assert (result.delivered, result.attempts, result.status) == (False, 3, None)


async def _no_dead_letter(a: Alert, result: object) -> None:
    raise AssertionError(f"unexpected dead letter of {a.fingerprint}: {result}")


def test_transitions_of_one_run_are_one_notification_and_acked_after_it() -> None:
    ok = Receiver()
    acked: list[str] = []

    async def go() -> tuple[list[str], list[tuple[dict[str, str], dict]]]:
        d = WebhookDispatcher(
            [WebhookTarget(url=ok.url)], _no_dead_letter, group_wait_s=0.3, group_interval_s=5
        )
        for rank in range(5):
            d.submit(
                alert(run="a", rank=rank, fingerprint=f"a{rank}"),
                lambda r=rank: acked.append(f"a{r}"),
            )
        d.submit(alert(run="b", fingerprint="b0"), lambda: acked.append("b0"))
        await asyncio.sleep(0.1)
        # inside group_wait: nothing sent, nothing acked
        before = (list(acked), list(ok.requests))
        await asyncio.sleep(0.6)
        await d.close()
        return before

    try:
        acked_before, sent_before = asyncio.run(go())
    finally:
        ok.close()
    assert acked_before == [] and sent_before == []
    by_run = {body["run"]: body for _, body in ok.requests}
    assert len(ok.requests) == 2 and set(by_run) == {"a", "b"}
    assert [a["rank"] for a in by_run["a"]["alerts"]] == [0, 1, 2, 3, 4]
    assert [a["fingerprint"] for a in by_run["b"]["alerts"]] == ["b0"]
    assert sorted(acked) == ["a0", "a1", "a2", "a3", "a4", "b0"]


def test_later_transitions_of_a_run_wait_for_the_group_interval() -> None:
    ok = Receiver()
    arrivals: list[float] = []

    async def go() -> None:
        d = WebhookDispatcher(
            [WebhookTarget(url=ok.url)], _no_dead_letter, group_wait_s=0.0, group_interval_s=0.8
        )
        await d.dispatch(alert())
        arrivals.append(time.monotonic())
        await d.dispatch(alert(status="resolved", t=7.0))
        arrivals.append(time.monotonic())
        await d.close()

    try:
        asyncio.run(go())
    finally:
        ok.close()
    assert [body["alerts"][0]["status"] for _, body in ok.requests] == ["firing", "resolved"]
    assert arrivals[1] - arrivals[0] >= 0.7  # held back for the interval, not sent at once


def test_suppressed_and_filtered_transitions_are_acked_without_a_request() -> None:
    ok = Receiver()
    acked: list[str] = []

    async def go() -> None:
        d = WebhookDispatcher([WebhookTarget(url=ok.url, severities=["critical"])], _no_dead_letter)
        d.submit(alert(severity="critical", suppressed_by="silence:1"), lambda: acked.append("s"))
        d.submit(alert(severity="info"), lambda: acked.append("i"))
        await d.close()

    try:
        asyncio.run(go())
    finally:
        ok.close()
    assert ok.requests == [] and acked == ["s", "i"]


def test_close_leaves_undelivered_transitions_unacknowledged() -> None:
    acked: list[str] = []
    letters: list[Alert] = []

    async def dead_letter(a: Alert, result: object) -> None:
        letters.append(a)

    async def go() -> None:
        target = WebhookTarget(url="http://127.0.0.1:9/x", backoff_s=5.0, max_attempts=5)
        d = WebhookDispatcher([target], dead_letter)
        d.submit(alert(), lambda: acked.append("a"))
        await d.close(timeout_s=0.3)

    asyncio.run(go())
    assert acked == [] and letters == []  # consumed again after a restart


def test_pending_and_withdrawn_transitions_never_notify() -> None:
    ok = Receiver()
    acked: list[str] = []

    async def go() -> None:
        d = WebhookDispatcher([WebhookTarget(url=ok.url)], _no_dead_letter)
        d.submit(alert(status="pending"), lambda: acked.append("pending"))
        d.submit(alert(status="withdrawn", t=6.0), lambda: acked.append("withdrawn"))
        await d.dispatch(alert(status="firing", t=7.0, fingerprint="fp2"))
        await d.close()

    try:
        asyncio.run(go())
    finally:
        ok.close()
    assert acked == ["pending", "withdrawn"]  # acked at once, no request of their own
    assert [[a["status"] for a in body["alerts"]] for _, body in ok.requests] == [["firing"]]
