"""The dashboard's bind check and token rules."""

from __future__ import annotations

import pytest

from query.dashboard.auth import dashboard_url, is_loopback, resolve_access
from stepstream.errors import ConfigError

TOKEN = "s3cret-token-0123456789"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.org", "eth0.local"])
def test_other_addresses_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_non_loopback_bind_without_token_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="STEPSTREAM_UI_TOKEN"):
        resolve_access("0.0.0.0", None)
    with pytest.raises(ConfigError, match="STEPSTREAM_UI_TOKEN"):
        resolve_access("0.0.0.0", "   ")


def test_short_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="16"):
        resolve_access("127.0.0.1", "abc")


def test_loopback_without_token_generates_one_for_writes_only() -> None:
    a = resolve_access("127.0.0.1", None)
    b = resolve_access("127.0.0.1", None)
    assert a.generated and not a.reads_need_token and len(a.token) >= 24
    assert a.token != b.token
    assert dashboard_url("127.0.0.1", 8321, a) == f"http://127.0.0.1:8321/?token={a.token}"


def test_configured_token_guards_reads_off_loopback() -> None:
    remote = resolve_access("0.0.0.0", TOKEN)
    assert remote.reads_need_token and not remote.generated
    assert remote.allows(TOKEN) and not remote.allows(TOKEN + "x") and not remote.allows(None)
    assert dashboard_url("0.0.0.0", 80, remote) == "http://0.0.0.0:80/"
    local = resolve_access("::1", TOKEN)
    assert not local.reads_need_token
    assert dashboard_url("::1", 80, local) == "http://[::1]:80/"
