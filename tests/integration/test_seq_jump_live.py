"""A forged seq, end to end: a publisher writing the documented wire format (README,
"Publishing without the SDK") sends genuine batches, then one whose seq jumps far ahead,
then genuine ones again. The forged batch is dead-lettered with the reason ``seq_jump``,
the later genuine records are stored (not taken for duplicates), and the run gets one
``telemetry_rejected`` alert, all read through the public reader and the dead-letter
topic."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer

from query.reader import MetricsReader
from stepstream.settings import Settings
from stepstream.topics import Topics

from .conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def producer(live_settings: Settings) -> Iterator[KafkaProducer]:
    """A plain Kafka client: what a publisher without the SDK uses."""
    p = KafkaProducer(bootstrap_servers=live_settings.kafka_bootstrap, linger_ms=5)
    yield p
    p.close(5)


def batch(run: str, incarnation: str, seqs: range, first_step: int) -> bytes:
    """One wire-format message of the records `seqs`, steps from `first_step`."""
    now = time.time()
    records = [
        {"seq": seq, "t": now, "step": first_step + i, "kind": "train", "values": {"loss": 1.0}}
        for i, seq in enumerate(seqs)
    ]
    doc = {"v": 1, "run": run, "rank": 0, "world": 1, "incarnation": incarnation}
    return json.dumps({**doc, "records": records}).encode()


def test_a_forged_seq_is_dead_lettered_and_later_records_still_count(
    live_settings: Settings, reader: MetricsReader, producer: KafkaProducer
) -> None:
    run = f"sj-{uuid.uuid4().hex[:8]}"
    topic = Topics(live_settings.topic_prefix)
    letters = KafkaConsumer(
        topic.deadletter,
        bootstrap_servers=live_settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=500,
    )
    incarnation = uuid.uuid4().hex[:12]
    key = f"{run}:0".encode()
    try:
        producer.send(topic.telemetry, batch(run, incarnation, range(0, 10), 0), key)
        producer.send(topic.telemetry, batch(run, incarnation, range(10**12, 10**12 + 1), 10), key)
        producer.send(topic.telemetry, batch(run, incarnation, range(10, 20), 10), key)
        producer.flush(10)

        def stored() -> list[int] | None:
            steps = [p.step for p in reader.series(run, "loss").points if p.step is not None]
            return steps if len(steps) >= 20 else None

        # The genuine records after the forged one count: none was taken for a duplicate.
        assert wait_for(stored, 60) == list(range(20))

        def alerted() -> list[tuple[str, str | None]] | None:
            found = [(a.rule, a.labels.get("reason")) for a in reader.alerts(run)]
            return found or None

        assert wait_for(alerted, 30) == [("telemetry_rejected", "seq_jump")]

        def lettered() -> list[str] | None:
            found = []
            for message in letters:
                letter = json.loads(message.value)
                if letter.get("key") == key.decode() and letter["reason"] == "seq_jump":
                    found.append(letter["detail"])
            return found or None

        details = wait_for(lettered, 30)
        assert len(details) == 1 and str(10**12) in details[0]
    finally:
        letters.close()
