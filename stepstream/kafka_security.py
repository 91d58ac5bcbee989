"""Kafka TLS and SASL settings as each client library wants them: the one place that maps
``STEPSTREAM_KAFKA_SECURITY_PROTOCOL``, ``..._SASL_*`` and ``..._SSL_*`` to client keywords.

Every Kafka client stepstream builds takes its security from here: the SDK publisher and
control listener, the admin client that creates topics, the alert feed (kafka-python), and
the faust workers (aiokafka, through ``stepstream.faust_seam.make_app``). No Kafka imports:
the mapping is unit-tested on its own.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from stepstream.errors import ConfigError

if TYPE_CHECKING:
    from stepstream.settings import Settings

TLS_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def check_security(settings: Settings) -> None:
    """Raise ConfigError, naming the variable to set, when the settings cannot work."""
    protocol = settings.kafka_security_protocol
    if protocol in SASL_PROTOCOLS:
        missing = [
            name
            for name, value in (
                ("STEPSTREAM_KAFKA_SASL_MECHANISM", settings.kafka_sasl_mechanism),
                ("STEPSTREAM_KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
                ("STEPSTREAM_KAFKA_SASL_PASSWORD", settings.kafka_sasl_password),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                f"STEPSTREAM_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}"
            )
    elif settings.kafka_sasl_mechanism:
        raise ConfigError(
            f"STEPSTREAM_KAFKA_SASL_MECHANISM is set but STEPSTREAM_KAFKA_SECURITY_PROTOCOL is "
            f"{protocol}: use SASL_SSL (or SASL_PLAINTEXT on a trusted network)"
        )
    if bool(settings.kafka_ssl_certfile) != bool(settings.kafka_ssl_keyfile):
        raise ConfigError(
            "a client certificate needs both STEPSTREAM_KAFKA_SSL_CERTFILE and "
            "STEPSTREAM_KAFKA_SSL_KEYFILE"
        )


def kafka_python_security(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's KafkaProducer, KafkaConsumer, KafkaAdminClient."""
    check_security(settings)
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in TLS_PROTOCOLS:
        kwargs["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(settings, f"kafka_{key}")
            if value:
                kwargs[key] = value
    if protocol in SASL_PROTOCOLS:
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password
    return kwargs


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context of the settings, or None for PLAINTEXT / SASL_PLAINTEXT.

    Verifies brokers against `kafka_ssl_cafile` (else the system CAs), checks host names
    unless told not to, and presents the client certificate when one is configured.
    """
    check_security(settings)
    if settings.kafka_security_protocol not in TLS_PROTOCOLS:
        return None
    try:
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"Kafka TLS files could not be loaded ({exc}): check STEPSTREAM_KAFKA_SSL_CAFILE, "
            "STEPSTREAM_KAFKA_SSL_CERTFILE and STEPSTREAM_KAFKA_SSL_KEYFILE"
        ) from exc
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def aiokafka_security(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients (what faust's credentials turn into)."""
    kwargs: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.kafka_security_protocol in SASL_PROTOCOLS:
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password
    return kwargs
