"""Alerting logic: lifecycle, durations, conditions, rule files, silences, inhibition,
templates."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from processors.alerting.conditions import AcrossRanks, parse_condition
from processors.alerting.durations import Span, parse_span
from processors.alerting.inhibition import inhibited_by
from processors.alerting.lifecycle import AlertState, Notice, Phase, Timing
from processors.alerting.rules import parse_rules
from processors.alerting.silences import Silence, silenced_by
from processors.alerting.templates import render
from stepstream.cli import app
from stepstream.errors import ConfigError

S = Span  # brevity in tables


@pytest.mark.parametrize(
    ("timing", "observations", "expected"),
    [
        # for=0: fires on the first true, resolves on the first false
        (Timing(), [(True, 0, 0), (False, 1, 1)], [Notice.FIRING, Notice.RESOLVED]),
        # for=3 steps: pending (once, as it starts) until 3 steps have passed
        (
            Timing(for_=S(3, "steps")),
            [(True, 0, 10), (True, 1, 11), (True, 2, 12), (True, 3, 13)],
            [Notice.PENDING, None, None, Notice.FIRING],
        ),
        # pending that clears is withdrawn (never fired), and a new episode pends again
        (
            Timing(for_=S(3, "steps")),
            [(True, 0, 0), (False, 1, 1), (False, 2, 2), (True, 3, 3)],
            [Notice.PENDING, Notice.WITHDRAWN, None, Notice.PENDING],
        ),
        # for in seconds uses event time
        (
            Timing(for_=S(5, "seconds")),
            [(True, 100, None), (True, 104.9, None), (True, 105, None)],
            [Notice.PENDING, None, Notice.FIRING],
        ),
        # keep_firing_for holds through a short clear
        (
            Timing(keep_firing_for=S(10, "seconds")),
            [
                (True, 0, None),
                (False, 1, None),
                (True, 2, None),
                (False, 3, None),
                (False, 13, None),
            ],
            [Notice.FIRING, None, None, None, Notice.RESOLVED],
        ),
        # repeat interval re-notifies while firing
        (
            Timing(repeat_interval_s=60),
            [(True, 0, None), (True, 59, None), (True, 60, None)],
            [Notice.FIRING, None, Notice.REPEAT],
        ),
    ],
)
def test_lifecycle_table(timing: Timing, observations: list, expected: list) -> None:
    state = AlertState()
    got = [state.evaluate(active, t, step, timing) for active, t, step in observations]
    assert got == expected


def test_flapping_series_gives_one_firing_and_one_resolved() -> None:
    state = AlertState()
    timing = Timing(for_=S(2, "steps"), keep_firing_for=S(20, "steps"))
    notices = [state.evaluate(step % 5 != 0, float(step), step, timing) for step in range(1, 100)]
    notices += [state.evaluate(False, float(step), step, timing) for step in range(100, 130)]
    assert [n for n in notices if n] == [Notice.PENDING, Notice.FIRING, Notice.RESOLVED]
    assert state.phase is Phase.INACTIVE


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("30s", S(30, "seconds")),
        ("5m", S(300, "seconds")),
        ("1h", S(3600, "seconds")),
        ("50 steps", S(50, "steps")),
        ("1step", S(1, "steps")),
        (12, S(12, "seconds")),
    ],
)
def test_parse_span(text: str | int, span: Span) -> None:
    assert parse_span(text) == span


def test_condition_with_number() -> None:
    cond = parse_condition("mean(loss, 50 steps) > 4")
    assert (cond.stat, cond.metric, cond.window, cond.op, cond.threshold) == (
        "mean",
        "loss",
        "50steps",
        ">",
        4.0,
    )
    assert cond.evaluate(4.5) == (True, 4.0)
    assert cond.evaluate(4.0) == (False, 4.0)
    assert cond.evaluate(None) == (False, None)


def test_condition_across_ranks() -> None:
    cond = parse_condition("p95(step_time, 60s) > 1.5 * median_across_ranks(step_time)")
    assert cond.threshold == AcrossRanks(1.5, "median", "step_time", "60s")
    peers = {0: 1.0, 1: 1.2, 2: 3.0}
    assert cond.evaluate(3.0, peers) == (True, 1.5 * 1.2)
    assert cond.evaluate(1.2, peers)[0] is False
    assert cond.evaluate(3.0, {})[0] is False


@pytest.mark.parametrize(
    "bad",
    [
        "loss > 4",
        "avg(loss, 10s) > 1",
        "mean(loss, 10 parsecs) > 1",
        "mean(loss, 10s) > lots",
        "mean(loss, 10s) > 2 * mode_across_ranks(x)",
    ],
)
def test_bad_conditions_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_condition(bad)


RULES = """\
rules:
  - name: loss-high
    condition: mean(loss, 50 steps) > 4
    for: 20 steps
    keep_firing_for: 30s
    severity: warning
    selector: {run: "prod-*"}
    labels: {team: research}
    summary: "mean loss {{ value }} on rank {{ rank }}"
    action: scale_lr:0.5
  - name: nan
    detector: nonfinite
    severity: critical
"""


def test_valid_rule_file() -> None:
    loss, nan = parse_rules(RULES)
    assert (loss.name, loss.line, loss.severity, loss.action) == (
        "loss-high",
        2,
        "warning",
        "scale_lr:0.5",
    )
    assert loss.timing.for_ == S(20, "steps") and loss.timing.keep_firing_for == S(30, "seconds")
    assert loss.condition is not None and loss.condition.window == "50steps"
    assert (nan.detector, nan.line, nan.condition) == ("nonfinite", 11, None)


def test_rule_file_errors_name_their_lines() -> None:
    text = (
        RULES.replace("for: 20 steps", "for: 20 parsecs").replace(
            "severity: critical", "severity: fatal"
        )
        + "  - name: x\n    detector: a\n    condition: mean(a, 1s) > 1\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_rules(text, "r.yaml")
    lines = str(err.value).splitlines()
    assert lines[0].startswith("r.yaml:4: for: duration '20 parsecs'")
    assert lines[1].startswith("r.yaml:13: severity:")
    assert lines[2].startswith("r.yaml:14:") and "exactly one of" in lines[2]


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError, match=r"r.yaml:4: not valid YAML.*at line 3"):
        parse_rules("rules:\n  - name: a\n    detector: [x\n", "r.yaml")


def test_duplicate_and_unknown_fields() -> None:
    text = "rules:\n  - name: a\n    detector: x\n  - name: a\n    detector: y\n    colour: red\n"
    with pytest.raises(ConfigError) as err:
        parse_rules(text, "f")
    assert "f:6: colour: Extra inputs are not permitted" in str(err.value)


def test_rules_check_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(RULES)
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES.replace("severity: critical", "severity: loud"))
    runner = CliRunner()
    ok = runner.invoke(app, ["rules", "check", str(good)])
    assert ok.exit_code == 0 and "2 rules" in ok.output
    failed = runner.invoke(app, ["rules", "check", str(bad)])
    assert failed.exit_code == 1
    assert f"{bad}:13: severity" in failed.output.replace("\n", "")


def test_silence_matches_until_expiry() -> None:
    silence = Silence(
        id="s1", matchers={"run": "exp-*", "rule": "spike|plateau"}, starts_at=100, ends_at=200
    )
    labels = {"run": "exp-3", "rule": "spike", "rank": "1"}
    assert silenced_by([silence], labels, 150) is silence
    assert silenced_by([silence], labels, 200) is None
    assert silenced_by([silence], {**labels, "rule": "nonfinite"}, 150) is None


def test_dead_rank_inhibits_its_own_straggler_alert_only() -> None:
    dead = {"rule": "dead_rank", "run": "r", "rank": "2"}
    assert inhibited_by({"rule": "straggler", "run": "r", "rank": "2"}, [dead]) is dead
    assert inhibited_by({"rule": "straggler", "run": "r", "rank": "1"}, [dead]) is None
    assert inhibited_by({"rule": "nonfinite", "run": "r", "rank": "2"}, [dead]) is None


def test_nan_inhibits_spikes_of_the_run() -> None:
    nan = {"rule": "nonfinite", "run": "r", "rank": "0"}
    assert inhibited_by({"rule": "spike", "run": "r", "rank": "3"}, [nan]) is nan
    assert inhibited_by({"rule": "spike", "run": "other", "rank": "3"}, [nan]) is None


def test_templates() -> None:
    values = {"value": 4.56789, "rank": 3, "labels": {"team": "ml"}, "bad": math.nan}
    assert render("v={{ value }} r={{rank}} t={{ labels.team }}", values) == "v=4.568 r=3 t=ml"
    assert render("{{ bad }} {{ missing }}", values) == "NaN <missing?>"


def test_cli_alert_line_names_pending_and_withdrawn() -> None:
    from stepstream.cli.alerts import _alert_line
    from stepstream.contract import Alert

    base = Alert(fingerprint="f", rule="loss-high", run="r", rank=0, t=1.0, raised_at=1.0)
    lines = {
        status: _alert_line(base.model_copy(update={"status": status}))
        for status in ("pending", "firing", "resolved", "withdrawn")
    }
    assert "PENDING" in lines["pending"] and "CRITICAL" not in lines["pending"]
    assert "CRITICAL" in lines["firing"]
    assert "RESOLVED" in lines["resolved"] and "WITHDRAWN" in lines["withdrawn"]


def test_alerting_forgets_the_runs_the_stages_forgot(tmp_path: Path) -> None:
    # The soak (bench/soak.py): the set of runs taken over grew with every run a worker
    # ever saw. A run the stages forgot (idle) is taken over afresh if it comes back.
    import asyncio

    from processors.alerting.agent import Alerting
    from stepstream.faust_seam import make_app
    from stepstream.settings import Settings
    from stepstream.stack import free_port

    # Nothing listens there: the restore is skipped (Redis away), the run still taken.
    settings = Settings(state_dir=tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    alerting = Alerting(make_app(settings, "forget-test"), settings)
    for run in ("a", "b"):
        asyncio.run(alerting.take_over(run, detectors=True))
    assert alerting.taken_over("a") and alerting.taken_over("b")
    alerting.forget_runs(["a"])
    assert not alerting.taken_over("a") and alerting.taken_over("b")
