"""docker-compose.production.yml: three KRaft brokers, topics with 3 replicas and
min.insync.replicas 2, validated like docker-compose.yml (compose-spec schema, Settings
names and values, listeners the workers can reach) without a Docker engine."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from stepstream.settings import Settings

from .test_compose import (
    ROOT,
    compose_schema_errors,
    env_problems,
    parse_listeners,
    service_env,
    stepstream_env,
    worker_services,
)

PRODUCTION = ROOT / "docker-compose.production.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(PRODUCTION.read_text())
    assert isinstance(doc, dict)
    return doc


def brokers(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        name: service_env(svc)
        for name, svc in doc["services"].items()
        if str(svc.get("image", "")).startswith("apache/kafka")
    }


def test_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    assert compose_schema_errors(compose) == []


def test_three_brokers_form_one_quorum(compose: dict[str, Any]) -> None:
    nodes = brokers(compose)
    assert len(nodes) == 3
    ids = {env["KAFKA_NODE_ID"] for env in nodes.values()}
    assert ids == {"1", "2", "3"}
    for name, env in nodes.items():
        voters = dict(v.split("@", 1) for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters == {"1": "kafka-1:9093", "2": "kafka-2:9093", "3": "kafka-3:9093"}
        assert voters[env["KAFKA_NODE_ID"]].startswith(f"{name}:")
        controller = parse_listeners(env["KAFKA_LISTENERS"])["CONTROLLER"]
        assert controller[1] == 9093
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3
        advertised = parse_listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        assert advertised["PLAINTEXT"] == (name, 9092)


def test_workers_replicate_as_the_cluster_allows(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = brokers(compose)
    workers = worker_services(compose)
    assert set(workers) == {"processor", "sink"}
    envs = [stepstream_env(svc) for svc in workers.values()]
    assert envs[0] == envs[1]
    env = {k: v for k, v in envs[0].items() if v != ""}
    assert env_problems(env) == []
    # ${VAR:-default} is compose interpolation; the default is what a plain host gets.
    for key, value in env.items():
        monkeypatch.setenv(key, value.split(":-", 1)[1].rstrip("}") if "${" in value else value)
    settings = Settings()
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)
    assert settings.replication_factor <= len(nodes)
    assert settings.min_insync_replicas is not None
    assert settings.min_insync_replicas < settings.replication_factor  # one broker may fail
    bootstrap = {s.strip() for s in settings.kafka_bootstrap.split(",")}
    assert bootstrap == {f"{name}:9092" for name in nodes}


def test_redis_keeps_an_append_only_file(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
