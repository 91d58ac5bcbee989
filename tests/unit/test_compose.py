"""Checks of docker-compose.yml, the Dockerfile and .dockerignore that need no Docker engine.

The compose file is validated against the compose-spec JSON schema, and its values are
cross-checked against what stepstream really accepts: Settings fields, CLI commands and
the Kafka listeners the workers must reach.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
import json
import os
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from stepstream import cli
from stepstream.errors import ConfigError
from stepstream.settings import Settings, unknown_variables
from stepstream.stack import WORKER_STAGES
from stepstream.topics import Topics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"
ENV_PREFIX = "STEPSTREAM_"


# --- reading the files -------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    """The compose file as plain data, YAML anchors and merge keys resolved."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict), "docker-compose.yml must be a mapping"
    return doc


def env_text(value: Any) -> str:
    """An environment value as the container sees it (compose turns YAML scalars into text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either the mapping or the KEY=VALUE list form.

    Variables without a value are passed through from the host by compose, so they say
    nothing about the container and are left out.
    """
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) for item in raw if "=" in item)
        return {key: value for key, value in pairs}
    return {key: env_text(value) for key, value in raw.items() if value is not None}


def service_command(service: dict[str, Any]) -> list[str]:
    """A service's `command` as an argument list."""
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def worker_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services built from this repository's Dockerfile: the stepstream containers."""
    return {name: svc for name, svc in doc["services"].items() if "build" in svc}


def stepstream_env(service: dict[str, Any]) -> dict[str, str]:
    """Only the ``STEPSTREAM_*`` variables of a service."""
    return {k: v for k, v in service_env(service).items() if k.startswith(ENV_PREFIX)}


def service_host_names(name: str, service: dict[str, Any]) -> set[str]:
    """Names under which other containers on the default network reach a service."""
    names = {name}
    if service.get("hostname"):
        names.add(service["hostname"])
    networks = service.get("networks")
    if isinstance(networks, dict):
        for network in networks.values():
            names.update((network or {}).get("aliases", []))
    return names


def parse_listeners(value: str) -> dict[str, tuple[str, int]]:
    """Kafka's ``NAME://host:port,...`` as ``{NAME: (host, port)}``; a blank host stays blank."""
    listeners: dict[str, tuple[str, int]] = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        listeners[name] = (host, int(port))
    return listeners


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


# --- the checks, as functions returning problems so that broken copies can be fed in --


def env_problems(env: dict[str, str]) -> list[str]:
    """``STEPSTREAM_*`` names that Settings would ignore (with a warning)."""
    return [f"{name} is not a Settings field" for name in unknown_variables(env)]


def kafka_problems(doc: dict[str, Any]) -> list[str]:
    """What keeps the kafka service from being a single-node KRaft broker the workers reach."""
    problems: list[str] = []
    services = doc["services"]
    if "kafka" not in services:
        return ["no kafka service"]
    kafka = services["kafka"]
    env = service_env(kafka)

    roles = {r.strip() for r in env.get("KAFKA_PROCESS_ROLES", "").split(",") if r.strip()}
    if roles != {"broker", "controller"}:
        problems.append(f"KAFKA_PROCESS_ROLES is {sorted(roles)}, not broker and controller")
    if env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true").lower() != "false":
        problems.append("topic auto-creation is not disabled")
    # Kafka's defaults of 3 replicas cannot be met by one broker: consumer-group offsets
    # could then never be committed.
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    ):
        if env.get(key) != "1":
            problems.append(f"{key} is {env.get(key)!r}, a single node needs 1")

    listeners = parse_listeners(env.get("KAFKA_LISTENERS", "NONE://:0"))
    advertised = parse_listeners(env.get("KAFKA_ADVERTISED_LISTENERS", "NONE://:0"))
    protocols = dict(
        pair.split(":", 1)
        for pair in env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "").split(",")
        if ":" in pair
    )
    controllers = set(env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "").split(","))
    if not controllers <= listeners.keys():
        problems.append(f"controller listeners {sorted(controllers)} are not all bound")
    voters = [v.split("@", 1) for v in env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "").split(",")]
    controller_ports = {listeners[c][1] for c in controllers if c in listeners}
    node_id = env.get("KAFKA_NODE_ID")
    if [node for node, _ in voters] != [node_id]:
        problems.append(f"quorum voters {voters} are not exactly this node ({node_id})")
    for _, address in voters:
        if int(address.rpartition(":")[2] or 0) not in controller_ports:
            problems.append(f"quorum voter {address} is not on a controller listener port")

    kafka_hosts = service_host_names("kafka", kafka)
    default_protocol = Settings.model_fields["kafka_security_protocol"].default
    for name, svc in worker_services(doc).items():
        wenv = stepstream_env(svc)
        bootstrap = wenv.get("STEPSTREAM_KAFKA_BOOTSTRAP")
        if bootstrap is None:
            problems.append(f"{name} has no STEPSTREAM_KAFKA_BOOTSTRAP (would use 127.0.0.1)")
            continue
        for server in bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            match = [lname for lname, address in advertised.items() if address == (host, int(port))]
            if not match:
                problems.append(f"{name} bootstraps {server}, which kafka does not advertise")
                continue
            lname = match[0]
            if lname in controllers:
                problems.append(f"{name} bootstraps the controller listener {lname}")
            if host not in kafka_hosts:
                problems.append(f"{name} bootstraps {host}, not a name of the kafka service")
            if lname not in listeners or listeners[lname][1] != int(port):
                problems.append(f"listener {lname} is advertised but not bound on port {port}")
            wanted = wenv.get("STEPSTREAM_KAFKA_SECURITY_PROTOCOL", default_protocol)
            if protocols.get(lname) != wanted:
                problems.append(f"{name} speaks {wanted}, listener {lname} {protocols.get(lname)}")
    return problems


def _validator_class(validators: Any, schema: dict[str, Any]) -> Any:
    # The vendored schema names its draft as https://...draft-07/schema, which jsonschema
    # only knows spelt http://...draft-07/schema#; guessing the latest draft instead would
    # validate with the wrong semantics.
    uri = schema.get("$schema", "")
    for candidate in (uri, uri.replace("https://", "http://", 1)):
        for spelling in (candidate, candidate.rstrip("#") + "#"):
            found = validators.validator_for({"$schema": spelling}, default=None)
            if found is not None:
                return found
    raise AssertionError(f"the compose-spec schema names an unknown draft: {uri!r}")


def compose_schema_errors(doc: dict[str, Any]) -> list[str]:
    """compose-spec schema violations of `doc`, one line each.

    The schema ships inside check-jsonschema (a dev dependency); the test is skipped, not
    passed, where it is not installed.
    """
    builtin = pytest.importorskip(
        "check_jsonschema.builtin_schemas",
        reason="check-jsonschema (dev extra) ships the compose-spec schema: pip install -e .[dev]",
    )
    validators = pytest.importorskip("jsonschema.validators")
    schema = builtin.get_builtin_schema("vendor.compose-spec")
    validator_class = _validator_class(validators, schema)
    validator_class.check_schema(schema)
    errors = validator_class(schema).iter_errors(doc)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file."""
    return load_compose()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A monkeypatch with every ``STEPSTREAM_*`` of the outer environment removed."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    yield monkeypatch


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a worker container with `env` would read them."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


# --- (a) the compose-spec schema -----------------------------------------------------


def test_compose_file_matches_compose_spec_schema(compose: dict[str, Any]) -> None:
    assert compose_schema_errors(compose) == []


def test_compose_spec_schema_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    # Guards against a schema that accepts anything (an empty or wrong schema would).
    broken = copy.deepcopy(compose)
    broken["services"]["processor"]["restart_policy"] = "always"
    broken["services"]["kafka"]["ports"] = "9094:9094"
    errors = compose_schema_errors(broken)
    assert any(e.startswith("services/processor") and "restart_policy" in e for e in errors)
    assert any(e.startswith("services/kafka/ports") for e in errors)


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


def test_compose_cli_accepts_the_file() -> None:
    # A second, independent reading of the file by the tool users run; `config` needs no
    # engine. The schema test above stands on its own where no compose binary exists.
    command = _compose_cli()
    if command is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- (b) STEPSTREAM_* variables are real settings with valid values -------------------


@pytest.mark.parametrize("service", ["processor", "sink"])
def test_worker_env_names_settings_fields(compose: dict[str, Any], service: str) -> None:
    env = stepstream_env(compose["services"][service])
    # Without these the workers fall back to 127.0.0.1, which is the container itself.
    assert {"STEPSTREAM_KAFKA_BOOTSTRAP", "STEPSTREAM_REDIS_URL"} <= env.keys()
    assert env_problems(env) == []


def test_env_check_catches_a_misspelt_variable() -> None:
    assert env_problems({"STEPSTREAM_PARTITION": "4"}) == [
        "STEPSTREAM_PARTITION is not a Settings field"
    ]


@pytest.mark.parametrize("service", ["processor", "sink"])
def test_worker_env_parses_to_the_same_values(
    compose: dict[str, Any], service: str, clean_env: pytest.MonkeyPatch
) -> None:
    env = stepstream_env(compose["services"][service])
    settings = settings_from_env(env, clean_env)
    for name, text in env.items():
        parsed = getattr(settings, name[len(ENV_PREFIX) :].lower())
        if isinstance(parsed, list):
            # The window validators sort and de-duplicate; the sizes must survive as given.
            assert set(parsed) == set(json.loads(text)), name
        else:
            assert parsed == type(parsed)(text), name
    assert isinstance(settings.partitions, int)
    assert settings.partitions == int(env["STEPSTREAM_PARTITIONS"])


def test_worker_log_level_is_one_faust_accepts(compose: dict[str, Any]) -> None:
    from mode.utils.logging import level_number

    for svc in worker_services(compose).values():
        level = stepstream_env(svc).get(
            "STEPSTREAM_LOG_LEVEL", Settings.model_fields["log_level"].default
        )
        # mode answers an unknown name with a "Level X" string instead of raising.
        assert isinstance(level_number(level), int), level


def test_processor_and_sink_share_their_settings(compose: dict[str, Any]) -> None:
    envs = [stepstream_env(svc) for svc in worker_services(compose).values()]
    assert envs and all(env == envs[0] for env in envs)


def test_invalid_partitions_value_is_rejected(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="STEPSTREAM_PARTITIONS"):
        settings_from_env({"STEPSTREAM_PARTITIONS": "four"}, clean_env)


# --- (c) commands and entry point ----------------------------------------------------


def test_there_are_worker_services_for_every_stage(compose: dict[str, Any]) -> None:
    stages = [service_command(svc)[1:2] for svc in worker_services(compose).values()]
    assert sorted(s[0] for s in stages if s) == sorted(WORKER_STAGES)


@pytest.mark.parametrize("service", ["processor", "sink"])
def test_worker_command_is_a_cli_command_with_a_valid_stage(
    compose: dict[str, Any], service: str
) -> None:
    command = service_command(compose["services"][service])
    assert command[:1] == ["worker"]

    result = CliRunner().invoke(cli.app, [*command, "--help"])
    assert result.exit_code == 0, result.output

    group = typer.main.get_command(cli.app)
    worker = group.commands[command[0]]  # type: ignore[attr-defined]
    # Parsing with the real click command also rejects surplus or missing arguments.
    ctx = worker.make_context(command[0], command[1:])
    assert ctx.params["stage"] in WORKER_STAGES
    assert ctx.params["stage"] == service


def test_unknown_stage_is_refused_by_the_cli(clean_env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli.app, ["worker", "bogus"])
    assert result.exit_code == 2


@pytest.mark.parametrize("service", ["processor", "sink"])
def test_worker_command_starts_its_stage_with_the_compose_settings(
    compose: dict[str, Any], service: str, clean_env: pytest.MonkeyPatch
) -> None:
    svc = compose["services"][service]
    env = stepstream_env(svc)
    for key, value in env.items():
        clean_env.setenv(key, value)
    calls: dict[str, Any] = {}

    def fake_ensure_topics(settings: Settings) -> list[str]:
        calls["settings"] = settings
        return []

    def fake_run_worker(app: Any, log_level: str) -> None:
        calls["app"], calls["log_level"] = app, log_level

    # The worker imports both at call time, so patching the modules intercepts them
    # before anything connects.
    clean_env.setattr("stepstream.admin.ensure_topics", fake_ensure_topics)
    clean_env.setattr("stepstream.faust_seam.run_worker", fake_run_worker)

    result = CliRunner().invoke(cli.app, service_command(svc))
    assert result.exit_code == 0, result.output
    settings = calls["settings"]
    assert settings.kafka_bootstrap == env["STEPSTREAM_KAFKA_BOOTSTRAP"]
    assert settings.redis_url == env["STEPSTREAM_REDIS_URL"]
    app = calls["app"]
    assert app.conf.id == Topics(settings.topic_prefix).group(service)
    assert [str(url) for url in app.conf.broker] == [
        f"kafka://{server}" for server in env["STEPSTREAM_KAFKA_BOOTSTRAP"].split(",")
    ]
    assert calls["log_level"] == env["STEPSTREAM_LOG_LEVEL"]


def test_dockerfile_entrypoint_is_the_console_script(compose: dict[str, Any]) -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    entrypoints = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    # Exec form only: the shell form would swallow compose's `command` and SIGTERM.
    entrypoint = json.loads(entrypoints[-1])
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert entrypoint == ["stepstream"]
    assert entrypoint[0] in scripts

    module_name, _, attr = scripts[entrypoint[0]].partition(":")
    module = importlib.import_module(module_name)
    assert module is cli, "the console script must run the CLI the commands are checked against"
    assert callable(getattr(module, attr))

    for name, svc in worker_services(compose).items():
        assert svc["build"].get("dockerfile", "Dockerfile") == DOCKERFILE.name, name
        assert (ROOT / svc["build"].get("context", ".")).resolve() == ROOT, name
        assert "entrypoint" not in svc, f"{name} overrides the image's entrypoint"


def test_dockerfile_runs_as_non_root_on_a_supported_python() -> None:
    from packaging.specifiers import SpecifierSet

    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    base = [args for keyword, args in instructions if keyword == "FROM"][-1]
    image, _, tag = base.split()[0].partition(":")
    assert image == "python" and tag.endswith("-slim"), base
    requires = tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"]
    assert tag.removesuffix("-slim") in SpecifierSet(requires), (tag, requires)

    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "pip install" in runs
    assert "[torch]" not in runs and "torch" not in runs.split()


def test_dockerignore_lets_every_package_into_the_build() -> None:
    # The .dockerignore is an allow-list: a new top-level package missing from it would
    # build an image that fails on import.
    lines = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    packages = [
        path.name
        for path in ROOT.iterdir()
        if (path / "__init__.py").is_file() and any(fnmatch.fnmatch(path.name, p) for p in patterns)
    ]
    assert packages
    missing = [p for p in packages if f"!{p}/" not in lines and f"!{p}" not in lines]
    assert missing == []
    assert "!pyproject.toml" in lines


# --- (d) Kafka and Redis --------------------------------------------------------------


def test_kafka_is_single_node_kraft_that_the_workers_reach(compose: dict[str, Any]) -> None:
    assert kafka_problems(compose) == []


def _mutate(doc: dict[str, Any], service: str, key: str, value: str) -> dict[str, Any]:
    broken = copy.deepcopy(doc)
    env = broken["services"][service]["environment"]
    broken["services"][service]["environment"] = {**env, key: value}
    return broken


@pytest.mark.parametrize(
    ("service", "key", "value", "expected"),
    [
        ("kafka", "KAFKA_PROCESS_ROLES", "broker", "not broker and controller"),
        ("kafka", "KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true", "auto-creation"),
        ("kafka", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "3", "single node needs 1"),
        ("processor", "STEPSTREAM_KAFKA_BOOTSTRAP", "kafka:9093", "does not advertise"),
        ("sink", "STEPSTREAM_KAFKA_BOOTSTRAP", "localhost:9094", "not a name of the kafka"),
        ("sink", "STEPSTREAM_KAFKA_SECURITY_PROTOCOL", "SSL", "speaks SSL"),
    ],
)
def test_kafka_check_catches_a_broken_setup(
    compose: dict[str, Any], service: str, key: str, value: str, expected: str
) -> None:
    problems = kafka_problems(_mutate(compose, service, key, value))
    assert any(expected in p for p in problems), problems


def test_kafka_external_listener_is_published_for_the_host(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    advertised = parse_listeners(service_env(kafka)["KAFKA_ADVERTISED_LISTENERS"])
    published = {int(str(p).split(":")[-1].split("/")[0]) for p in kafka.get("ports", [])}
    for name, (host, port) in advertised.items():
        if host in ("localhost", "127.0.0.1"):
            assert port in published, f"{name} is advertised to the host but not published"


def test_redis_url_names_the_redis_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in worker_services(compose).items():
        url = urlparse(stepstream_env(svc)["STEPSTREAM_REDIS_URL"])
        assert url.scheme == "redis", name
        assert url.hostname in service_host_names("redis", services["redis"]), name
        assert (url.port or 6379) == 6379, name
        assert str(services["redis"]["image"]).startswith(("redis:", "valkey/valkey:")), name


def test_workers_wait_for_healthy_kafka_and_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in worker_services(compose).items():
        depends = svc.get("depends_on")
        assert isinstance(depends, dict), f"{name} needs depends_on with conditions"
        for dependency in ("kafka", "redis"):
            assert depends[dependency]["condition"] == "service_healthy", (name, dependency)
            assert services[dependency]["healthcheck"]["test"], dependency
        assert svc.get("restart") in ("always", "unless-stopped", "on-failure"), name

    kafka_check = services["kafka"]["healthcheck"]["test"]
    assert any("kafka-broker-api-versions.sh" in part for part in kafka_check)
    bound = {
        port
        for _, port in parse_listeners(service_env(services["kafka"])["KAFKA_LISTENERS"]).values()
    }
    probe = kafka_check[kafka_check.index("--bootstrap-server") + 1]
    assert int(probe.rpartition(":")[2]) in bound
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
