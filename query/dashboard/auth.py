"""Who may use the dashboard: the bind check and the token, without any web framework.

Reads on a loopback bind stay open, like the HTTP API always was. A non-loopback bind needs
a token for everything but the static files, and write actions (silences) need it on any
bind: when none is configured, the server makes one at start and prints it in its URL.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from stepstream.errors import ConfigError

TOKEN_HEADER = "X-Stepstream-Token"
TOKEN_QUERY = "token"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses no other machine reaches."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


@dataclass(frozen=True)
class Access:
    """The token in force and whether reads need it too."""

    token: str
    reads_need_token: bool
    generated: bool = False

    def allows(self, presented: str | None) -> bool:
        """True when `presented` is the token (constant-time comparison)."""
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.token.encode()
        )


def resolve_access(host: str, configured: str | None) -> Access:
    """The access rules of a server bound to `host` with the configured token (or None).

    Raises ConfigError on a non-loopback bind without a token: anyone who reaches the port
    could read every run and silence its alerts.
    """
    token = (configured or "").strip() or None
    if token is not None and len(token) < 16:
        raise ConfigError(
            "STEPSTREAM_UI_TOKEN is shorter than 16 characters: use a random one, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
        )
    loopback = is_loopback(host)
    if not loopback and token is None:
        raise ConfigError(
            f"serving on {host}, which other machines can reach, needs a token: set "
            "STEPSTREAM_UI_TOKEN (ui_token) to a random string of 16+ characters, or bind "
            "127.0.0.1"
        )
    if token is None:
        return Access(secrets.token_urlsafe(24), reads_need_token=False, generated=True)
    return Access(token, reads_need_token=not loopback)


def dashboard_url(host: str, port: int, access: Access) -> str:
    """The URL to open: with the token when one was generated (like Jupyter's)."""
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}/"
    return f"{base}?{TOKEN_QUERY}={access.token}" if access.generated else base
