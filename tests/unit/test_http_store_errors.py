"""The HTTP API answers a store it cannot use with a 503 that says what to check."""

from __future__ import annotations

import socket

from fastapi.testclient import TestClient

from query.http_api import create_api
from query.reader import MetricsReader


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_redis_is_a_503_naming_the_store_and_what_to_check() -> None:
    url = f"redis://:secret@127.0.0.1:{closed_port()}/0"
    api = create_api(lambda: MetricsReader.from_url(url), redis_url=url)
    with TestClient(api) as client:
        for path in ("/runs", "/runs/r1/rolling", "/runs/r1/series/0/loss"):
            reply = client.get(path)
            assert reply.status_code == 503, (path, reply.text)
            detail = reply.json()["detail"]
            assert "cannot connect to Redis at redis://" in detail
            assert "STEPSTREAM_REDIS_URL" in detail
            assert "secret" not in detail  # credentials redacted
