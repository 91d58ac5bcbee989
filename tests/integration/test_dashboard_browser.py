"""The dashboard in a real browser (Debian's chromium, driven headless by Playwright):
runs page, run page with one line per rank, a NaN alert appearing live on the chart while
the job runs, silencing it from the page, a rule's pending alert shown as pending and then
firing, escaping of hostile names, and no request to any host but the server. One stack
(with one user rule), one server and one browser for the module.

A failing test saves a screenshot under its tmp dir (the path is printed). With
STEPSTREAM_SCREENSHOT_DIR set (docs/img for the README's pictures), full-page screenshots
of the run page at 1400x900 and 390x844 and of a comparison are saved there; nothing is
written into the repository otherwise.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import producers
from processors.alerting.silence_store import SilenceStore
from query.reader import MetricsReader
from stepstream.settings import Settings
from stepstream.stack import free_port, running_stack, settings_env, stop_children

from .conftest import wait_for

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
]
ROOT = Path(__file__).resolve().parents[2]
NAN_STEP = 60
STEPS = 200
STEP_S = 0.1


#: A rule with `for:` for the pending-alert test; no other test's loss comes near 100.
PENDING_RULE = "loss-stuck-high"
PENDING_FOR_S = 6
RULES = f"""\
rules:
  - name: {PENDING_RULE}
    condition: last(loss, 50 steps) > 100
    for: {PENDING_FOR_S}s
    severity: critical
"""


@pytest.fixture(scope="module")
def live_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The conftest's stack for the module, with the user rule of RULES."""
    rules = tmp_path_factory.mktemp("rules") / "rules.yaml"
    rules.write_text(RULES)
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("stack"),
        topic_prefix=f"t{uuid.uuid4().hex[:8]}",
        rules_file=rules,
    )
    with running_stack(settings) as client_settings:
        yield client_settings


@dataclass
class Server:
    """A running dashboard server."""

    base: str
    token: str
    host: str


def _playwright() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (.ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright missing: pip install -e '.[dev]' (.ci/run does)")
    return sync_playwright


@pytest.fixture(scope="module")
def server(live_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`stepstream serve` on a free loopback port, started as a user would: no token is
    configured, so it makes one and prints the dashboard URL with it."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, **settings_env(live_settings), "PYTHONPATH": str(ROOT)}
    env.pop("STEPSTREAM_UI_TOKEN", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepstream.cli", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = wait_for(lambda: _printed_url(log, proc), timeout=30, every=0.1)
        parsed = urllib.parse.urlsplit(url)
        token = urllib.parse.parse_qs(parsed.query)["token"][0]
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(base + "/ui/api/hub"), timeout=30, every=0.1)
        yield Server(base, token, f"127.0.0.1:{port}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise AssertionError("stepstream serve did not stop on Ctrl-C") from None


def _printed_url(log: Path, proc: subprocess.Popen[bytes]) -> str | None:
    if proc.poll() is not None:
        raise AssertionError(f"stepstream serve exited: {log.read_text()}")
    match = re.search(r"dashboard: (http://\S+\?token=\S+)", log.read_text())
    return match.group(1) if match else None


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).json().get("live") is True
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium for the module."""
    sync_playwright = _playwright()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(
    browser: Any, server: Server, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Any]:
    """A fresh page that may reach only the server: every other request is aborted and
    recorded, and must not have been attempted. Saves a screenshot when the test fails."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    outside: list[str] = []
    dialogs: list[str] = []
    console_errors: list[str] = []

    def route(r: Any) -> None:
        url = r.request.url
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme in ("data", "blob") or parsed.netloc == server.host:
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    pg.route("**/*", route)
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    pg.outside = outside
    pg.dialogs = dialogs
    pg.set_default_timeout(20_000)
    try:
        yield pg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            shot = tmp_path / "failure.png"
            pg.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot of the failed page: {shot}\nconsole errors: {console_errors}")
        context.close()
    assert outside == [], f"the page tried to reach other hosts: {outside}"
    assert dialogs == [], f"a dialog opened (script injection?): {dialogs}"


def _job(settings: Settings, run: str, rank: int, world: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.integration.dashboard_job",
        "--run",
        run,
        "--rank",
        str(rank),
        "--world",
        str(world),
        *args,
    ]


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}


def _spawn_job(settings: Settings, run: str) -> list[subprocess.Popen[bytes]]:
    """Two ranks through the SDK, a NaN loss on rank 1 at NAN_STEP (STEP_S apart)."""
    args = ["--steps", str(STEPS), "--nan-step", str(NAN_STEP), "--sleep", str(STEP_S)]
    return [
        subprocess.Popen(
            _job(settings, run, rank, 2, *args),
            env=_env(settings),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        for rank in range(2)
    ]


def test_live_run_lines_alert_and_silence(
    page: Any, server: Server, live_settings: Settings, reader: MetricsReader, run_id: str
) -> None:
    procs = _spawn_job(live_settings, run_id)
    try:
        # The run exists once its first points reached Redis; the NaN is NAN_STEP steps
        # (>= 6 s) later, so the page below is open before it.
        wait_for(lambda: any(r.run == run_id for r in reader.runs()), timeout=60)
        steps = [r.step or 0 for r in reader.ranks(run_id)]
        assert max(steps, default=0) < NAN_STEP - 20, f"job already at step {steps}"

        page.goto(f"{server.base}/?token={server.token}")
        row = page.locator(f'tr[data-run="{run_id}"]')
        row.wait_for()
        assert row.get_attribute("data-state") in ("live", "starting")
        row.locator("a.run-link").click()
        page.wait_for_url(f"**/run/{run_id}")
        page.wait_for_selector("body[data-loaded='1']")

        loss = page.locator('.chart-card[data-metric="loss"] .chart')
        page.wait_for_function(
            "() => document.querySelector('.chart-card[data-metric=\"loss\"] .chart')"
            "?.dataset.lines === '2'"
        )
        assert procs[0].poll() is None and procs[1].poll() is None, "job ended too early"

        # The NaN alert arrives by push while the job still runs: marker and list entry.
        marker = loss.locator('.alert-marker[data-rule="nonfinite"]')
        marker.wait_for(timeout=60_000)
        item = page.locator('.alert-item[data-rule="nonfinite"]').first
        item.wait_for()
        seen_running = [p.poll() is None for p in procs]
        assert any(seen_running), "the alert showed only after the job ended"
        assert int(float(marker.get_attribute("data-x") or "-1")) == NAN_STEP
        # The NaN point itself is drawn as a marker, not dropped.
        loss.locator(".nonfinite-marker", has_text="NaN").first.wait_for()

        # The open alert's rank stands out in the legend (until it is silenced).
        loss_card = page.locator('.chart-card[data-metric="loss"]')
        if item.get_attribute("data-state") == "firing":
            loss_card.locator('.legend-item.alerted[data-rank="1"]').wait_for()

        # Silence it from the page; the store (what the alerting stage reads) has it.
        item.locator(".silence-btn").click()
        page.locator('.alert-item[data-rule="nonfinite"][data-state="silenced"]').first.wait_for()
        store = SilenceStore(reader.client, reader.keys)
        silences = [s for s in store.list() if s.matchers.get("run") == run_id]
        assert [s.matchers for s in silences] == [{"run": run_id, "rule": "nonfinite", "rank": "1"}]
        # ... and expire it again from the list.
        page.locator(f'li[data-silence="{silences[0].id}"] .expire-btn').click()
        wait_for(lambda: not [s for s in store.list() if s.matchers.get("run") == run_id])

        # CSV of what the loss chart shows: both ranks, the NaN kept.
        with page.expect_download() as dl:
            page.locator('.chart-card[data-metric="loss"] button.csv').click()
        text = Path(dl.value.path()).read_text()
        lines = text.splitlines()
        assert lines[0] == "rank,step,value,smoothed"
        assert {ln.split(",")[0] for ln in lines[1:]} == {"0", "1"}
        assert any(ln.startswith(f"1,{NAN_STEP},NaN") for ln in lines)
    finally:
        stop_children(procs)


def test_hostile_names_render_as_text(
    page: Any, server: Server, live_settings: Settings, reader: MetricsReader
) -> None:
    # As hostile as validation lets through the SDK: dots, dashes, '@' and ':' ...
    run = "0.-_..-_--.x"
    metric = "_@:/..-x"
    subprocess.run(
        _job(live_settings, run, 0, 1, "--metric", metric),
        env=_env(live_settings),
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    wait_for(lambda: (0, metric) in reader.series_names(run), timeout=60)
    # ... and what the server could never store, injected into its answers: markup in a
    # metric name and an alert summary must show as text and run nothing.
    script = "<script>alert(1)</script>"
    img = '<img src=x onerror="alert(2)">'

    def overview(route: Any) -> None:
        doc = route.fetch().json()
        doc["metrics"].append({"name": script, "ranks": [0]})
        route.fulfill(json=doc)

    def alerts(route: Any) -> None:
        doc = route.fetch().json()
        doc["incidents"] = [
            {
                "fingerprint": "f",
                "rule": img,
                "severity": "critical",
                "state": "firing",
                "run": run,
                "rank": 0,
                "metric": script,
                "fired_step": 2,
                "fired_t": time.time(),
                "t": time.time(),
                "summary": img,
                "evidence": {img: 1.0},
                "silenced": False,
            }
        ]
        route.fulfill(json=doc)

    enc = urllib.parse.quote(run, safe="")
    page.route(f"**/ui/api/runs/{enc}/overview", overview)
    page.route(f"**/ui/api/runs/{enc}/alerts", alerts)
    page.goto(f"{server.base}/")
    page.locator(f'tr[data-run="{run}"] a.run-link', has_text=run).click()
    page.wait_for_selector("body[data-loaded='1']")
    assert page.locator("#run-id").text_content() == run
    assert page.get_by_text(script, exact=True).first.is_visible()
    page.locator(".alert-summary", has_text=img).wait_for()
    page.locator(f'.chart-card[data-metric="{metric}"] .chart[data-lines="1"]').wait_for()
    assert page.locator("script:not([src])").count() == 0
    assert page.locator("img").count() == 0


def test_write_actions_need_the_token(server: Server, run_id: str) -> None:
    body = {"matchers": {"run": run_id, "rule": "spike"}, "duration_s": 60}
    with httpx.Client(base_url=server.base, timeout=10) as client:
        assert client.post("/ui/api/silences", json=body).status_code == 403
        bad = {"X-Stepstream-Token": server.token + "x"}
        assert client.post("/ui/api/silences", json=body, headers=bad).status_code == 403
        ok = client.post(
            "/ui/api/silences", json=body, headers={"X-Stepstream-Token": server.token}
        )
        assert ok.status_code == 200, ok.text
        sid = ok.json()["id"]
        assert client.post(f"/ui/api/silences/{sid}/expire").status_code == 403
        done = client.post(
            f"/ui/api/silences/{sid}/expire", headers={"X-Stepstream-Token": server.token}
        )
        assert done.status_code == 200
        page = client.get("/")
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert json.loads(client.get("/ui/api/hub").text)["live"] is True


def _shot(page: Any, name: str) -> None:
    """A full-page screenshot into STEPSTREAM_SCREENSHOT_DIR (docs/img/ for the README),
    only when that variable asks: tests write nothing into the repository otherwise."""
    target = os.environ.get("STEPSTREAM_SCREENSHOT_DIR")
    if not target:
        return
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(300)  # the last fetched charts drawn
    page.screenshot(path=str(out / name), full_page=True)


def _run_job(settings: Settings, run: str, world: int, *args: str) -> None:
    _run_job_ranks(settings, run, world, list(range(world)), *args)


def _run_job_ranks(settings: Settings, run: str, world: int, ranks: list[int], *args: str) -> None:
    """Run `ranks` of a `world`-rank job to completion."""
    procs = [
        subprocess.Popen(
            _job(settings, run, rank, world, *args),
            env=_env(settings),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        for rank in ranks
    ]
    try:
        for p in procs:
            assert p.wait(60) == 0
    finally:
        stop_children(procs)


@pytest.fixture(scope="module")
def finished_runs(server: Server, live_settings: Settings) -> list[str]:
    """Two finished runs through the SDK: 3 ranks and 2 ranks, 40 steps of loss, accuracy,
    a step time, the global and a per-layer gradient norm, with the SDK's own heartbeats
    and counters stored beside them."""
    runs = [f"pg-{uuid.uuid4().hex[:8]}", f"pg-{uuid.uuid4().hex[:8]}"]
    metrics = ("perf/step_time_s", "grad/global_norm", "grad/norm/fc.weight")
    args = ["--steps", "40", "--sleep", "0.01"] + [a for m in metrics for a in ("--metric", m)]
    for run, world, offset in zip(runs, (3, 2), ("0", "0.3"), strict=True):
        _run_job(live_settings, run, world, *args, "--offset", offset)
    with MetricsReader.from_url(live_settings.redis_url, live_settings.key_prefix) as r:
        for run, world in zip(runs, (3, 2), strict=True):
            wanted = {(rank, m) for rank in range(world) for m in ("loss", *metrics)}
            wait_for(lambda: wanted <= set(r.series_names(run)), timeout=60)  # noqa: B023
            wait_for(
                lambda: all(len(r.series(run, "loss", k).points) == 40 for k in range(world))  # noqa: B023
            )
    return runs


@pytest.fixture(scope="module")
def finished_run(finished_runs: list[str]) -> str:
    """The 3-rank finished run."""
    return finished_runs[0]


def _charted(page: Any) -> list[str]:
    return page.eval_on_selector_all(".chart-card", "els => els.map(e => e.dataset.metric)")


def test_sections_in_order_no_internal_series_legend_and_hover(
    page: Any, server: Server, reader: MetricsReader, finished_run: str
) -> None:
    run = finished_run
    page.set_viewport_size({"width": 1400, "height": 900})
    # An open alert naming rank 2, as the server would list it: its rank is highlighted.
    firing = {
        "fingerprint": "fp-test",
        "rule": "straggler",
        "severity": "warning",
        "state": "firing",
        "run": run,
        "rank": 2,
        "metric": "perf/step_time_s",
        "fired_step": 30,
        "fired_t": time.time(),
        "t": time.time(),
        "summary": "rank 2 is slow",
        "evidence": {},
        "silenced": False,
    }

    def alerts(route: Any) -> None:
        doc = route.fetch().json()
        doc["incidents"] = [firing]
        route.fulfill(json=doc)

    page.route(f"**/ui/api/runs/{run}/alerts", alerts)
    page.goto(f"{server.base}/run/{run}")
    page.wait_for_selector("body[data-loaded='1']")
    stored = {m for _, m in reader.series_names(run)}
    internal = {m for m in stored if m.startswith(("heartbeat/", "stepstream/"))}
    assert internal, f"the SDK stored no internal series to hide: {sorted(stored)}"

    # Sections in the order people look; the first one's charts are the user's metrics.
    order = page.eval_on_selector_all(
        ".metric-section:not([hidden])", "els => els.map(e => e.dataset.section)"
    )
    assert order[:3] == ["user", "performance", "gradients"], order
    first = page.eval_on_selector_all(
        ".metric-section[data-section='user'] .chart-card", "els => els.map(e => e.dataset.metric)"
    )
    assert first == ["loss", "accuracy"]
    charted = _charted(page)
    assert not [m for m in charted if m in internal], charted
    grads = page.eval_on_selector_all(
        ".metric-section[data-section='gradients'] .chart-card",
        "els => els.map(e => e.dataset.metric)",
    )
    assert grads[:1] == ["grad/global_norm"], grads
    # Per-layer norms: small multiples, collapsed until opened.
    assert "grad/norm/fc.weight" not in charted
    page.locator(".metric-section[data-section='layers'] button.fold").click()
    page.locator('.chart-card.multiple[data-metric="grad/norm/fc.weight"]').wait_for()
    assert "open=layers" in page.url
    # The diagnostics panel shows the internal series once opened; the URL keeps it.
    page.locator(".metric-section[data-section='internal'] button.fold").click()
    page.locator('.chart-card[data-metric="heartbeat/step"]').wait_for()
    page.goto(page.url)
    page.wait_for_selector("body[data-loaded='1']")
    page.locator('.chart-card[data-metric="heartbeat/step"]').wait_for()
    page.locator(".metric-section[data-section='internal'] button.fold").click()
    page.locator(".metric-section[data-section='user'] button.fold").click()
    assert "closed=user" in page.url and "open=layers" in page.url
    assert "loss" not in _charted(page)
    page.locator(".metric-section[data-section='user'] button.fold").click()

    # Legend: one entry per rank, the alert's rank highlighted.
    card = page.locator('.chart-card[data-metric="loss"]')
    chart = card.locator(".chart")
    page.wait_for_function(
        "() => document.querySelector('.chart-card[data-metric=\"loss\"] .chart')"
        "?.dataset.lines === '3'"
    )
    assert card.locator(".legend-item").count() == 3
    assert card.locator(".legend-item.alerted").all_text_contents() == ["r2"]
    _shot(page, "dashboard-run.png")

    # Hover: every rank's value at the cursor's step, sorted high to low, as stored.
    box = chart.locator("canvas").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 56 + (box["width"] - 68) * 0.5, box["y"] + 100)
    tip = chart.locator(".chart-tip")
    tip.wait_for()
    step = int(float(tip.get_attribute("data-x") or "nan"))
    rows = tip.locator(".tip-row")
    ranks = [int(r.get_attribute("data-rank") or -1) for r in rows.all()]
    values = [float(r.get_attribute("data-value") or "nan") for r in rows.all()]
    truth = {
        k: next(p.value for p in reader.series(run, "loss", k).points if p.step == step)
        for k in range(3)
    }
    assert sorted(ranks) == [0, 1, 2]
    assert values == [truth[k] for k in ranks]
    assert values == sorted(values, reverse=True)

    # Click hides a rank; shift-click shows one alone; again shows all.
    card.locator('.legend-item[data-rank="0"]').click()
    assert chart.get_attribute("data-shown") == "2"
    card.locator('.legend-item[data-rank="1"]').click(modifiers=["Shift"])
    assert chart.get_attribute("data-shown") == "1"
    page.mouse.move(box["x"] + 56 + (box["width"] - 68) * 0.5, box["y"] + 100)
    assert [r.get_attribute("data-rank") for r in tip.locator(".tip-row").all()] == ["1"]
    card.locator('.legend-item[data-rank="1"]').click(modifiers=["Shift"])
    assert chart.get_attribute("data-shown") == "3"


def test_compare_two_runs_draws_a_line_per_run(
    page: Any,
    server: Server,
    live_settings: Settings,
    reader: MetricsReader,
    finished_runs: list[str],
) -> None:
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(f"{server.base}/")
    page.wait_for_selector("body[data-loaded='1']")
    for run in finished_runs:
        page.locator(f'tr[data-run="{run}"] input.pick').check()
    page.locator("#compare").click()
    page.wait_for_url("**/compare?runs=*")
    page.wait_for_selector("body[data-loaded='1']")
    first = page.locator(".metric-section").first
    assert first.get_attribute("data-section") == "user"
    chart = page.locator('.chart-card[data-metric="loss"] .chart')
    page.wait_for_function(
        "() => document.querySelector('.chart-card[data-metric=\"loss\"] .chart')"
        "?.dataset.lines === '2'"
    )
    legend = page.locator('.chart-card[data-metric="loss"] .legend-item').all_text_contents()
    assert legend == finished_runs
    assert not [m for m in _charted(page) if m.startswith(("heartbeat/", "stepstream/"))]
    _shot(page, "dashboard-compare.png")
    # Hover: each run's rank mean at the cursor's step, as the reader computes it.
    box = chart.locator("canvas").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 56 + (box["width"] - 68) * 0.25, box["y"] + 100)
    tip = chart.locator(".chart-tip")
    tip.wait_for()
    step = int(float(tip.get_attribute("data-x") or "nan"))
    shown = {
        finished_runs[int(r.get_attribute("data-rank") or -1)]: float(
            r.get_attribute("data-value") or "nan"
        )
        for r in tip.locator(".tip-row").all()
    }
    truth = {}
    for run in finished_runs:
        steps, means = reader.run_line(run, "loss")
        truth[run] = means[steps.tolist().index(step)]
    assert shown == pytest.approx(truth)
    # Live: more steps of one run reach the open comparison.
    _run_job_ranks(live_settings, finished_runs[1], 2, [0], "--steps", "46", "--offset", "0.3")
    page.wait_for_function(
        "() => document.querySelector('.chart-card[data-metric=\"loss\"] .chart')"
        "?.dataset.lastX === '45'",
        timeout=30_000,
    )
    # The URL is the comparison: one rank instead of the mean, kept on reload.
    page.locator("#rank-mode").select_option("rank")
    page.locator("#rank").fill("1")
    page.locator("#rank").dispatch_event("change")
    assert "rank=1" in page.url
    page.goto(page.url)
    page.wait_for_selector("body[data-loaded='1']")
    assert page.locator("#rank").input_value() == "1"
    page.wait_for_function(
        "() => document.querySelector('.chart-card[data-metric=\"loss\"] .chart')"
        "?.dataset.lines === '2'"
    )


def test_phone_width_does_not_overflow(page: Any, server: Server, finished_runs: list[str]) -> None:
    finished_run = finished_runs[0]
    page.set_viewport_size({"width": 390, "height": 844})
    compare = "/compare?runs=" + ",".join(finished_runs)
    for path in (f"/run/{finished_run}", "/", compare):
        page.goto(server.base + path)
        page.wait_for_selector("body[data-loaded='1']")
        page.wait_for_timeout(300)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide in a 390 px viewport"
    page.goto(f"{server.base}/run/{finished_run}")
    page.wait_for_selector("body[data-loaded='1']")
    _shot(page, "dashboard-run-phone.png")


def test_a_pending_alert_shows_as_pending_then_firing(
    page: Any, server: Server, live_settings: Settings, reader: MetricsReader, run_id: str
) -> None:
    stop = threading.Event()
    monitor = producers.init(run_id, rank=0, world=1, settings=live_settings)

    def train() -> None:  # a loss stuck above the rule's threshold, 10 steps a second
        step = 0
        while not stop.is_set():
            monitor.log(step, loss=500.0)
            step += 1
            time.sleep(0.1)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    try:
        wait_for(lambda: any(r.run == run_id for r in reader.runs()), timeout=30, every=0.1)
        # The runs page lists it among the run's open alerts as pending, apart from firing.
        page.goto(f"{server.base}/?token={server.token}")
        badge = page.locator(f'tr[data-run="{run_id}"] .badge.state-pending')
        badge.wait_for()
        assert badge.inner_text() == f"pending {PENDING_RULE} r0"

        page.goto(f"{server.base}/run/{run_id}?token={server.token}")
        item = page.locator(f'.alert-item[data-rule="{PENDING_RULE}"]')
        pending = item.and_(page.locator('[data-state="pending"]'))
        pending.wait_for()
        assert pending.locator(".badge.state-pending").inner_text() == "pending"
        since = pending.locator(".pending-for").inner_text()
        assert re.fullmatch(r" ?pending for (<1|\d+)s", since), since  # fmtAge
        style = pending.evaluate("e => getComputedStyle(e).borderLeftStyle")
        assert style == "dashed"  # drawn apart from a firing alert's solid bar
        (stored,) = [a for a in reader.active_alerts(run_id) if a.rule == PENDING_RULE]
        assert stored.status == "pending"

        # `for` elapses while the page stays open: the same entry turns firing by push.
        firing = item.and_(page.locator('[data-state="firing"]'))
        firing.wait_for(timeout=(PENDING_FOR_S + 8) * 1000)
        assert item.count() == 1 and firing.locator(".pending-for").count() == 0
        assert firing.locator(".badge.state-firing").inner_text() == "firing"
        (stored,) = [a for a in reader.active_alerts(run_id) if a.rule == PENDING_RULE]
        assert stored.status == "firing" and stored.t - (stored.active_since or 0) >= PENDING_FOR_S
    finally:
        stop.set()
        thread.join(5)
        monitor.close()
