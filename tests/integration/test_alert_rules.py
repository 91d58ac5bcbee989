"""User rules end to end: lifecycle on a flapping series, pending under `for` (then firing,
or withdrawn), silences from the CLI, actions back to the training loop, hot reload of the
rule file."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import producers
from query.reader import MetricsReader
from stepstream.contract import Alert
from stepstream.settings import Settings, WebhookTarget
from stepstream.stack import running_stack, settings_env
from tests.unit.test_webhooks import Receiver

from .conftest import wait_for

pytestmark = pytest.mark.integration

RULES = """\
rules:
  - name: loss-high
    condition: last(loss, 50 steps) > 2
    for: 2 steps
    keep_firing_for: 15 steps
    severity: warning
    summary: "loss {{ value }} above {{ threshold }} on rank {{ rank }}"
    action: scale_lr:0.5
  - name: loss-sustained
    condition: last(loss, 50 steps) > 100
    for: 3s
    severity: critical
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A webhook receiver that always answers 200."""
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(RULES)
    return path


@pytest.fixture(scope="module")
def ruled(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver, rules_file: Path
) -> Iterator[Settings]:
    """A stack with the rule file, per-batch window stats and the webhook receiver."""
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("ruled"),
        topic_prefix=f"r{uuid.uuid4().hex[:8]}",
        rules_file=rules_file,
        window_stats_interval_s=0,
        flush_interval_s=0.02,
        system_interval_s=0,
        webhooks=[WebhookTarget(url=receiver.url, backoff_s=0.05)],
    )
    with running_stack(settings) as client_settings:
        yield client_settings


def hooks_for(receiver: Receiver, run: str, rule: str) -> list[dict]:
    """The transitions of `rule` on `run` the receiver got, in arrival order."""
    return [
        a
        for _, body in receiver.requests
        if body["run"] == run
        for a in body["alerts"]
        if a["rule"] == rule
    ]


def publish(
    settings: Settings, run: str, losses: list[float], monitor: producers.Monitor | None = None
) -> producers.Monitor:
    monitor = monitor or producers.init(run, rank=0, world=1, settings=settings)
    # Wait until the publisher is connected, so the steps below arrive as they are logged.
    monitor.log(None, warmup=1.0)
    assert monitor.flush(30)
    for step, loss in enumerate(losses):
        monitor.log(step, loss=loss)
        time.sleep(0.03)  # about one batch per step, so every step is evaluated
    assert monitor.flush(10)
    return monitor


def later_notification(settings: Settings, receiver: Receiver, run: str, step: int) -> None:
    """Positive control of an absence: a NaN loss on `run` from step `step`, and wait for
    its ``nonfinite`` notification. A run's transitions share one partition of the alerts
    topic and one notification group, in order: once this one arrived, every transition
    of the run emitted before it has arrived too."""
    with producers.init(run, rank=0, world=1, settings=settings) as monitor:
        for i, loss in enumerate([1.0, math.nan, 1.0]):
            monitor.log(step + i, loss=loss)
    wait_for(lambda: hooks_for(receiver, run, "nonfinite") or None, timeout=30)


def test_flapping_series_gives_one_firing_one_resolved_and_one_action(
    ruled: Settings, receiver: Receiver
) -> None:
    run = f"flap-{uuid.uuid4().hex[:6]}"
    # healthy, then bad with a dip every 4th step (flapping), then healthy for long enough
    losses = [1.0] * 10 + [1.0 if s % 4 == 3 else 5.0 for s in range(40)] + [1.0] * 40
    monitor = producers.init(run, rank=0, world=1, settings=ruled)
    assert monitor.actions() == []  # starts listening before the alert can fire
    assert monitor._listener().wait_ready(10)
    try:
        publish(ruled, run, losses, monitor)
        got = wait_for(lambda: monitor.actions() or None, timeout=30)
        assert [(a.action, a.factor, a.rule, a.rank) for a in got] == [
            ("scale_lr", 0.5, "loss-high", 0)
        ]
        sent = wait_for(
            lambda: (h := hooks_for(receiver, run, "loss-high")) and len(h) >= 2 and h, timeout=30
        )
    finally:
        monitor.close()
    later_notification(ruled, receiver, run, 1000)  # any extra notification came before it
    sent = hooks_for(receiver, run, "loss-high")
    assert [b["status"] for b in sent] == ["firing", "resolved"]
    firing = sent[0]
    assert firing["summary"] == "loss 5 above 2 on rank 0"
    assert 12 <= firing["step"] < 50  # bad from step 10, 2 steps of 'for'
    # keep_firing_for counts 15 steps from the first evaluation that saw the condition
    # clear; evaluations happen once per processed batch (every few steps), and the last
    # one that saw a 5.0 lies in the final stretch of the bad phase (steps 40-48).
    assert 40 + 15 <= sent[1]["step"] <= 89


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "stepstream.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_silence_from_the_cli_mutes_webhooks_but_keeps_history(
    ruled: Settings, receiver: Receiver
) -> None:
    run = f"quiet-{uuid.uuid4().hex[:6]}"
    added = cli(
        ruled,
        "silence",
        "add",
        "-m",
        f"run={run}*",  # the run and its probes
        "-m",
        "rule=loss-*",
        "--for",
        "10m",
        "--comment",
        "known issue",
        "--json",
    )
    assert added.returncode == 0, added.stderr
    silence_id = json.loads(added.stdout)["id"]
    listed = cli(ruled, "silence", "list", "--json")
    assert silence_id in {s["id"] for s in json.loads(listed.stdout)}
    # The alerting stage re-reads silences periodically: probe runs that the silence
    # matches fire until one is recorded as suppressed by it, then the run proper starts.
    probes = (f"{run}-probe{i}" for i in range(100))

    def probe_silenced() -> bool:
        probe = next(probes)
        publish(ruled, probe, [5.0] * 8).close()
        with MetricsReader.from_url(ruled.redis_url, ruled.key_prefix) as reader:
            alerts = wait_for(lambda: reader.alerts(probe) or None, timeout=30)
        return alerts[0].suppressed_by == f"silence:{silence_id}"

    wait_for(probe_silenced, timeout=60, every=0)
    publish(ruled, run, [5.0] * 8).close()

    def history() -> list[dict] | None:
        out = cli(ruled, "alerts", "--run", run, "--json").stdout
        rows = [json.loads(line) for line in out.splitlines()]
        return rows or None

    rows = wait_for(history, timeout=30)
    assert rows[0]["rule"] == "loss-high" and rows[0]["suppressed_by"] == f"silence:{silence_id}"
    later_notification(ruled, receiver, run, 100)  # not silenced: its rule is nonfinite
    assert hooks_for(receiver, run, "loss-high") == []
    expired = cli(ruled, "silence", "expire", silence_id)
    assert expired.returncode == 0
    assert silence_id not in {
        s["id"] for s in json.loads(cli(ruled, "silence", "list", "--json").stdout)
    }
    assert cli(ruled, "silence", "expire", "nope").returncode == 1


def test_rule_file_reloads_without_restart(
    ruled: Settings, receiver: Receiver, rules_file: Path
) -> None:
    run = f"reload-{uuid.uuid4().hex[:6]}"
    rules_file.write_text(
        RULES
        + """\
  - name: lr-zero
    condition: last(lr, 50 steps) == 0
    severity: info
"""
    )
    steps = itertools.count()
    with producers.init(run, rank=0, world=1, settings=ruled) as monitor:

        def reloaded() -> list[dict] | None:
            # Each step is evaluated against the rules in force: the first evaluation
            # after the reload fires the new rule.
            monitor.log(next(steps), lr=0.0, loss=1.0)
            return hooks_for(receiver, run, "lr-zero") or None

        sent = wait_for(reloaded, timeout=30, every=0.05)
    assert sent[0]["severity"] == "info" and sent[0]["status"] == "firing"


def test_a_rule_with_for_is_pending_then_firing_and_a_short_episode_is_withdrawn(
    ruled: Settings, receiver: Receiver
) -> None:
    run = f"pend-{uuid.uuid4().hex[:6]}"
    rule = "loss-sustained"  # last(loss) > 100 for 3 s
    steps = itertools.count()
    reader = MetricsReader.from_url(ruled.redis_url, ruled.key_prefix)
    monitor = producers.init(run, rank=0, world=1, settings=ruled)
    monitor.log(None, warmup=1.0)
    assert monitor.flush(30)

    def log(loss: float) -> None:
        monitor.log(next(steps), loss=loss)
        time.sleep(0.05)

    def open_alert(status: str) -> Alert | None:
        log(500.0)
        found = [a for a in reader.active_alerts(run) if a.rule == rule]
        return found[0] if found and found[0].status == status else None

    def history() -> list[str]:
        return [a.status for a in reader.alerts(run) if a.rule == rule]

    try:
        # An episode shorter than `for`: pending, then withdrawn, out of the active set.
        wait_for(lambda: open_alert("pending"), timeout=10, every=0)
        for _ in range(5):
            log(1.0)
        wait_for(lambda: history() == ["pending", "withdrawn"] or None, timeout=10)
        assert [a for a in reader.active_alerts(run) if a.rule == rule] == []

        # A sustained one: pending while `for` runs, then firing, one fingerprint.
        pending = wait_for(lambda: open_alert("pending"), timeout=10, every=0)
        assert pending.active_since is not None and pending.action is None
        firing = wait_for(lambda: open_alert("firing"), timeout=10, every=0)
        assert firing.fingerprint == pending.fingerprint
        assert firing.active_since == pending.active_since
        assert firing.t - firing.active_since >= 3.0
        assert history() == ["pending", "withdrawn", "pending", "firing"]
        # Only the firing transition is notified: a run's transitions arrive in order, so
        # the pending ones, had they been sent, would be there before it.
        sent = wait_for(lambda: hooks_for(receiver, run, rule) or None, timeout=30)
        assert [(h["status"], h["fingerprint"]) for h in sent] == [("firing", firing.fingerprint)]
    finally:
        monitor.close()
        reader.close()
