"""`rediss://` URLs against a real server: the sink's write path and the reader through
TLS, with the CA (and a client certificate) given as URL query parameters. The bundled
valkey-server has no TLS, so a TLS-terminating proxy (bench/tls_proxy.py) stands in front."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from bench.tls_proxy import Pki, TlsProxy, make_pki
from query.reader import MetricsReader
from sinks.local_redis import LocalRedis
from stepstream.redis_client import async_client
from stepstream.settings import Settings

from .test_redis_store import all_messages, batches, value, write_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRedis]:
    with LocalRedis() as srv:
        yield srv


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    try:
        return make_pki(tmp_path_factory.mktemp("pki"))
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def proxy(server: LocalRedis, pki: Pki) -> Iterator[TlsProxy]:
    with TlsProxy(server.port, pki.server_cert, pki.server_key) as tls:
        yield tls


@pytest.fixture
def run() -> str:
    return f"tls-{uuid.uuid4().hex[:8]}"


def tls_url(port: int, **params: Path | str) -> str:
    query = "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in params.items())
    return f"rediss://127.0.0.1:{port}/0" + (f"?{query}" if query else "")


async def ping(url: str) -> bool:
    """One round trip with the asyncio client the sink workers and the alerting stage use."""
    client = async_client(url)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


def test_sink_and_reader_work_over_tls_given_the_ca(
    proxy: TlsProxy, pki: Pki, run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = tls_url(proxy.port, ssl_ca_certs=pki.ca)
    # As a deployment configures it: the sink app builds its client from this setting.
    monkeypatch.setenv("STEPSTREAM_REDIS_URL", url)
    settings = Settings()
    assert settings.redis_url == url
    write_all(settings.redis_url, all_messages(run), flush_every=7)
    assert asyncio.run(ping(settings.redis_url))
    with MetricsReader.from_settings(settings) as reader:
        assert [p.step for p in reader.series(run, "loss", rank=0).points] == list(range(60))
        assert reader.latest(run) == {(0, "loss"): value(0, 59), (1, "loss"): value(1, 59)}
        assert [a.status for a in reader.alerts(run)] == ["firing", "resolved", "firing"]
        assert run in [r.run for r in reader.runs()]
    assert proxy.connections >= 3  # writer, ping, reader: all of it went through TLS


def test_tls_without_the_ca_fails_certificate_verification(proxy: TlsProxy, run: str) -> None:
    url = tls_url(proxy.port)  # the system CA store does not know the test CA
    with (
        MetricsReader.from_url(url) as reader,
        pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"),
    ):
        reader.runs()
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        asyncio.run(ping(url))


def test_tls_refuses_a_certificate_for_another_host(server: LocalRedis, pki: Pki) -> None:
    """Signed by the trusted CA, but for 127.0.0.2: the hostname check is on by default."""
    with TlsProxy(server.port, pki.wrong_host_cert, pki.wrong_host_key) as tls:
        url = tls_url(tls.port, ssl_ca_certs=pki.ca)
        with pytest.raises(redis.exceptions.ConnectionError, match="IP address mismatch"):
            asyncio.run(ping(url))


def test_client_certificates_go_in_the_url(server: LocalRedis, pki: Pki, run: str) -> None:
    """A server that requires client certificates (tls-auth-clients yes)."""
    with TlsProxy(server.port, pki.server_cert, pki.server_key, client_ca=pki.ca) as tls:
        url = tls_url(
            tls.port,
            ssl_ca_certs=pki.ca,
            ssl_certfile=pki.client_cert,
            ssl_keyfile=pki.client_key,
            ssl_cert_reqs="required",
        )
        write_all(url, batches(run, steps=20), flush_every=4)
        with MetricsReader.from_url(url) as reader:
            assert [p.step for p in reader.series(run, "loss", rank=1).points] == list(range(20))
        without_cert = tls_url(tls.port, ssl_ca_certs=pki.ca)
        with pytest.raises(redis.exceptions.ConnectionError):
            asyncio.run(ping(without_cert))
