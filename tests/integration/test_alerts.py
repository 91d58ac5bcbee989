"""Alert subscription and webhook delivery on a real stack with a flaky webhook receiver."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import producers
from sinks.webhook_payloads import idempotency_key
from stepstream.contract import Alert
from stepstream.settings import Settings, WebhookTarget
from stepstream.stack import LocalStack, settings_env
from tests.unit.test_webhooks import Receiver

from .conftest import wait_for


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A webhook receiver that fails its first 3 requests with 503."""
    r = Receiver(fail_first=3, fail_status=503)
    yield r
    r.close()


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Settings]:
    """A stack whose sink delivers alerts to the receiver."""
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("hooked"),
        topic_prefix=f"h{uuid.uuid4().hex[:8]}",
        webhooks=[WebhookTarget(url=receiver.url, backoff_s=0.05, max_attempts=8)],
    )
    stack = LocalStack(settings)
    state = stack.start()
    try:
        yield settings.model_copy(
            update={"kafka_bootstrap": state.kafka_bootstrap, "redis_url": state.redis_url}
        )
    finally:
        stack.stop()


def cli(settings: Settings, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "stepstream.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def publish_nans(settings: Settings, run: str, ranks: int) -> None:
    for rank in range(ranks):
        with producers.init(run, rank=rank, world=ranks, settings=settings) as monitor:
            for step in range(10):
                monitor.log(step, loss=math.nan if step == 5 else 1.0)


def test_follow_prints_new_alerts_and_stops_cleanly_on_ctrl_c(hooked: Settings) -> None:
    run = f"f-{uuid.uuid4().hex[:8]}"
    follower = cli(hooked, "alerts", "--follow", "--json", "--run", run)
    try:
        # The follower starts at the topic's end: wait until it is reading before publishing.
        assert follower.stderr is not None and "following" in follower.stderr.readline()
        publish_nans(hooked, run, ranks=1)
        assert follower.stdout is not None
        line = follower.stdout.readline()
        got = Alert.model_validate_json(line)
        assert (got.run, got.rule, got.rank, got.step) == (run, "nonfinite", 0, 5)
        follower.send_signal(signal.SIGINT)
        assert follower.wait(20) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_flaky_webhook_receiver_gets_every_alert_once_after_dedup(
    hooked: Settings, receiver: Receiver
) -> None:
    run = f"w-{uuid.uuid4().hex[:8]}"
    publish_nans(hooked, run, ranks=3)

    def mine(body: dict) -> bool:
        return body["run"] == run and body["rule"] == "nonfinite" and body["status"] == "firing"

    def delivered() -> set[str] | None:
        keys = {h["Idempotency-Key"] for h, body in receiver.requests if mine(body)}
        return keys if len(keys) == 3 else None

    keys = wait_for(delivered, timeout=60)
    bodies = {b["idempotency_key"]: b for _, b in receiver.requests if mine(b)}
    assert sorted(b["rank"] for b in bodies.values()) == [0, 1, 2]
    assert all(b["step"] == 5 and b["evidence"]["value"] == "NaN" for b in bodies.values())
    assert keys == {idempotency_key(Alert.model_validate(b)) for b in bodies.values()}
    # The receiver failed its first 3 requests: retries happened, nothing was lost.
    assert len([1 for _, b in receiver.requests if mine(b)]) >= 3

    listing = cli(hooked, "alerts", "--run", run, "--json")
    out, err = listing.communicate(timeout=60)
    assert listing.returncode == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    firing = [r for r in rows if r["rule"] == "nonfinite" and r["status"] == "firing"]
    assert sorted(r["rank"] for r in firing) == [0, 1, 2]
    # The loss is finite again at step 6: each episode resolved.
    resolved = [r for r in rows if r["rule"] == "nonfinite" and r["status"] == "resolved"]
    assert sorted((r["rank"], r["step"]) for r in resolved) == [(0, 6), (1, 6), (2, 6)]
    # Stage 2 also names the rank whose NaN came first (all three logged it at step 5).
    assert {r["rule"] for r in rows} <= {"nonfinite", "nonfinite_origin"}


def test_rules_check_exit_codes(tmp_path: Path, hooked: Settings) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: x\n    condition: mean(loss, 50 steps) >> 4\n")
    proc = cli(hooked, "rules", "check", str(bad))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and f"{bad}:3: condition" in err.replace("\n", "")
