"""The Kafka security settings reach every client in the shape its library wants.

SASL cannot be exercised against the embedded broker (tansu 0.6 with memory storage has
no way to create a SCRAM user: `tansu user create` needs an authenticated connection), so
the mapping for every client is checked here; TLS runs for real in
tests/integration/test_kafka_tls.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from stepstream.admin import new_topic
from stepstream.errors import ConfigError
from stepstream.faust_seam import broker_credentials, make_app
from stepstream.kafka_security import aiokafka_security, kafka_python_security, ssl_context
from stepstream.settings import Settings
from stepstream.streaming import worker_data_dir

CA = str(Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"))


def settings(**values: Any) -> Settings:
    return Settings(**values)


def test_plaintext_is_the_default_and_carries_nothing_else() -> None:
    assert kafka_python_security(settings()) == {"security_protocol": "PLAINTEXT"}
    assert aiokafka_security(settings()) == {"security_protocol": "PLAINTEXT"}
    assert broker_credentials(settings()) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_reaches_kafka_python_and_faust_alike(mechanism: str) -> None:
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="svc",
        kafka_sasl_password="pw",
        kafka_ssl_cafile=CA,
    )
    assert kafka_python_security(s) == {
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": True,
        "ssl_cafile": CA,
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw",
    }
    # faust's aiokafka driver turns broker_credentials into these keywords
    faust_kwargs = dict(credentials_to_aiokafka_auth(broker_credentials(s)))
    ours = aiokafka_security(s)
    assert isinstance(faust_kwargs.pop("ssl_context"), ssl.SSLContext)
    assert isinstance(ours.pop("ssl_context"), ssl.SSLContext)
    assert (
        faust_kwargs
        == ours
        == {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": mechanism,
            "sasl_plain_username": "svc",
            "sasl_plain_password": "pw",
        }
    )


def test_sasl_plaintext_has_no_tls_context() -> None:
    s = settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="u",
        kafka_sasl_password="p",
    )
    assert "ssl_cafile" not in kafka_python_security(s)
    auth = dict(credentials_to_aiokafka_auth(broker_credentials(s)))
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert auth["ssl_context"] is None
    assert auth["sasl_mechanism"] == "SCRAM-SHA-256"


def test_ssl_with_client_certificate_and_hostname_check_off(tmp_path: Path) -> None:
    s = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=CA,
        kafka_ssl_certfile="/c.pem",
        kafka_ssl_keyfile="/c.key",
        kafka_ssl_check_hostname=False,
    )
    assert kafka_python_security(s) == {
        "security_protocol": "SSL",
        "ssl_check_hostname": False,
        "ssl_cafile": CA,
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/c.key",
    }
    with pytest.raises(ConfigError, match="STEPSTREAM_KAFKA_SSL_CERTFILE"):
        ssl_context(s)  # the files do not exist: said with the variables to check
    no_cert = settings(kafka_security_protocol="SSL", kafka_ssl_check_hostname=False)
    context = ssl_context(no_cert)
    assert context is not None and context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert dict(credentials_to_aiokafka_auth(broker_credentials(no_cert)))["security_protocol"] == (
        "SSL"
    )


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "STEPSTREAM_KAFKA_SASL_MECHANISM"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"},
            "STEPSTREAM_KAFKA_SASL_USERNAME",
        ),
        ({"kafka_sasl_mechanism": "PLAIN"}, "use SASL_SSL"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/c"}, "SSL_KEYFILE"),
    ],
)
def test_incomplete_settings_say_what_to_set(values: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        kafka_python_security(settings(**values))


def test_unknown_protocol_or_mechanism_is_refused() -> None:
    with pytest.raises(ConfigError, match="KAFKA_S"):
        settings(kafka_security_protocol="TLS")
    with pytest.raises(ConfigError, match="KAFKA_S"):
        settings(kafka_sasl_mechanism="SCRAM-SHA-1")


def test_every_client_builder_uses_the_security_settings() -> None:
    """kafka-python clients take Settings.kafka_client_config(); faust apps get credentials."""
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="u",
        kafka_sasl_password="p",
    )
    assert s.kafka_client_config() == kafka_python_security(s)
    app = make_app(s, "security-test")
    credentials = app.conf.broker_credentials
    assert credentials is not None
    assert dict(credentials_to_aiokafka_auth(credentials))["sasl_mechanism"] == "SCRAM-SHA-512"
    root = Path(__file__).resolve().parents[2]
    builders = {
        "producers/publisher.py": "KafkaProducer(",
        "producers/control.py": "KafkaConsumer(",
        "query/alert_feed.py": "KafkaConsumer(",
        "stepstream/admin.py": "KafkaAdminClient(",
    }
    for path, call in builders.items():
        text = (root / path).read_text()
        assert text.count(call) == text.count("kafka_client_config()") >= 1, path


def test_replication_settings_reach_topic_creation(tmp_path: Path) -> None:
    s = settings(replication_factor=3, min_insync_replicas=2, partitions=6)
    topic = new_topic(s, "stepstream.telemetry")
    assert (topic.num_partitions, topic.replication_factor) == (6, 3)
    assert topic.topic_configs == {"min.insync.replicas": "2"}
    assert new_topic(settings(), "x").topic_configs == {}
    assert make_app(s, "rf-test").conf.topic_replication_factor == 3
    with pytest.raises(ConfigError, match="exceeds replication_factor"):
        settings(replication_factor=1, min_insync_replicas=2)


def test_worker_data_lives_under_the_state_dir(tmp_path: Path) -> None:
    s = settings(state_dir=tmp_path)
    app = make_app(s, "stepstream-processor")
    assert Path(app.conf.datadir) == worker_data_dir(s, "stepstream-processor")
    assert Path(app.conf.datadir).is_relative_to(tmp_path)
