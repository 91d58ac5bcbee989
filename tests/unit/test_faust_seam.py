"""The faust seam (stepstream.faust_seam): the internals of faust and aiokafka it relies on
are pinned against the installed versions and checked at worker start, and the agents it
runs from an app's (topic, handler) pairs batch, guard, dead-letter and tell partitions
that came back."""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from stepstream.contract import DeadLetter
from stepstream.errors import FaustInternalsError
from stepstream.faust_seam import (
    INTERNALS,
    TESTED_WITH,
    Agent,
    DeadLetters,
    Internal,
    add_agents,
    check_internals,
    make_app,
    missing_internals,
    run_worker,
)
from stepstream.messages import Message
from stepstream.settings import Settings

#: What the seam reaches into, as reviewed against faust-streaming 0.15.3 and aiokafka
#: 0.14.0. A change here is a change of what the workers depend on: review it.
PINNED = {
    ("faust.transport.consumer:Consumer", "_read_offset"),
    ("faust.transport.consumer:Consumer", "_committed_offset"),
    ("faust.transport.consumer:Consumer", "_acked"),
    ("faust.transport.consumer:Consumer", "_acked_index"),
    ("faust.transport.consumer:Consumer", "_gap"),
    ("faust.transport.drivers.aiokafka", "aiokafka"),
    ("aiokafka", "AIOKafkaConsumer"),
    ("aiokafka:AIOKafkaConsumer.__init__", "fetch_max_wait_ms"),
    ("aiokafka:AIOKafkaConsumer", "seek_to_committed"),
    ("aiokafka:AIOKafkaConsumer", "seek"),
    ("aiokafka", "AIOKafkaProducer"),
    ("aiokafka:AIOKafkaProducer.send", "topic"),
    ("aiokafka:AIOKafkaProducer.send", "value"),
    ("aiokafka:AIOKafkaProducer.send", "key"),
    ("aiokafka:AIOKafkaProducer.send", "partition"),
    ("aiokafka:AIOKafkaProducer.send", "timestamp_ms"),
    ("aiokafka:AIOKafkaProducer.send", "headers"),
    ("aiokafka", "errors"),
    ("faust:Stream", "take_events"),
    ("faust:Stream", "noack"),
    ("faust:Worker", "spinner"),
}


def test_the_internals_the_seam_relies_on_are_the_pinned_ones() -> None:
    assert {(i.owner, i.name) for i in INTERNALS} == PINNED
    assert len(INTERNALS) == len(PINNED)  # each listed once


def test_every_internal_exists_in_the_installed_faust_and_aiokafka() -> None:
    assert [i.where() for i in missing_internals()] == []
    check_internals()  # what run_worker does first


def test_the_installed_versions_are_the_ones_the_error_tells_users_to_pin() -> None:
    # After an upgrade: check INTERNALS still hold (and the worker's behaviour in the
    # integration tests), then move TESTED_WITH, so the error's advice stays true.
    assert {package: version(package) for package in TESTED_WITH} == TESTED_WITH


def test_a_missing_private_attribute_stops_the_worker_with_the_versions_to_pin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from faust.transport.consumer import Consumer

    # An upgrade that renamed the read positions faust keeps per partition.
    annotations = dict(Consumer.__annotations__)
    del annotations["_read_offset"]
    monkeypatch.setattr(Consumer, "__annotations__", annotations)
    with pytest.raises(FaustInternalsError) as caught:
        check_internals()
    text = str(caught.value)
    assert "faust.transport.consumer:Consumer._read_offset" in text
    assert "_committed_offset" not in text  # only what is missing
    pins = " ".join(f"'{package}=={wanted}'" for package, wanted in TESTED_WITH.items())
    assert f"pip install {pins}" in text


def test_a_missing_parameter_or_module_attribute_is_told_too() -> None:
    odd = [
        Internal("aiokafka:AIOKafkaConsumer.__init__", "fetch_wait_ms", "parameter", "x"),
        Internal("faust.transport.drivers.aiokafka", "no_such_module", "attribute", "y"),
        Internal("no_such_package.module", "thing", "attribute", "z"),
    ]
    assert missing_internals(odd) == odd
    with pytest.raises(FaustInternalsError, match="fetch_wait_ms \\(x\\)"):
        check_internals(odd)


def test_run_worker_checks_before_it_changes_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import aiokafka

    import stepstream.faust_seam as seam

    consumer, producer = aiokafka.AIOKafkaConsumer, aiokafka.AIOKafkaProducer
    monkeypatch.setattr(
        seam, "INTERNALS", (*INTERNALS, Internal("faust:Stream", "gone", "attribute", "t"))
    )
    app = make_app(Settings(state_dir=tmp_path), "seam-check")
    with pytest.raises(FaustInternalsError, match=r"faust:Stream\.gone"):
        run_worker(app, "warn")
    assert (aiokafka.AIOKafkaConsumer, aiokafka.AIOKafkaProducer) == (consumer, producer)


# -- the agents it runs ------------------------------------------------------------------


class Sent:
    """A topic that keeps what is sent to it."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes]] = []

    async def send(self, *, key: bytes | None, value: bytes) -> None:
        self.sent.append((key, value))


def _agent_app(tmp_path: Path, handle: Any, returned: Any = None) -> tuple[Any, DeadLetters, Sent]:
    app = make_app(Settings(state_dir=tmp_path), "seam-agents")
    topic = Sent()
    dead = DeadLetters(topic)
    add_agents(app, dead, [Agent("a", "in", "stage/a", handle, 10, 0.01, returned=returned)])
    return app, dead, topic


def test_an_agent_hands_batches_of_messages_and_dead_letters_the_one_that_fails(
    tmp_path: Path,
) -> None:
    batches: list[list[tuple[int, int, bytes | None, bytes | None]]] = []

    async def handle(messages: list[Message]) -> None:
        batches.append([(m.partition, m.offset, m.key, m.value) for m in messages])
        if any(m.value == b"boom" for m in messages):
            raise KeyError("a bug")

    app, _, topic = _agent_app(tmp_path, handle)

    async def main() -> None:
        async with app.agents["a"].test_context() as agent:
            await agent.put(b"ok", key=b"r:0")
            await agent.put(b"boom", key=b"r:1")
            await asyncio.sleep(0.1)

    asyncio.run(asyncio.wait_for(main(), 20))
    # the batch, then each message alone; only the failing one costs itself
    assert batches[0] == [(0, 0, b"r:0", b"ok"), (0, 1, b"r:1", b"boom")]
    assert batches[1:] == [[(0, 0, b"r:0", b"ok")], [(0, 1, b"r:1", b"boom")]]
    [(key, value)] = topic.sent
    letter = DeadLetter.model_validate_json(value)
    assert (key, letter.stage, letter.reason, letter.topic, letter.offset) == (
        b"r:1",
        "stage/a",
        "internal_error",
        "in",
        1,
    )
    assert letter.detail == "KeyError: 'a bug'"


def test_an_agent_tells_the_partitions_whose_offsets_jumped_before_handling(
    tmp_path: Path,
) -> None:
    events: list[Any] = []

    async def handle(messages: list[Message]) -> None:
        events.append([m.offset for m in messages])

    app, _, topic = _agent_app(tmp_path, handle, returned=lambda parts: events.append(parts))

    async def main() -> None:
        async with app.agents["a"].test_context() as agent:
            await agent.put(b"a", key=b"k")
            await asyncio.sleep(0.05)
            agent.sent_offset = 40  # another worker read offsets 1..39 meanwhile
            await agent.put(b"b", key=b"k")
            await asyncio.sleep(0.05)

    asyncio.run(asyncio.wait_for(main(), 20))
    assert events == [[0], {0}, [40]]
    assert topic.sent == []


def test_dead_letters_count_by_reason_when_asked_to() -> None:
    from collections import Counter

    counts: Counter[str] = Counter()
    dead = DeadLetters(Sent(), counts)
    message = Message("t", 2, 9, None, b"x")
    assert asyncio.run(dead.send(message, stage="s", reason="schema", detail="d"))
    assert counts == {"schema": 1}


def test_the_worker_command_says_what_to_pin_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    import stepstream.faust_seam as seam
    from stepstream import cli

    monkeypatch.setenv("STEPSTREAM_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(
        seam, "INTERNALS", (*INTERNALS, Internal("faust:Stream", "gone", "attribute", "t"))
    )
    result = CliRunner().invoke(cli.app, ["worker", "sink"])
    assert result.exit_code == 1, result.output
    assert "faust:Stream.gone" in result.output and "Traceback" not in result.output


def test_read_as_of_tells_how_far_each_partition_was_read() -> None:
    from faust.types import TP

    from stepstream.faust_seam import read_as_of
    from stepstream.positions import PartitionOffsets, ReadProgress

    class Consumer:  # the public calls of faust's consumer that read_as_of makes
        def __init__(self) -> None:
            self.ends: dict[int, int | None] = {0: 10, 1: 10, 2: 5, 3: None}
            self.positions = {2: 5}

        def assignment(self) -> set[TP]:
            return {TP("telemetry", p) for p in range(4)} | {TP("summaries", 0)}

        def highwater(self, tp: TP) -> int | None:
            return self.ends[tp.partition]

        async def position(self, tp: TP) -> int | None:
            return self.positions.get(tp.partition)

    class App:
        consumer = Consumer()

    app: Any = App()
    read, progress = PartitionOffsets({0: 9, 1: 7}), ReadProgress()
    # 0: read to offset 9 of 10; 1: three behind; 2: nothing read here, the position at
    # its end (the previous owner read it all); 3: no fetch answered yet
    assert asyncio.run(read_as_of(app, "telemetry", read, progress, 100.0)) == {0: 100.0, 2: 100.0}
    # a second later partition 1 has read what the broker held at 100, not what came since
    app.consumer.ends[1] = 14
    read.last[1] = 9
    found = asyncio.run(read_as_of(app, "telemetry", read, progress, 101.0))
    assert found == {0: 101.0, 1: 100.0, 2: 101.0}


def test_read_progress_keeps_the_newest_moment_the_reading_passed() -> None:
    from stepstream.positions import ReadProgress

    progress = ReadProgress(keep=3)
    for at, end in ((1.0, 10), (2.0, 20), (3.0, 30), (4.0, 40)):
        progress.sample(0, at, end)
    assert progress.samples[0] == [(2.0, 20), (3.0, 30), (4.0, 40)]  # the oldest dropped
    assert progress.read_as_of(0, 15) is None  # not even what the broker held at 2.0
    assert progress.read_as_of(0, 29) == 3.0
    assert progress.samples[0] == [(3.0, 30), (4.0, 40)]
    assert progress.read_as_of(0, 45) == 4.0
    progress.drop([0])
    assert progress.read_as_of(0, 45) is None
