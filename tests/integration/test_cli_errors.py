"""The real CLI against a closed port, a wrong password and a TLS mismatch: one line that
says what failed and what to check, and the documented exit code (README, "CLI exit
codes"); --debug adds the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinks.local_redis import LocalRedis
from stepstream.stack import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXIT_UNREACHABLE, EXIT_AUTH, EXIT_TLS = 4, 5, 6


def cli(*args: str, state_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STEPSTREAM_")} | {
        "STEPSTREAM_STATE_DIR": str(state_dir),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "stepstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=state_dir,
        check=False,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert not done.stdout.strip(), done.stdout
    return lines[0]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRedis]:
    with LocalRedis(password="right-pw") as srv:
        yield srv


def test_closed_redis_port(tmp_path: Path) -> None:
    port = free_port()
    done = cli("query", "--redis-url", f"redis://127.0.0.1:{port}/0", state_dir=tmp_path)
    assert done.returncode == EXIT_UNREACHABLE
    line = one_line(done)
    assert line.startswith(f"error: cannot connect to Redis at redis://127.0.0.1:{port}/0 (")
    assert "STEPSTREAM_REDIS_URL" in line


def test_wrong_redis_password(server: LocalRedis, tmp_path: Path) -> None:
    url = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
    done = cli("alerts", state_dir=tmp_path, STEPSTREAM_REDIS_URL=url)
    assert done.returncode == EXIT_AUTH
    line = one_line(done)
    assert line.startswith(f"error: Redis at redis://127.0.0.1:{server.port}/0 refused the")
    assert "check the user and password in STEPSTREAM_REDIS_URL" in line
    assert "wrong-pw" not in done.stderr  # never echo a password


def test_tls_client_against_a_plain_server(server: LocalRedis, tmp_path: Path) -> None:
    url = f"rediss://:right-pw@127.0.0.1:{server.port}/0"
    done = cli("query", "--redis-url", url, state_dir=tmp_path)
    assert done.returncode == EXIT_TLS
    line = one_line(done)
    assert line.startswith(f"error: TLS with Redis at rediss://127.0.0.1:{server.port}/0 failed")
    assert "ssl_ca_certs" in line


def test_debug_adds_the_traceback(tmp_path: Path) -> None:
    port = free_port()
    done = cli("--debug", "query", "--redis-url", f"redis://127.0.0.1:{port}/0", state_dir=tmp_path)
    assert done.returncode == EXIT_UNREACHABLE
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: cannot connect to Redis")


def test_closed_kafka_port(tmp_path: Path) -> None:
    port = free_port()
    done = cli(
        "alerts", "--follow", state_dir=tmp_path, STEPSTREAM_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}"
    )
    assert done.returncode == EXIT_UNREACHABLE
    assert one_line(done).startswith(f"error: no Kafka broker answers at 127.0.0.1:{port}")


def test_nothing_is_left_in_the_working_directory(tmp_path: Path) -> None:
    cli("query", "--redis-url", f"redis://127.0.0.1:{free_port()}/0", state_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
