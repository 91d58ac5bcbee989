"""Integration fixtures: a real embedded stack (tansu, Valkey, faust workers) per module."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from query.reader import MetricsReader
from stepstream.settings import Settings
from stepstream.stack import running_stack

T = TypeVar("T")


@pytest.fixture(scope="module")
def live_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a freshly started stack, stopped after the module."""
    state_dir: Path = tmp_path_factory.mktemp("stack")
    settings = Settings(state_dir=state_dir, topic_prefix=f"t{uuid.uuid4().hex[:8]}")
    with running_stack(settings) as client_settings:
        yield client_settings


@pytest.fixture
def reader(live_settings: Settings) -> Iterator[MetricsReader]:
    """A query-API reader on the live stack's Redis."""
    r = MetricsReader.from_url(live_settings.redis_url, live_settings.key_prefix)
    yield r
    r.close()


@pytest.fixture
def run_id() -> str:
    """A run id unique to the test."""
    return f"it-{uuid.uuid4().hex[:10]}"


def wait_for(probe: Callable[[], T | None], timeout: float = 60.0, every: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; fail with the time waited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item (``rep_call``): fixtures that save evidence on
    failure (browser screenshots) read it at teardown."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
