"""The seam's aiokafka consumer against a real broker (tansu): a partition assigned
without a committed offset is read from its start when faust seeks to the committed
offsets, whatever its background fetch had reached before."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiokafka
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stepstream.faust_seam import read_uncommitted_from_start
from stepstream.settings import Settings
from stepstream.stack import LocalStack

pytestmark = pytest.mark.integration

RECORDS = 10


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tansu broker (and Valkey, unused), no workers; stopped after the module."""
    state_dir: Path = tmp_path_factory.mktemp("seam")
    stack = LocalStack(Settings(state_dir=state_dir), workers=False)
    try:
        yield stack.start().kafka_bootstrap
    finally:
        stack.stop()


async def positions_after_seek(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """Read every record of both partitions (the position moves past them, as the
    background fetch moves it while faust's flow is suspended), commit partition 1 at 4,
    then seek to the committed offsets as faust does: each partition's position."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 2, 1)])
    await admin.close()
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    for i in range(RECORDS):
        for partition in (0, 1):
            await producer.send_and_wait(topic, b"%d" % i, partition=partition)
    await producer.stop()
    consumer = aiokafka.AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        read = 0
        for _ in range(50):
            batches = await consumer.getmany(timeout_ms=200)
            read += sum(len(records) for records in batches.values())
            if read >= 2 * RECORDS:
                break
        assert read == 2 * RECORDS
        await consumer.commit({parts[1]: 4})
        await consumer.seek_to_committed()
        return {tp.partition: await consumer.position(tp) for tp in parts}
    finally:
        await consumer.stop()


def test_a_partition_without_a_committed_offset_is_read_from_its_start(
    bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The seam replaces the class for the whole process: restored after the test.
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", aiokafka.AIOKafkaConsumer)
    read_uncommitted_from_start()
    assert aiokafka.AIOKafkaConsumer.__name__ == "UncommittedFromStartConsumer"
    topic = f"seam-{uuid.uuid4().hex[:8]}"
    found = asyncio.run(positions_after_seek(bootstrap, topic, f"g-{topic}"))
    # Partition 0 has no commit: back to its start (aiokafka alone leaves it at 10, past
    # records faust dropped unread). Partition 1 goes to its commit, as before.
    assert found == {0: 0, 1: 4}


def test_without_the_seam_aiokafka_keeps_the_fetched_position(bootstrap: str) -> None:
    """What the seam mends, measured: a control that fails if aiokafka starts seeking
    uncommitted partitions itself (the seam may then go)."""
    if getattr(aiokafka.AIOKafkaConsumer, "_stepstream_uncommitted_from_start", False):
        pytest.skip("the seam's consumer is installed in this process")
    topic = f"seam-{uuid.uuid4().hex[:8]}"
    found = asyncio.run(positions_after_seek(bootstrap, topic, f"g-{topic}"))
    assert found == {0: RECORDS, 1: 4}
