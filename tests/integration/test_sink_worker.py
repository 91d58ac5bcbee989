"""The real faust sink worker on the embedded broker, writing raw series to a Redis that
is killed -9 and restarted mid-stream: nothing is lost, nothing is doubled."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from query.reader import MetricsReader
from sinks.local_redis import LocalRedis
from stepstream.contract import Batch, Record
from stepstream.settings import Settings
from stepstream.stack import LocalStack, settings_env, worker_command
from stepstream.topics import Topics

from .conftest import wait_for

pytestmark = pytest.mark.integration

STEPS = 100


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """tansu (and the stack's own Redis, unused) without workers: the test runs its sink."""
    state_dir: Path = tmp_path_factory.mktemp("sinkstack")
    settings = Settings(state_dir=state_dir, topic_prefix=f"w{uuid.uuid4().hex[:8]}")
    stack = LocalStack(settings, workers=False)
    state = stack.start()
    try:
        yield settings.model_copy(update={"kafka_bootstrap": state.kafka_bootstrap})
    finally:
        stack.stop()


def loss(rank: int, step: int) -> float:
    return 10.0 / (step + 1) + rank


def send(producer: KafkaProducer, topic: str, run: str, steps: range) -> None:
    for start in range(steps.start, steps.stop, 5):
        for rank in (0, 1):
            batch = Batch(
                run=run,
                rank=rank,
                world=2,
                incarnation="i",
                records=[
                    Record(seq=s, t=1_700_000_000.0 + s, step=s, values={"loss": loss(rank, s)})
                    for s in range(start, start + 5)
                ],
            )
            producer.send(topic, key=batch.key, value=batch.to_bytes())
    producer.flush()


def test_sink_worker_survives_a_redis_outage_without_loss(broker: Settings, tmp_path: Path) -> None:
    run = f"out-{uuid.uuid4().hex[:8]}"
    redis_server = LocalRedis(persist=True).start()
    settings = broker.model_copy(update={"redis_url": redis_server.url, "sink_batch": 8})
    log = (tmp_path / "sink.log").open("wb")
    env = {**os.environ, **settings_env(settings)}
    worker = subprocess.Popen(
        worker_command("sink"),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    topic = Topics(settings.topic_prefix).validated  # what the sink stores raw series from
    reader = MetricsReader.from_url(redis_server.url)

    def steps_of(rank: int) -> list[int | None]:
        try:
            return [p.step for p in reader.series(run, "loss", rank).points]
        except Exception:  # Redis is down or loading: not there yet
            return []

    try:
        send(producer, topic, run, range(0, STEPS // 2))
        wait_for(lambda: len(steps_of(0)) == len(steps_of(1)) == STEPS // 2, timeout=60)
        redis_server.kill()
        send(producer, topic, run, range(STEPS // 2, STEPS))
        time.sleep(2.0)  # the sink meets the outage and retries with backoff
        assert worker.poll() is None, "the sink worker died during the Redis outage"
        redis_server.start()
        wait_for(lambda: len(steps_of(0)) == len(steps_of(1)) == STEPS, timeout=60)
        for rank in (0, 1):
            points = reader.series(run, "loss", rank).points
            assert [(p.step, p.value) for p in points] == [(s, loss(rank, s)) for s in range(STEPS)]
        assert "retrying" in (tmp_path / "sink.log").read_text(errors="replace")
    finally:
        reader.close()
        producer.close()
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
        log.close()
        redis_server.close()
