"""Turn a Redis or Kafka client exception into one of stepstream's ServiceErrors, whose
one-line message says what failed and what to check. The CLI prints that line instead of
a traceback (``--debug`` shows the traceback too).

Only exception classes are imported here, no clients.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import kafka.errors as kafka_errors
import redis.exceptions as redis_errors

from stepstream.errors import (
    ServiceAuthError,
    ServiceError,
    ServiceTlsError,
    ServiceUnreachableError,
)

# Fragments of messages that only TLS failures carry (OpenSSL's and Python's wording).
_TLS_MARKERS = (
    "ssl",
    "certificate",
    "wrong version number",
    "tlsv1",
    "handshake",
    "ip address mismatch",
    "hostname mismatch",
    "record layer failure",
)


def redact_url(url: str) -> str:
    """`url` without its password and query, for messages: ``redis://user@host:6379/0``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _is_tls(exc: BaseException) -> bool:
    return any(
        isinstance(e, ssl.SSLError) or any(m in str(e).lower() for m in _TLS_MARKERS)
        for e in _chain(exc)
    )


def explain_redis(exc: BaseException, url: str) -> ServiceError | None:
    """The ServiceError for a redis-py exception talking to `url`, or None if it is not a
    connection, credential or TLS failure."""
    where = redact_url(url)
    detail = _first_line(exc)
    if isinstance(exc, redis_errors.NoPermissionError):
        return ServiceAuthError(
            "redis",
            f"Redis at {where} refused a command ({detail}): the ACL user lacks a permission; "
            "recreate it with the line 'stepstream redis acl' prints",
        )
    text = str(exc)
    if isinstance(exc, redis_errors.AuthenticationError) or (
        isinstance(exc, redis_errors.ResponseError) and text.startswith(("NOAUTH", "WRONGPASS"))
    ):
        return ServiceAuthError(
            "redis",
            f"Redis at {where} refused the credentials ({detail}): check the user and password "
            "in STEPSTREAM_REDIS_URL (redis://USER:PASSWORD@HOST:PORT/DB) or --redis-url",
        )
    if not isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError)):
        return None
    if _is_tls(exc):
        return ServiceTlsError(
            "redis",
            f"TLS with Redis at {where} failed ({detail}): check that the server speaks TLS "
            "on that port (rediss://) or not (redis://), and the ssl_ca_certs, ssl_certfile, "
            "ssl_keyfile parameters of STEPSTREAM_REDIS_URL",
        )
    if "closed by server" in text.lower():
        return ServiceUnreachableError(
            "redis",
            f"Redis at {where} closed the connection ({detail}): if that port expects TLS, "
            "use a rediss:// URL with ssl_ca_certs; else check the server's log",
        )
    return ServiceUnreachableError(
        "redis",
        f"cannot connect to Redis at {where} ({detail}): check that the server runs and "
        "STEPSTREAM_REDIS_URL (or --redis-url); 'stepstream status' shows the local stack",
    )


def explain_kafka(exc: BaseException, bootstrap: str) -> ServiceError | None:
    """The ServiceError for a kafka-python exception talking to `bootstrap`, or None."""
    detail = _first_line(exc)
    if isinstance(
        exc,
        (
            kafka_errors.SaslAuthenticationFailedError,
            kafka_errors.UnsupportedSaslMechanismError,
            kafka_errors.IllegalSaslStateError,
            kafka_errors.AuthorizationError,
            kafka_errors.TopicAuthorizationFailedError,
            kafka_errors.GroupAuthorizationFailedError,
            kafka_errors.ClusterAuthorizationFailedError,
        ),
    ):
        return ServiceAuthError(
            "kafka",
            f"Kafka at {bootstrap} refused the credentials or an operation ({detail}): check "
            "STEPSTREAM_KAFKA_SASL_MECHANISM, STEPSTREAM_KAFKA_SASL_USERNAME and "
            "STEPSTREAM_KAFKA_SASL_PASSWORD, and the user's ACLs",
        )
    if isinstance(exc, ssl.SSLError):
        return kafka_tls_error(bootstrap, exc)
    if isinstance(
        exc,
        (
            kafka_errors.NoBrokersAvailable,
            kafka_errors.KafkaConnectionError,
            kafka_errors.KafkaTimeoutError,
        ),
    ):
        if _is_tls(exc):
            return kafka_tls_error(bootstrap, exc)
        return ServiceUnreachableError(
            "kafka",
            f"no Kafka broker answers at {bootstrap} ({detail}): check that it runs, "
            "STEPSTREAM_KAFKA_BOOTSTRAP, and STEPSTREAM_KAFKA_SECURITY_PROTOCOL (a TLS "
            "listener needs SSL or SASL_SSL)",
        )
    return None


def kafka_tls_error(bootstrap: str, exc: BaseException) -> ServiceTlsError:
    """The message for a failed TLS handshake with a Kafka broker."""
    return ServiceTlsError(
        "kafka",
        f"TLS with Kafka at {bootstrap} failed ({_first_line(exc)}): check "
        "STEPSTREAM_KAFKA_SECURITY_PROTOCOL (SSL / SASL_SSL only for TLS listeners), "
        "STEPSTREAM_KAFKA_SSL_CAFILE and the host name in the broker's certificate",
    )


def explain(
    exc: BaseException, redis_url: str | None, bootstrap: str | None
) -> ServiceError | None:
    """A ServiceError for any Redis or Kafka failure, else None (a bug: show the traceback)."""
    if isinstance(exc, ServiceError):
        return exc
    if redis_url is not None and isinstance(exc, redis_errors.RedisError):
        return explain_redis(exc, redis_url)
    if bootstrap is not None and isinstance(exc, (kafka_errors.KafkaError, ssl.SSLError)):
        return explain_kafka(exc, bootstrap)
    return None
