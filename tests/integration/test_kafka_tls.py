"""The whole pipeline over Kafka TLS only: tansu sits behind a TLS-terminating relay
(bench/tls_proxy.py) and advertises the relay, so the SDK publishers of two gloo ranks, the
processor and sink workers, topic creation and an alert follower all speak TLS with the
test CA given as STEPSTREAM_KAFKA_SSL_CAFILE. Workers run from an empty directory that
must stay empty (their data lives under the state dir)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fault_harness import FaultStack, Training, read_back
from bench.tls_proxy import make_pki
from query.alert_feed import AlertFeed
from stepstream.contract import Alert

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    root = tmp_path_factory.mktemp("tls-stack")
    try:
        pki = make_pki(root / "pki")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    s = FaultStack(root, tls=pki)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_sdk_processor_sink_and_alert_follower_over_tls(stack: FaultStack) -> None:
    assert stack.settings.kafka_security_protocol == "SSL"
    run = f"tls-{uuid.uuid4().hex[:8]}"
    with AlertFeed(stack.settings, run=run) as feed:
        training = Training(stack, run, world=2, steps=40, step_s=0.03, nan_step=20).start()
        reports = training.wait()
        assert all(r["flushed"] for r in reports)
        lost, wrong, duplicates, fired = read_back(stack.settings, run, 2, 40)
        assert (lost, wrong, duplicates) == (0, 0, 0)
        assert fired >= 1
        followed: list[Alert] = []
        deadline = time.monotonic() + 30
        for alert in feed.follow(until=deadline):
            followed.append(alert)
            if any(a.rule == "nonfinite" and a.rank == 1 for a in followed):
                break
        assert any(a.rule == "nonfinite" and a.rank == 1 and a.step == 20 for a in followed)
    assert stack.tls_proxy is not None and stack.tls_proxy.connections >= 6
    # The workers were started from stack.cwd: faust's data folders went to the state dir.
    assert sorted(p.name for p in stack.cwd.iterdir()) == []
    assert (stack.settings.state_dir / "workers").is_dir()


def test_a_client_without_the_ca_gets_one_line_and_exit_6(stack: FaultStack) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPSTREAM_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "STEPSTREAM_STATE_DIR": str(stack.root / "cli-state"),
        "STEPSTREAM_KAFKA_BOOTSTRAP": stack.settings.kafka_bootstrap,
        "STEPSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
    }
    done = subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "alerts", "--follow"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 6, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: TLS with Kafka at {stack.settings.kafka_bootstrap} failed")
    assert "certificate verify failed" in lines[0]
    assert "STEPSTREAM_KAFKA_SSL_CAFILE" in lines[0]
