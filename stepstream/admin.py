"""Explicit topic creation: stepstream never relies on broker auto-create.

Auto-created topics get the broker's default partition count (4 on tansu), and a stage
whose topics disagree in partition count cannot co-partition its keys.
"""

from __future__ import annotations

import socket
import ssl
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)

from stepstream.errors import ServiceUnreachableError, StackError, TopicMismatchError
from stepstream.failures import explain_kafka, kafka_tls_error
from stepstream.kafka_security import ssl_context
from stepstream.settings import Settings
from stepstream.topics import Topics


def require_broker(
    bootstrap: str, timeout_s: float = 3.0, tls: ssl.SSLContext | None = None
) -> None:
    """Raise a ServiceError unless one bootstrap server accepts a TCP connection in time
    (and, given a TLS context, completes a TLS handshake with it).

    kafka-python waits 30 s before saying a broker is away, and only logs TLS failures; a
    person at a terminal should hear it at once, with what to do.
    """
    deadline = time.monotonic() + timeout_s
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    while True:
        for server in servers:
            host, _, port = server.rpartition(":")
            try:
                sock = socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.5)
            except (OSError, ValueError):
                continue
            with sock:
                if tls is None:
                    return
                try:
                    sock.settimeout(max(1.0, timeout_s))
                    with tls.wrap_socket(sock, server_hostname=host or "127.0.0.1"):
                        return
                except ssl.SSLError as exc:
                    raise kafka_tls_error(bootstrap, exc) from exc
                except OSError:
                    continue
        if time.monotonic() >= deadline:
            raise ServiceUnreachableError(
                "kafka",
                f"no Kafka broker answers at {bootstrap}: start one with 'stepstream up' "
                "or set STEPSTREAM_KAFKA_BOOTSTRAP",
            )
        time.sleep(0.2)


def require_settings_broker(settings: Settings, timeout_s: float = 3.0) -> None:
    """`require_broker` for the bootstrap servers and TLS settings of `settings`."""
    require_broker(settings.kafka_bootstrap, timeout_s, ssl_context(settings))


def _admin(settings: Settings, timeout_s: float) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(
                bootstrap_servers=settings.kafka_bootstrap.split(","),
                client_id="stepstream-admin",
                request_timeout_ms=int(max(timeout_s, 5) * 1000),
                **settings.kafka_client_config(),
            )
        except (KafkaConnectionError, KafkaTimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise explain_kafka(exc, settings.kafka_bootstrap) or StackError(
                    f"no Kafka broker answers at {settings.kafka_bootstrap}: start one with "
                    "'stepstream up' or set STEPSTREAM_KAFKA_BOOTSTRAP"
                ) from exc
            time.sleep(0.2)


def topic_configs(settings: Settings) -> dict[str, str]:
    """Topic-level configs set at creation (`min.insync.replicas` when configured)."""
    if settings.min_insync_replicas is None:
        return {}
    return {"min.insync.replicas": str(settings.min_insync_replicas)}


def new_topic(settings: Settings, name: str) -> NewTopic:
    """A topic with the configured partitions, replication factor and configs."""
    return NewTopic(
        name,
        settings.partitions,
        settings.replication_factor,
        topic_configs=topic_configs(settings),
    )


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create every stepstream topic with `settings.partitions` partitions,
    `settings.replication_factor` replicas and `min.insync.replicas` when set.

    Returns the names created now. Topics that exist already are checked: a partition
    count other than the configured one raises TopicMismatchError.
    """
    names = Topics(settings.topic_prefix).all()
    require_settings_broker(settings, timeout_s)
    admin = _admin(settings, timeout_s)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        created: list[str] = []
        for name in missing:
            try:
                admin.create_topics([new_topic(settings, name)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another worker: checked below
        _check_partitions(admin, names, settings.partitions)
        return created
    except KafkaError as exc:
        failure = explain_kafka(exc, settings.kafka_bootstrap)
        raise failure or StackError(
            f"topic set-up on {settings.kafka_bootstrap} failed: {exc}"
        ) from exc
    finally:
        admin.close()


def _check_partitions(admin: KafkaAdminClient, names: list[str], expected: int) -> None:
    for description in admin.describe_topics(names):
        count = len(description.get("partitions") or [])
        if count != expected:
            raise TopicMismatchError(
                f"topic {description['topic']} has {count} partitions, configured "
                f"STEPSTREAM_PARTITIONS={expected}: use the existing count or another "
                "STEPSTREAM_TOPIC_PREFIX"
            )
