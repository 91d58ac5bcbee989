"""Alert subscription and webhook delivery on a real stack with a flaky webhook receiver."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import producers
from sinks.webhook_payloads import idempotency_key, notification_key
from stepstream.contract import Alert
from stepstream.settings import Settings, WebhookTarget
from stepstream.stack import running_stack, settings_env
from tests.unit.test_webhooks import Receiver

from .conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A webhook receiver answering 503 where a test says so (`fail_if`)."""
    r = Receiver(fail_status=503)
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
    with running_stack(settings) as client_settings:
        yield client_settings


def _ctrl_c_as_in_a_terminal() -> None:
    # As in a terminal: a test run started in the background (`cmd &` in a script)
    # ignores SIGINT, and children inherit that, so Ctrl-C would never reach the CLI.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(settings: Settings, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "stepstream.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
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
        # Drain what else it writes to stderr (client warnings on a loaded machine): a
        # full pipe would block it on exit, and the text explains a failure.
        errors: list[str] = []
        drain = threading.Thread(target=lambda: errors.extend(follower.stderr or ()), daemon=True)
        drain.start()
        publish_nans(hooked, run, ranks=1)
        assert follower.stdout is not None
        line = follower.stdout.readline()
        got = Alert.model_validate_json(line)
        assert (got.run, got.rule, got.rank, got.step) == (run, "nonfinite", 0, 5)
        follower.send_signal(signal.SIGINT)
        try:
            code = follower.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit on Ctrl-C; stderr: {''.join(errors)[-2000:]}") from None
        assert code == 0, "".join(errors)[-2000:]
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_flaky_webhook_receiver_gets_every_alert_once_after_dedup(
    hooked: Settings, receiver: Receiver
) -> None:
    run = f"w-{uuid.uuid4().hex[:8]}"
    failures = iter(range(3))
    # The first 3 requests for this run fail with 503 (other runs' requests succeed).
    receiver.fail_if = lambda body: body["run"] == run and next(failures, None) is not None
    publish_nans(hooked, run, ranks=3)

    def transitions() -> list[dict]:
        """Every transition of this run in every request, duplicates from retries kept."""
        return [a for _, body in receiver.requests if body["run"] == run for a in body["alerts"]]

    def firing_nans() -> dict[str, dict] | None:
        mine = {
            a["idempotency_key"]: a
            for a in transitions()
            if a["rule"] == "nonfinite" and a["status"] == "firing"
        }
        return mine if mine else None

    def retried() -> int:
        requests = [body["idempotency_key"] for _, body in receiver.requests if body["run"] == run]
        return len(requests) - len(set(requests))

    # The failed requests are recorded too: wait until the 3 failures were retried.
    wait_for(lambda: retried() == 3 and firing_nans(), timeout=60)
    # Positive control of the absences below (no 4th retry, no second firing): the run's
    # resolved notification, a later transition of the same run. The loss is finite
    # again at step 6: the incident resolves once the hold (STEPSTREAM_INCIDENT_HOLD_S)
    # passed.
    wait_for(
        lambda: any(a["rule"] == "nonfinite" and a["status"] == "resolved" for a in transitions()),
        timeout=60,
    )
    by_key = firing_nans() or {}
    # The NaN on three ranks is one incident: one firing notification, however retried.
    assert len(by_key) == 1, by_key
    assert all(a["rank"] in (0, 1, 2) for a in by_key.values())
    assert all(a["step"] == 5 and a["evidence"]["value"] == "NaN" for a in by_key.values())
    assert set(by_key) == {idempotency_key(Alert.model_validate(a)) for a in by_key.values()}
    requests = [(h, body) for h, body in receiver.requests if body["run"] == run]
    # Each request carries its notification's key; a retry repeats it unchanged.
    for headers, body in requests:
        assert headers["Idempotency-Key"] == body["idempotency_key"]
        assert body["idempotency_key"] == notification_key(
            [Alert.model_validate(a) for a in body["alerts"]]
        )
    # The receiver failed 3 requests: each retried with the same key, nothing lost.
    assert retried() == 3

    def listed() -> list[dict] | None:
        listing = cli(hooked, "alerts", "--run", run, "--json")
        out, err = listing.communicate(timeout=60)
        assert listing.returncode == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        done = any(r["rule"] == "nonfinite" and r["status"] == "resolved" for r in rows)
        return rows if done else None

    rows = wait_for(listed, timeout=60, every=1.0)
    firing = [r for r in rows if r["rule"] == "nonfinite" and r["status"] == "firing"]
    resolved = [r for r in rows if r["rule"] == "nonfinite" and r["status"] == "resolved"]
    assert len(firing) == 1 and len(resolved) == 1
    assert resolved[0]["step"] == 6 and resolved[0]["fingerprint"] == firing[0]["fingerprint"]
    assert sorted(resolved[0]["affected"]) == ["rank 0: loss", "rank 1: loss", "rank 2: loss"]
    # Stage 2 also judges the origin: all three went NaN in step 5, so it names no rank.
    assert {r["rule"] for r in rows} <= {"nonfinite", "nonfinite_origin"}
    origin = [r for r in rows if r["rule"] == "nonfinite_origin" and r["status"] == "firing"]
    assert [r["rank"] for r in origin] in ([], [None])


def test_rules_check_exit_codes(tmp_path: Path, hooked: Settings) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: x\n    condition: mean(loss, 50 steps) >> 4\n")
    proc = cli(hooked, "rules", "check", str(bad))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and f"{bad}:3: condition" in err.replace("\n", "")
