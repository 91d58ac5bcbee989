"""`stepstream up / status / down` and the stack's errors, against real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stepstream.errors import BinaryNotFoundError, PortInUseError
from stepstream.settings import Settings
from stepstream.stack import LocalStack, check_port_free, find_broker_binary, load_settings

pytestmark = pytest.mark.integration


def cli(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STEPSTREAM_STATE_DIR": str(state_dir), "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "stepstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_up_status_down_round_trip(tmp_path: Path) -> None:
    up = cli("up", "--no-workers", "--json", state_dir=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        where = json.loads(up.stdout)
        status = cli("status", "--json", state_dir=tmp_path)
        assert status.returncode == 0
        doc = json.loads(status.stdout)
        assert doc["processes"] == {"broker": True, "redis": True}
        assert doc["kafka_bootstrap"] == where["kafka_bootstrap"]
        pids = [p["pid"] for p in json.loads((tmp_path / "stack.json").read_text())["processes"]]
        # A script on this machine finds the stack without configuration.
        os.environ["STEPSTREAM_STATE_DIR"] = str(tmp_path)
        try:
            assert load_settings().kafka_bootstrap == where["kafka_bootstrap"]
            assert load_settings(kafka_bootstrap="h:1").kafka_bootstrap == "h:1"
        finally:
            del os.environ["STEPSTREAM_STATE_DIR"]
        second = cli("up", state_dir=tmp_path)
        assert second.returncode == 1 and "already running" in second.stderr
    finally:
        down = cli("down", state_dir=tmp_path)
    assert down.returncode == 0 and "broker" in down.stdout
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
    after = cli("status", state_dir=tmp_path)
    assert after.returncode == 3 and "stepstream up" in after.stderr


def test_taken_port_is_named_with_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} .*taken.*pid {os.getpid()}"):
            check_port_free(port, "Kafka broker")
        result = cli("up", "--kafka-port", str(port), "--no-workers", state_dir=tmp_path)
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "0 picks a free one" in result.stderr
    assert not (tmp_path / "stack.json").exists()


def test_missing_binary_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFoundError, match="STEPSTREAM_BROKER_BIN"):
        find_broker_binary("/nonexistent/tansu")
    settings = Settings(state_dir=tmp_path, redis_server_bin="/nonexistent/valkey")
    with pytest.raises(BinaryNotFoundError, match="STEPSTREAM_REDIS_SERVER_BIN"):
        LocalStack(settings, workers=False).start()


def test_sigterm_during_up_stops_what_it_had_started(tmp_path: Path) -> None:
    env = {**os.environ, "STEPSTREAM_STATE_DIR": str(tmp_path)}
    up = subprocess.Popen(
        [sys.executable, "-m", "stepstream.cli", "up"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: set[int] = set()
    try:
        parent = psutil.Process(up.pid)
        deadline = time.monotonic() + 60
        # Wait until the broker and Redis run (workers start last), then stop `up`.
        while time.monotonic() < deadline and len(started) < 2 and up.poll() is None:
            started |= {c.pid for c in parent.children(recursive=True)}
            time.sleep(0.05)
        assert len(started) >= 2, "up started no servers"
        up.send_signal(signal.SIGTERM)
        _, err = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 130, err
    alive = [p for p in started if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == []
    assert not (tmp_path / "stack.json").exists()
