"""Settings shared by every stage, read from ``STEPSTREAM_*`` environment variables.

The same names are used for keyword arguments, CLI flags (``--kafka-bootstrap``) and docs.
Reading settings is the only thing importing stepstream does with the environment.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from stepstream import vocabulary
from stepstream.errors import ConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "STEPSTREAM_"

#: ``STEPSTREAM_*`` variables that something other than Settings reads: the run id of the
#: SDK's identity, the scripts' virtualenv and torch index, the browser tests' screenshots.
OTHER_VARIABLES = frozenset(
    {"STEPSTREAM_RUN", "STEPSTREAM_VENV", "STEPSTREAM_TORCH_PIP_ARGS", "STEPSTREAM_SCREENSHOT_DIR"}
)

#: Settings whose values never appear in an error message (credentials, tokens, URLs
#: that may hold a password, webhook headers).
SECRET_SETTINGS = frozenset({"kafka_sasl_password", "ui_token", "redis_url", "webhooks"})

#: Publisher compression codecs (kafka-python's ``compression_type``; none: uncompressed).
Compression = Literal["lz4", "gzip", "snappy", "zstd", "none"]


def default_state_dir() -> Path:
    """Where the embedded stack keeps its state file and logs unless told otherwise."""
    return Path.home() / ".stepstream"


ALL_SEVERITIES: tuple[Literal["info", "warning", "critical"], ...] = ("info", "warning", "critical")


class WebhookTarget(BaseModel):
    """Where alert transitions are POSTed, and how hard to try."""

    url: str
    format: Literal["json", "slack"] = "json"
    severities: list[Literal["info", "warning", "critical"]] = Field(
        default_factory=lambda: list(ALL_SEVERITIES)
    )
    timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(6, ge=1)
    backoff_s: float = Field(0.5, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)


class Settings(BaseSettings):
    """Every tunable of stepstream. Environment variables are ``STEPSTREAM_<NAME>``."""

    # A keyword no field owns is a mistake (a typo would silently keep the default);
    # environment variables no field owns are only warned about (see unknown_variables).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: str | None = Field(None, description="SASL password.")
    kafka_ssl_cafile: str | None = Field(
        None, description="CA bundle (PEM) that signed the brokers' certificates."
    )
    kafka_ssl_certfile: str | None = Field(
        None, description="Client certificate (PEM) for brokers that require one (mTLS)."
    )
    kafka_ssl_keyfile: str | None = Field(None, description="Key (PEM) of the client certificate.")
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that a broker's certificate names the host connected to."
    )
    replication_factor: int = Field(
        1, ge=1, description="Replicas of every topic stepstream creates (3 in production)."
    )
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="min.insync.replicas of every topic created (2 in production); "
        "unset: the broker default.",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL: redis://[user:password@]host:port/db, or rediss:// for TLS "
        "with ssl_ca_certs, ssl_certfile, ssl_keyfile as query parameters.",
    )
    topic_prefix: str = Field("stepstream", description="Prefix of every topic and consumer group.")
    key_prefix: str = Field("stepstream", description="Prefix of every Redis key.")
    partitions: int = Field(4, ge=1, description="Partition count of every stepstream topic.")
    session_timeout_s: float = Field(
        6.0, gt=0, description="Consumer-group session timeout; joins take about half of it."
    )
    window_steps: list[int] = Field(
        default_factory=lambda: [50], description="Step-window sizes (last N steps)."
    )
    window_seconds: list[float] = Field(
        default_factory=lambda: [10.0, 60.0],
        description="Time-window sizes in seconds of event time.",
    )
    retention_s: int = Field(7 * 86400, gt=0, description="TTL of every per-run Redis key.")
    state_dir: Path = Field(default_factory=default_state_dir)
    flush_interval_s: float = Field(
        1.0,
        gt=0,
        description="Longest a record waits in the SDK before it is sent: one Kafka message "
        "per rank per interval. Urgent records (a non-finite value, an exception, a crash or "
        "closing heartbeat) go within 0.2 s.",
    )
    queue_size: int = Field(100_000, ge=1, description="Bound of the in-process record queue.")
    sink_batch: int = Field(500, ge=1, description="Most messages the sink writes per flush.")
    sink_linger_s: float = Field(0.05, ge=0, description="Longest a sink waits to fill a batch.")
    broker_bin: str | None = Field(None, description="tansu binary for the local stack.")
    redis_server_bin: str | None = Field(
        None, description="valkey-server or redis-server binary for the local stack."
    )
    # alerting
    webhooks: list[WebhookTarget] = Field(
        default_factory=list,
        description='Alert webhooks as JSON: [{"url": "...", "format": "slack"}].',
    )
    alert_group_wait_s: float = Field(
        0.1, ge=0, description="A run's first webhook notification waits this long for company."
    )
    alert_group_interval_s: float = Field(
        0.5, ge=0, description="Later notifications of one run are sent at most this often."
    )
    rules_file: Path | None = Field(None, description="YAML file of user alert rules.")
    resolve_timeout_s: float = Field(
        300.0, gt=0, description="A detector alert with no new evidence this long resolves."
    )
    failover_reassert_s: float = Field(
        10.0,
        gt=0,
        description="A firing alert a worker takes over with a run (a worker died, joined or "
        "restarted) resolves unless its detector re-asserts it this long after the run's "
        "next input; detectors slow to relearn keep it for the resolve timeout.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "warning", description="Worker log level."
    )
    # sinks and query
    redis_cluster: bool = Field(
        False, description="Talk to STEPSTREAM_REDIS_URL as a Redis Cluster (RedisCluster)."
    )
    series_max_points: int = Field(
        10_000, ge=1, description="Newest raw points kept per series by step, every one."
    )
    series_decimate_every: int = Field(
        10, ge=1, description="Older points: one in this many steps is kept for plotting."
    )
    series_coarse_max_points: int = Field(
        10_000, ge=1, description="Decimated points kept per series."
    )
    series_time_horizon_s: float = Field(
        86_400.0, gt=0, description="Series by time keep this much event time per series."
    )
    series_time_max_points: int = Field(
        10_000, ge=1, description="Most points kept per series by time."
    )
    ui_token: str | None = Field(
        None,
        description="Token of the dashboard and HTTP API: required to serve on a "
        "non-loopback address, and for write actions (silences) from the dashboard.",
    )
    metrics_max_series: int = Field(
        10_000, ge=1, description="Cap on rolling-stat series /metrics exports (per scrape)."
    )
    # producer SDK
    spool_dir: Path | None = Field(
        None, description="Where publishers spool undelivered batches; default <state_dir>/spool."
    )
    spool_max_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Spool bound per rank; drops oldest beyond it."
    )
    spool_segment_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Spool segment size; whole segments are replayed."
    )
    node: str | None = Field(
        None,
        description="Node (host) name every rank of this process reports; unset: "
        "SLURMD_NODENAME, else the host name. Ranks of one node are judged together "
        "(node_lost).",
    )
    heartbeat_interval_s: float = Field(
        1.0, gt=0, description="Heartbeat period of every rank; silent 2.5 periods = a dead rank."
    )
    system_interval_s: float = Field(
        1.0, ge=0, description="System metrics sampling period; 0 turns the sampler off."
    )
    shutdown_timeout_s: float = Field(
        5.0, ge=0, description="Longest a close, exit or SIGTERM waits to flush."
    )
    capture_logs: bool = Field(True, description="Ship WARNING+ log records and uncaught errors.")
    capture_stacks: bool = Field(
        True,
        description="When the training thread stays in one phase past 10x its step time "
        "(and 2 s), send its Python stack once (sys._current_frames, no OS signal).",
    )
    handle_sigterm: bool = Field(True, description="Flush on SIGTERM (main thread only).")
    kafka_compression: Compression = Field(
        "lz4",
        description="Publisher compression: lz4 (cheap), gzip (level 9: costly), snappy or "
        "zstd (need python-snappy or zstandard installed), none.",
    )
    kafka_linger_ms: int = Field(20, ge=0, description="Publisher linger before a send.")
    kafka_delivery_timeout_s: float = Field(
        10.0, gt=0, description="A batch not acknowledged by then goes to the spool."
    )
    # processors
    processor_batch: int = Field(
        1000, ge=1, description="Most messages a processor stage (1 or 2) takes as one batch."
    )
    processor_linger_s: float = Field(
        0.1, ge=0, description="Longest a processor stage (1 or 2) waits to fill a batch."
    )
    window_stats_interval_s: float = Field(
        2.0,
        ge=0,
        description="Window stats of a series are recomputed at most this often (latest "
        "values and alerts are not held). Recomputing a rank's windows at every message was "
        "most of a worker's CPU: 2 s cut it by 40 % at a rank's once-a-second flush.",
    )
    window_stats_budget_per_s: float = Field(
        20_000.0,
        ge=0,
        description="Series whose window stats a worker recomputes per second, at most: "
        "above window_stats_budget_per_s x window_stats_interval_s series held, the interval "
        "stretches to series / budget (stats get older; the worker keeps up). About a "
        "quarter of a core at the 11 us a series' three windows cost; 0 turns it off.",
    )
    state_idle_s: float = Field(
        6 * 3600.0,
        ge=60,
        description="Processors forget a rank (windows, detector state) and a run (cross-rank "
        "state) not heard from for this long; one that comes back starts cold. Bounds the "
        "processors' memory by the runs active within it.",
    )
    max_records_per_batch: int = Field(
        20_000, ge=1, description="A telemetry message with more records is dead-lettered."
    )
    max_future_s: float = Field(
        3600.0, gt=0, description="Records this far ahead of the processor clock are dead-lettered."
    )
    max_past_s: float = Field(
        7 * 86400.0,
        gt=0,
        description="Records older than this (processor clock) are dead-lettered.",
    )
    max_message_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Telemetry messages larger than this are dead-lettered unread; the SDK "
        "and the processor's forward to the validated topic stay below it.",
    )
    max_metrics_per_run: int = Field(
        5000, ge=1, description="Distinct metric names per run; more are dead-lettered."
    )
    max_seq_jump: int = Field(
        10_000_000,
        ge=1,
        description="How far past a publisher's last seq a batch may start; a larger jump is a "
        "forged or corrupt seq: dead-lettered (seq_jump) with one alert per run.",
    )
    crossrank_metrics: list[str] = Field(
        default_factory=lambda: [s.name for s in vocabulary.CROSSRANK_DEFAULT],
        description="Metrics stage 1 forwards per step for cross-rank analysis (vocabulary "
        "names; aliases such as data_time are accepted).",
    )
    hung_after_s: float = Field(
        120.0,
        gt=0,
        description="Cap of the hang rule: no step for 20x the run's median step time "
        "(floor 5 s; 30 s in eval/checkpoint), at most this long, is a hang.",
    )
    incident_hold_s: float = Field(
        5.0,
        ge=0,
        description="A detector incident whose series all cleared resolves after this many "
        "seconds without a new flag (one page for a flapping fault).",
    )
    detector_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Per-detector parameter overrides, e.g. {"spike": {"z": 8}}.',
    )

    serving_label_horizon_s: float = Field(
        14 * 86400.0,
        gt=0,
        description="How long a served prediction waits for its outcome; an outcome after "
        "it is counted late, not joined.",
    )
    serving_window_s: float = Field(
        60.0, gt=0, description="Length of a serving window (drift, quality, performance)."
    )
    serving_top_k: int = Field(
        20,
        ge=1,
        description="Segments kept per model, and categories kept per categorical feature; "
        "the rest are counted under __other__.",
    )
    serving_min_count: int = Field(
        100, ge=1, description="Fewest predictions (or labels) a window needs to be judged."
    )
    serving_reference_size: int = Field(
        10_000,
        ge=100,
        description="Values per feature kept as the reference sample (given, or the first "
        "window of traffic when none is given).",
    )
    serving_drift_windows: int = Field(
        2,
        ge=1,
        description="Consecutive windows over the calibrated threshold before a drift or "
        "performance alert fires.",
    )
    serving_quality_max_rate: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Share of a window's values of a feature that may be missing, mistyped, "
        "out of the reference range or unseen before a data_quality alert fires.",
    )

    def __init__(self, **values: Any) -> None:
        """Settings from `values`, then ``STEPSTREAM_*`` variables, then defaults.

        Raises ConfigError, in one line, naming each setting that is unknown (with the
        closest valid name) or invalid (with what it accepts); warns once about
        ``STEPSTREAM_*`` variables that no setting owns.
        """
        try:
            super().__init__(**values)
        except (ValidationError, SettingsError) as exc:
            # The pydantic traceback adds nothing to the message: suppress the chain.
            raise settings_error(exc) from None
        _warn_unknown_variables(os.environ)

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied and validated as the constructor validates them
        (ConfigError on an unknown name or a bad value); the environment is not re-read."""
        if not changes:
            return self
        checked = type(self)(**{**self.model_dump(), **changes})
        return self.model_copy(update={name: getattr(checked, name) for name in changes})

    @field_validator("window_steps")
    @classmethod
    def _positive_steps(cls, sizes: list[int]) -> list[int]:
        if not sizes or any(s < 1 for s in sizes):
            raise ValueError("window_steps needs one or more sizes >= 1, e.g. [50, 200]")
        return sorted(set(sizes))

    @field_validator("window_seconds")
    @classmethod
    def _positive_seconds(cls, sizes: list[float]) -> list[float]:
        if any(s <= 0 for s in sizes):
            raise ValueError("window_seconds sizes must be > 0, e.g. [10, 60]")
        return sorted(set(sizes))

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> Settings:
        if self.min_insync_replicas is not None and (
            self.min_insync_replicas > self.replication_factor
        ):
            raise ValueError(
                f"min_insync_replicas={self.min_insync_replicas} exceeds replication_factor="
                f"{self.replication_factor}: no write could ever succeed"
            )
        return self

    def resolved_spool_dir(self) -> Path:
        """The spool root: `spool_dir` when set, else ``<state_dir>/spool``."""
        return self.spool_dir if self.spool_dir is not None else self.state_dir / "spool"

    def kafka_client_config(self) -> dict[str, Any]:
        """Security keyword arguments of kafka-python clients (see stepstream.kafka_security)."""
        from stepstream.kafka_security import kafka_python_security

        return kafka_python_security(self)


def closest_setting(name: str) -> str | None:
    """The setting whose name is closest to `name` (a typo's likely intent), if any is
    close enough to suggest."""
    found = difflib.get_close_matches(name.lower(), list(Settings.model_fields), n=1, cutoff=0.6)
    return found[0] if found else None


def _shown(name: str, value: Any) -> str:
    if name in SECRET_SETTINGS:
        return ""
    text = repr(value)
    return f"={text if len(text) <= 60 else text[:57] + '...'}"


def settings_error(exc: ValidationError | SettingsError) -> ConfigError:
    """A ConfigError of one line for an invalid Settings construction: each bad setting
    with its environment variable and what it accepts, each unknown one with the closest
    valid name."""
    if isinstance(exc, SettingsError):
        # pydantic-settings could not parse a variable: a list or mapping is JSON there.
        found = re.search(r'field "(\w+)"', str(exc))
        variable = f"{ENV_PREFIX}{found.group(1).upper()}" if found else f"a {ENV_PREFIX}* variable"
        return ConfigError(
            f"{variable} is not valid JSON: write lists and mappings as JSON, "
            'e.g. STEPSTREAM_WINDOW_STEPS="[50, 200]"'
        )
    problems: list[str] = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        message = str(err["msg"]).removeprefix("Value error, ")
        if not loc:  # a check across several settings
            problems.append(message)
            continue
        name = loc[0]
        if err["type"] == "extra_forbidden":
            near = closest_setting(name)
            hint = f"did you mean {near}?" if near else "see the settings in the README"
            problems.append(f"unknown setting {name!r}: {hint}")
            continue
        where = ".".join(loc)
        problems.append(
            f"setting {where}{_shown(name, err.get('input'))} "
            f"({ENV_PREFIX}{name.upper()}): {message}"
        )
    return ConfigError("; ".join(problems))


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``STEPSTREAM_*`` names in `environ` that no setting (and nothing else) reads,
    sorted; case-insensitive as Settings reads them."""
    fields = Settings.model_fields
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and name[len(ENV_PREFIX) :].lower() not in fields
        and name.upper() not in OTHER_VARIABLES
    )


_warned: set[str] = set()


def _warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """One warning listing the unknown ``STEPSTREAM_*`` variables not warned about yet in
    this process (settings are built per command and per init: warn once)."""
    fresh = [name for name in unknown_variables(environ) if name not in _warned]
    if not fresh:
        return
    _warned.update(fresh)
    log.warning(
        "ignoring environment variables that no setting owns: %s",
        ", ".join(_with_suggestion(name) for name in fresh),
    )


def _with_suggestion(variable: str) -> str:
    near = closest_setting(variable[len(ENV_PREFIX) :])
    return f"{variable} (did you mean {ENV_PREFIX}{near.upper()}?)" if near else variable
