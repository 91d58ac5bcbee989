"""Configuration mistakes fail at start, in one line that says what to do: through the
SDK's `producers.init(...)` and the CLI, `stepstream worker` included (issue 24).

The worker tests point Kafka at a closed port: a mistake must stop the worker before it
needs a broker, so none of them connects anywhere.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import producers
from processors.alerting.agent import RuleFile
from processors.detectors import DETECTOR_PARAMS
from processors.run_stage import RunStage
from processors.series_stage import SeriesStage
from stepstream import settings as settings_module
from stepstream.errors import ConfigError
from stepstream.settings import Settings
from stepstream.stack import free_port, load_settings

ROOT = Path(__file__).resolve().parents[2]

GOOD_RULES = "rules:\n  - name: nan\n    detector: nonfinite\n    severity: critical\n"
BROKEN_RULES = "rules:\n  - name: loss-high\n    condition: mean(loss, 50 steps) >> 4\n"


# --- the SDK ---------------------------------------------------------------------------


def test_a_misspelt_setting_names_the_closest_valid_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'kafka_bootsrap': did you mean "):
        producers.init("r", rank=0, world=1, state_dir=tmp_path, kafka_bootsrap="h:9092")
    # Overrides on top of given settings are checked the same way.
    given = Settings(state_dir=tmp_path)
    with pytest.raises(ConfigError, match="did you mean kafka_bootstrap"):
        producers.init("r", rank=0, world=1, settings=given, kafka_bootsrap="h:9092")


def test_a_bad_setting_value_names_the_setting_and_what_it_accepts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        producers.init("r", rank=0, world=1, state_dir=tmp_path, kafka_compression="brotli")
    message = str(caught.value)
    assert "kafka_compression='brotli' (STEPSTREAM_KAFKA_COMPRESSION)" in message
    assert "'lz4'" in message and "'none'" in message
    assert "\n" not in message and "pydantic" not in message
    # The chain is cut: a user sees this error, not pydantic's traceback beneath it.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_codec_kafka_python_cannot_load_fails_at_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka-python checks its codec only after connecting, on the publisher's thread,
    where a refusal used to spool every batch for ever."""
    from kafka import codec

    monkeypatch.setattr(codec, "has_zstd", lambda: False)
    with pytest.raises(ConfigError, match="kafka_compression=zstd needs zstandard: pip install"):
        producers.init("r", rank=0, world=1, state_dir=tmp_path, kafka_compression="zstd")


def test_tls_files_that_do_not_load_fail_at_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STEPSTREAM_KAFKA_SSL_CAFILE"):
        producers.init(
            "r",
            rank=0,
            world=1,
            state_dir=tmp_path,
            kafka_security_protocol="SSL",
            kafka_ssl_cafile=str(tmp_path / "missing-ca.pem"),
        )


def test_environment_settings_still_apply_and_unknown_variables_are_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(settings_module, "_warned", set())
    monkeypatch.setenv("STEPSTREAM_PARTITIONS", "7")
    monkeypatch.setenv("STEPSTREAM_KAFKA_BOOTSRAP", "h:9092")
    monkeypatch.setenv("STEPSTREAM_NO_SUCH_THING", "1")
    monkeypatch.setenv("STEPSTREAM_RUN", "read-by-the-sdk-identity")
    with caplog.at_level(logging.WARNING, logger="stepstream.settings"):
        settings = load_settings(state_dir=tmp_path)  # what init() and every command use
        load_settings(state_dir=tmp_path)
    assert settings.partitions == 7
    warnings = [r.getMessage() for r in caplog.records if r.name == "stepstream.settings"]
    assert warnings == [
        "ignoring environment variables that no setting owns: STEPSTREAM_KAFKA_BOOTSRAP "
        "(did you mean STEPSTREAM_KAFKA_BOOTSTRAP?), STEPSTREAM_NO_SUCH_THING"
    ]
    monkeypatch.setenv("STEPSTREAM_PARTITIONS", "four")
    with pytest.raises(ConfigError, match="STEPSTREAM_PARTITIONS"):
        load_settings(state_dir=tmp_path)


# --- worker start and the CLI ----------------------------------------------------------


def cli(*args: str, state_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process, with only the given STEPSTREAM_* variables and
    Kafka at a port nothing listens on."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STEPSTREAM_")} | {
        "STEPSTREAM_STATE_DIR": str(state_dir),
        "STEPSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "stepstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=environ,
        cwd=state_dir,
        check=False,
    )


def config_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a configuration failure (exit 1)."""
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def test_a_broken_rules_file_stops_the_worker_with_file_line_and_reason(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(BROKEN_RULES)
    done = cli("worker", "processor", state_dir=tmp_path, STEPSTREAM_RULES_FILE=str(rules))
    line = config_line(done)
    assert f"{rules}:3: condition:" in line  # the file, the line, the field
    assert "stepstream rules check" in line


def test_a_missing_rules_file_stops_the_worker(tmp_path: Path) -> None:
    rules = tmp_path / "nowhere.yaml"
    done = cli("worker", "processor", state_dir=tmp_path, STEPSTREAM_RULES_FILE=str(rules))
    assert f"cannot read rule file {rules}" in config_line(done)


@pytest.mark.parametrize(
    ("params", "needles"),
    [
        ('{"spikee": {"z": 8}}', ["no detector 'spikee' (did you mean spike?)", "straggler"]),
        ('{"spike": {"zz": 8}}', ["spike has no parameter 'zz' (did you mean z?)", "metrics"]),
    ],
)
def test_unknown_detector_names_and_parameters_stop_the_worker(
    tmp_path: Path, params: str, needles: list[str]
) -> None:
    done = cli("worker", "processor", state_dir=tmp_path, STEPSTREAM_DETECTOR_PARAMS=params)
    line = config_line(done)
    assert "STEPSTREAM_DETECTOR_PARAMS" in line
    for needle in needles:
        assert needle in line


def test_an_invalid_setting_is_one_line_from_every_command(tmp_path: Path) -> None:
    for args in (("worker", "sink"), ("query",)):
        done = cli(*args, state_dir=tmp_path, STEPSTREAM_PARTITIONS="0")
        line = config_line(done)
        assert "setting partitions='0' (STEPSTREAM_PARTITIONS): " in line, args
        assert "greater than or equal to 1" in line


# --- the pieces behind them ------------------------------------------------------------


def test_a_rule_file_reload_keeps_the_last_good_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD_RULES)
    rule_file = RuleFile(path)
    assert [r.name for r in rule_file.load()] == ["nan"]
    assert rule_file.changed() is None  # read at start: nothing new
    path.write_text(BROKEN_RULES)
    os.utime(path, (1, 1))  # a new modification time even on a coarse clock
    assert rule_file.changed() is None  # broken: logged, the engine keeps "nan"
    path.write_text(GOOD_RULES.replace("nan", "nan2"))
    assert [r.name for r in rule_file.changed() or []] == ["nan2"]


class AskedFor(dict[str, Any]):
    """An empty mapping of detector parameters that records the names looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def __bool__(self) -> bool:  # the stages replace an empty (falsy) mapping with {}
        return True

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def test_the_checked_detector_names_are_the_ones_the_stages_read() -> None:
    series, run = AskedFor(), AskedFor()
    SeriesStage([50], [10.0], detector_params=series)
    RunStage(detector_params=run)
    assert series.asked | run.asked == set(DETECTOR_PARAMS)
