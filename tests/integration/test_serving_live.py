"""Served-model monitoring end to end, through the public SDK (`producers.serving`) and
the public reader only: tansu, Valkey, a processor and a sink worker.

A drifted feature is named and alerted on, the stable ones stay quiet; labels that come
later give metrics equal to an offline computation on the same data; a processor worker
killed -9 between predictions and outcomes (and again mid-outcomes) loses no joined
label and counts none twice.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from producers import serving
from query.reader import MetricsReader
from stepstream.settings import Settings
from stepstream.stack import LocalStack, settings_env, worker_command
from stepstream.streaming import ready_file
from stepstream.topics import Topics

from .conftest import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WINDOW_S = 2.0


class Workers:
    """The processor and sink workers of the test, started and killed by pid."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def marker(self, stage: str) -> Path:
        return ready_file(self.settings, Topics(self.settings.topic_prefix).group(stage))

    def start(self, *stages: str) -> None:
        for stage in stages:
            self.marker(stage).unlink(missing_ok=True)
            with (self.logs / f"{stage}.log").open("ab") as out:
                self.procs[stage] = subprocess.Popen(
                    worker_command(stage),
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        wait_for(lambda: all(self.marker(s).exists() for s in stages), timeout=40, every=0.1)

    def kill(self, stage: str) -> None:
        proc = self.procs.pop(stage)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Workers]]:
    state_dir: Path = tmp_path_factory.mktemp("serving")
    settings = Settings(
        state_dir=state_dir,
        topic_prefix=f"s{uuid.uuid4().hex[:8]}",
        session_timeout_s=3.0,
        serving_window_s=WINDOW_S,
        serving_min_count=100,
        serving_drift_windows=2,
        spool_dir=state_dir / "spool",
        capture_logs=False,
    )
    local = LocalStack(settings, workers=False)
    state = local.start()
    live = settings.model_copy(
        update={"kafka_bootstrap": state.kafka_bootstrap, "redis_url": state.redis_url}
    )
    workers = Workers(live, state_dir)
    try:
        workers.start("processor", "sink")
        yield live, workers
    finally:
        workers.stop()
        local.stop()


@pytest.fixture
def reader(stack: tuple[Settings, Workers]) -> Iterator[MetricsReader]:
    r = MetricsReader.from_url(stack[0].redis_url, stack[0].key_prefix)
    yield r
    r.close()


def test_a_drifted_feature_is_named_and_the_stable_ones_stay_quiet(
    stack: tuple[Settings, Workers], reader: MetricsReader
) -> None:
    settings, _ = stack
    rng = np.random.default_rng(5)
    pm = serving.init("drift-model", version="v1", settings=settings)
    try:
        pm.reference(
            features={
                "age": rng.normal(40, 10, 4000),
                "income": rng.normal(50, 5, 4000),
                "country": rng.choice(["DE", "FR", "US"], 4000).tolist(),
            },
            scores=rng.random(4000),
        )
        pm.flush(10)
        deadline = time.monotonic() + 4 * WINDOW_S
        i = 0
        while time.monotonic() < deadline:
            for _ in range(100):
                pm.log_prediction(
                    f"d{i}",
                    features={
                        "age": float(rng.normal(60, 10)),  # shifted by two sigma
                        # A fifth missing: a data-quality problem, not drift.
                        "income": float(rng.normal(50, 5)) if i % 5 else None,
                        "country": str(rng.choice(["DE", "FR", "US"])),
                    },
                    score=float(rng.random()),
                )
                i += 1
            time.sleep(0.25)
        pm.flush(10)
    finally:
        pm.close()

    def fired() -> Any:
        alerts = reader.active_alerts("drift-model")
        return [a for a in alerts if a.rule == "feature_drift"] or None

    alerts = wait_for(fired, timeout=15)
    assert {a.metric for a in alerts} == {"feature:age"}
    quality = [a for a in reader.active_alerts("drift-model") if a.rule == "data_quality"]
    # income's missing values; age may be out of its reference range too (it shifted).
    assert "feature:income" in {a.metric for a in quality}
    assert "feature:country" not in {a.metric for a in quality}
    assert not [a for a in reader.active_alerts("drift-model") if a.rule == "prediction_drift"]
    assert all(a.labels.get("model") == "drift-model" for a in alerts)
    drift = reader.drift("drift-model")
    assert drift.version == "v1" and drift.latest is not None
    judged = [h for h in drift.history if h["predictions"] >= 100]
    assert len(judged) >= 2
    # Every judged window names age. A stable feature may cross its 3-sigma threshold in
    # a single window by chance (about 1 in 100): quiet means no alert, which takes
    # `serving_drift_windows` (2) windows in a row.
    assert all("age" in h["drifted"] for h in judged), [h["drifted"] for h in judged]
    assert drift.firing == ["feature:age"]
    age = drift.latest["features"]["age"]
    assert age["drift"] and age["js"] > age["threshold"]
    assert 0 < age["ks"]["error_bound"] < 0.05 and age["ks"]["value"] > 0.3
    for stable in ("income", "country"):
        assert (
            drift.latest["features"][stable]["js"]
            < 2 * drift.latest["features"][stable]["threshold"]
        )
    income = drift.latest["features"]["income"]["quality"]
    assert income["missing"] == pytest.approx(drift.latest["predictions"] / 5, abs=2)
    assert drift.latest["score"]["js"] < 2 * drift.latest["score"]["threshold"]
    assert [m.model for m in reader.models()] == ["drift-model"] or "drift-model" in [
        m.model for m in reader.models()
    ]


def _offline(scores: list[float], labels: list[int], n_preds: int) -> dict[str, float]:
    pred = [1 if s >= 0.5 else 0 for s in scores]
    tp = sum(p and y for p, y in zip(pred, labels, strict=True))
    tn = sum(not p and not y for p, y in zip(pred, labels, strict=True))
    fp = sum(p and not y for p, y in zip(pred, labels, strict=True))
    fn = sum(not p and y for p, y in zip(pred, labels, strict=True))
    err = np.asarray(scores) - np.asarray(labels)
    bins = [min(99, int(s * 100)) for s in scores]
    pos = [b for b, y in zip(bins, labels, strict=True) if y]
    neg = [b for b, y in zip(bins, labels, strict=True) if not y]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {
        "accuracy": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
        "auc": wins / (len(pos) * len(neg)),
        "mse": float(np.mean(err**2)),
        "mae": float(np.mean(np.abs(err))),
        "label_coverage": len(labels) / n_preds,
    }


@pytest.mark.allow_leaks
def test_delayed_labels_give_exact_metrics_across_a_worker_restart(
    stack: tuple[Settings, Workers], reader: MetricsReader
) -> None:
    settings, workers = stack
    rng = np.random.default_rng(9)
    n = 400
    scores = rng.random(n).tolist()
    labels = [int(rng.random() < s) for s in scores]
    countries = ["DE" if i % 3 else "FR" for i in range(n)]
    pm = serving.init("perf-model", version="v2", settings=settings)
    try:
        for i in range(n):
            pm.log_prediction(
                f"r{i}",
                features={"x": float(i)},
                score=scores[i],
                segment={"country": countries[i]},
            )
        pm.flush(10)

        def predictions() -> Any:
            total = reader.performance("perf-model").total
            return total if total and total["predictions"] == n else None

        wait_for(predictions, timeout=15)
        labelled = list(range(0, n, 4)) + list(range(1, n, 4)) + list(range(2, n, 4))
        third = len(labelled) // 3
        for i in labelled[:third]:
            pm.log_outcome(f"r{i}", label=labels[i])
        pm.flush(10)

        def joined(count: int) -> Any:
            total = reader.performance("perf-model").total
            return total if total and total["labeled"] == count else None

        wait_for(lambda: joined(third), timeout=15)
        # Killed -9 with labels joined and more on their way: the joined ones stay, the
        # new worker joins the rest to what the old one stored, none counts twice (its
        # uncommitted input is read again).
        workers.kill("processor")
        for i in labelled[third : 2 * third]:
            pm.log_outcome(f"r{i}", label=labels[i])
        pm.flush(10)
        workers.start("processor")
        for i in labelled[2 * third :]:
            pm.log_outcome(f"r{i}", label=labels[i])
        for i in range(0, n, 10):
            pm.log_outcome(f"r{i}", clicked=i % 20 == 0)
        pm.log_outcome("never-predicted", label=1)
        # Hostile input: dead-lettered with its reason, the worker goes on, nothing counted.
        pm.log_prediction("bad id!", features={"x": 1.0}, score=0.5)
        pm.log_prediction("nan-score", features={"x": 1.0}, score=math.nan)
        pm.log_prediction("huge", features={f"f{i}": 1.0 for i in range(1000)}, score=0.5)
        pm.log_outcome("r0", label=labels[0])  # a repeated outcome counts once
        pm.flush(10)
    finally:
        pm.close()

    def all_joined() -> Any:
        total = reader.performance("perf-model").total
        return (
            total
            if total and total["labeled"] == len(labelled) and total["feedback"] == 40
            else None
        )

    total = wait_for(all_joined, timeout=20)
    expected = _offline([scores[i] for i in labelled], [labels[i] for i in labelled], n)
    for name, value in expected.items():
        assert total[name] == pytest.approx(value, abs=1e-9), name
    assert total["clicks"] == 20 and total["ctr"] == 20 / n
    report = reader.performance("perf-model", segment="country=FR")
    fr = [i for i in labelled if countries[i] == "FR"]
    fr_expected = _offline([scores[i] for i in fr], [labels[i] for i in fr], countries.count("FR"))
    assert report.total is not None
    assert report.total["accuracy"] == pytest.approx(fr_expected["accuracy"], abs=1e-12)
    assert set(report.segments) == {"country=DE", "country=FR"}
    outcomes = report.outcomes
    assert outcomes["orphan"] == 1 and outcomes["duplicate"] >= 1
    assert report.total["label_delay"]["count"] == len(fr)
    assert reader.performance("perf-model").total["predictions"] == n  # type: ignore[index]
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    producer.send(Topics(settings.topic_prefix).serving, key=b"x", value=b"\xff not json")
    producer.flush(10)
    producer.close(5)
    reasons = _serving_dead_letters(
        settings, {"bad_id", "non_finite_score", "too_many_features", "undecodable"}
    )
    assert reasons >= {"bad_id", "non_finite_score", "too_many_features", "undecodable"}, reasons


def _serving_dead_letters(settings: Settings, wanted: set[str], timeout: float = 15) -> set[str]:
    """Reasons of the serving stage's dead letters, read until `wanted` are all seen."""
    topic = Topics(settings.topic_prefix).deadletter
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(settings.partitions)])
        consumer.seek_to_beginning()
        reasons: set[str] = set()
        deadline = time.monotonic() + timeout
        while not wanted <= reasons and time.monotonic() < deadline:
            for messages in consumer.poll(200, max_records=1000).values():
                for m in messages:
                    letter = json.loads(m.value)
                    if letter.get("stage") == "processor/serving-stage":
                        reasons.add(letter["reason"])
        return reasons
    finally:
        consumer.close()


def test_cli_and_http_show_the_models_drift_and_performance(
    stack: tuple[Settings, Workers], reader: MetricsReader
) -> None:
    """The same reads through `stepstream models` / `stepstream query --model` and HTTP
    (the two tests above stored the models)."""
    import json

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from query.http_api import create_api
    from stepstream.cli import app as cli

    settings, _ = stack
    url = settings.redis_url
    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "--json", "--redis-url", url])
    assert listed.exit_code == 0, listed.output
    assert {m["model"] for m in json.loads(listed.output)} >= {"drift-model", "perf-model"}
    drift = runner.invoke(
        cli, ["query", "--model", "drift-model", "--drift", "--json", "--redis-url", url]
    )
    assert drift.exit_code == 0, drift.output
    assert json.loads(drift.output)["latest"]["features"]["age"]["drift"] is True
    table = runner.invoke(
        cli, ["query", "--model", "perf-model", "--performance", "--redis-url", url]
    )
    assert table.exit_code == 0 and "accuracy" in table.output, table.output
    api = create_api(lambda: MetricsReader.from_url(url, settings.key_prefix))
    with TestClient(api) as http:
        assert {m["model"] for m in http.get("/models").json()} >= {"drift-model", "perf-model"}
        body = http.get("/models/perf-model/performance", params={"segment": "country=DE"}).json()
        assert body["segment"] == "country=DE" and body["total"]["labeled"] > 0
        assert http.get("/models/drift-model/drift").json()["latest"]["drifted"] == ["age"]
        assert http.get("/models/nope/drift").status_code == 404
        metrics = http.get("/metrics").text
        assert 'stepstream_model_metric{metric="accuracy",model="perf-model"' in metrics


def test_the_dashboard_has_a_page_per_model(stack: tuple[Settings, Workers]) -> None:
    """The page and the reads it makes (the browser test suite drives pages in Chromium)."""
    from fastapi.testclient import TestClient

    from query.dashboard.app import DashboardOptions
    from query.dashboard.auth import Access
    from query.http_api import create_api

    settings, _ = stack
    api = create_api(
        lambda: MetricsReader.from_url(settings.redis_url, settings.key_prefix),
        dashboard=DashboardOptions(Access("t", reads_need_token=False)),
    )
    with TestClient(api) as http:
        page = http.get("/model/perf-model")
        assert page.status_code == 200 and "/ui/static/model.js" in page.text
        assert "/models/${name}/performance" in http.get("/ui/static/model.js").text
        assert http.get("/model/bad{name}").status_code == 400


def test_the_model_page_in_a_browser(stack: tuple[Settings, Workers]) -> None:
    """The model page as a user sees it: Debian's chromium, headless, through Playwright
    (skipped where either is missing, like the dashboard's browser tests)."""
    import threading

    import uvicorn

    from query.dashboard.app import DashboardOptions
    from query.dashboard.auth import Access
    from query.http_api import create_api
    from stepstream.stack import free_port

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip(f"{chromium} missing: apt-get install chromium (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    settings, _ = stack
    api = create_api(
        lambda: MetricsReader.from_url(settings.redis_url, settings.key_prefix),
        dashboard=DashboardOptions(Access("t", reads_need_token=False)),
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-model-page", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=15, every=0.05)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(chromium),
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-gpu",
                ],
            )
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(f"http://127.0.0.1:{port}/model/perf-model")
                page.wait_for_function(
                    "document.querySelector('#performance').innerText.includes('all windows')",
                    timeout=10_000,
                )
                table = page.inner_text("#performance")
                assert "accuracy" in table and "auc" in table
                assert "country=DE" in page.inner_text("#outcomes")
                page.goto(f"http://127.0.0.1:{port}/model/drift-model")
                page.wait_for_function(
                    "document.querySelector('#drift').innerText.includes('DRIFT')", timeout=10_000
                )
                rows = page.inner_text("#drift")
                assert "age" in rows and "income" in rows and "±" in rows
                assert "feature:age" in page.inner_text("#drift-title")
                assert errors == []
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
