"""Integration fixtures: a real embedded stack (tansu, Valkey, faust workers) per module."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from aiokafka.partitioner import murmur2

from query.reader import MetricsReader
from stepstream.contract import run_key
from stepstream.settings import Settings
from stepstream.stack import running_stack

T = TypeVar("T")


def fresh_stack(tmp_path_factory: pytest.TempPathFactory, **overrides: Any) -> Iterator[Settings]:
    """Start an embedded stack with these settings (its own state directory and topic
    prefix), yield the settings clients use, and stop it: a module fixture yields from it."""
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("stack"),
        topic_prefix=f"t{uuid.uuid4().hex[:8]}",
        **overrides,
    )
    with running_stack(settings) as client_settings:
        yield client_settings


@pytest.fixture(scope="module")
def live_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a freshly started stack, stopped after the module."""
    yield from fresh_stack(tmp_path_factory)


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


def partition_of(run: str, partitions: int) -> int:
    """The partition of `run`'s run-keyed topics (summaries, alerts): the murmur2 default
    partitioner that faust's aiokafka producer applies to the run key."""
    return (murmur2(run_key(run)) & 0x7FFFFFFF) % partitions


def same_partition_run(run: str, partitions: int) -> str:
    """A new run id whose run-keyed messages share `run`'s partitions, so the workers
    handle it after what `run` sent before it: a later event of the same stream."""
    wanted = partition_of(run, partitions)
    while True:
        other = f"{run}-ctl-{uuid.uuid4().hex[:6]}"
        if partition_of(other, partitions) == wanted:
            return other


def kafka_consumer(settings: Settings, group: str | None = None) -> Any:
    """A kafka-python consumer of the stack that commits nothing; of `group` when given
    (never subscribed: it reads the group's commits without joining it)."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        group_id=group,
        enable_auto_commit=False,
        **settings.kafka_client_config(),
    )


def wait_committed(settings: Settings, group: str, topics: list[str], timeout: float = 60) -> None:
    """Wait until consumer group `group` has committed every partition of `topics` up to
    the end each has now: what the workers read so far is durable, and a worker that takes
    a partition over starts after it (an observable event, not a sleep tuned to faust's
    commit interval)."""
    from kafka import TopicPartition

    # A consumer of the group that never subscribes: it reads the group's committed
    # offsets without joining it (no rebalance of the workers).
    consumer = kafka_consumer(settings, group)
    try:
        parts = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        assert parts, f"no partitions of {topics}"
        ends = consumer.end_offsets(parts)

        def committed() -> bool:
            return all(ends[tp] == 0 or (consumer.committed(tp) or 0) >= ends[tp] for tp in parts)

        wait_for(committed, timeout=timeout, every=0.5)
    finally:
        consumer.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item (``rep_call``): fixtures that save evidence on
    failure (browser screenshots) read it at teardown."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
