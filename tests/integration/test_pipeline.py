"""The whole pipeline on the real embedded stack: producer -> tansu -> faust -> Redis."""

from __future__ import annotations

import base64
import json
import math
import statistics
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import producers
from query.alert_feed import AlertFeed
from query.reader import MetricsReader
from stepstream.contract import Batch, Record
from stepstream.settings import Settings
from stepstream.topics import Topics

from .conftest import wait_for

pytestmark = pytest.mark.integration


def loss_at(rank: int, step: int) -> float:
    if rank == 1 and step == 30:
        return math.nan
    if rank == 0 and step == 45:
        return math.inf
    return 1.0 / (1 + step) + rank * 0.01


def test_published_values_land_in_redis_exactly(
    live_settings: Settings, reader: MetricsReader, run_id: str
) -> None:
    steps = 80
    monitors = [producers.init(run_id, rank=r, world=2, settings=live_settings) for r in (0, 1)]
    for step in range(steps):
        for rank, monitor in enumerate(monitors):
            monitor.log(step, loss=loss_at(rank, step), lr=0.1 * (rank + 1))
    for monitor in monitors:
        assert monitor.flush(20)
        monitor.close()

    def final_rows() -> list | None:
        live = reader.ranks(run_id)
        if len(live) == 2 and all(r.step == steps - 1 for r in live):
            return reader.rolling(run_id, "50steps")
        return None

    found = wait_for(final_rows)
    rows = {(r.rank, r.metric): r.stats for r in found}
    # The columnar read of the same window holds the same figures, without a row object.
    cols = reader.rolling_columns(run_id, "50steps")
    assert list(zip(cols.rank.tolist(), cols.names(), strict=True)) == [
        (r.rank, r.metric) for r in found
    ]
    for name in ("count", "nonfinite", "mean", "min", "max", "last"):
        assert cols.column(name).tolist() == [getattr(r.stats, name) for r in found], name
    for rank in (0, 1):
        window = [loss_at(rank, s) for s in range(steps - 50, steps)]
        finite = [v for v in window if math.isfinite(v)]
        stats = rows[(rank, "loss")]
        assert stats.count == 50
        assert stats.nonfinite == 1
        assert stats.mean == statistics.fmean(finite) or math.isclose(
            stats.mean or 0.0, statistics.fmean(finite), rel_tol=1e-12
        )
        assert (stats.min, stats.max, stats.last) == (min(finite), max(finite), window[-1])
        assert rows[(rank, "lr")].mean == 0.1 * (rank + 1)

    latest = reader.latest(run_id)
    assert latest[(0, "loss")] == loss_at(0, steps - 1)

    # Across ranks at the newest finished step (stage 2 -> crossrank topic -> sink).
    def crossrank_loss() -> object:
        rows = {r.metric: r for r in reader.crossrank(run_id)}
        loss = rows.get("loss")
        return loss if loss is not None and loss.step == steps - 1 else None

    across = wait_for(crossrank_loss)
    ends = [loss_at(0, steps - 1), loss_at(1, steps - 1)]
    assert across.ranks == 2  # type: ignore[attr-defined]
    assert (across.min, across.max) == (ends[0], ends[1])  # type: ignore[attr-defined]
    assert (across.argmin, across.argmax) == (0, 1)  # type: ignore[attr-defined]
    assert math.isclose(across.mean, statistics.fmean(ends), rel_tol=1e-12)  # type: ignore[attr-defined]
    assert [r.run for r in reader.runs()].count(run_id) == 1

    # The NaN of rank 1 at step 30 and the +Inf of rank 0 at step 45 arrive together (both
    # ranks flush once): one incident of the run, opened by whichever reached stage 2
    # first, listing both series, resolved once both are finite again (after the hold).
    # Other detectors (stage 2's non-finite origin) may add alerts of their own rules.
    def nonfinite_alerts() -> list | None:
        found = [a for a in reader.alerts(run_id) if a.rule == "nonfinite"]
        return found if any(a.status == "resolved" for a in found) else None

    alerts = wait_for(nonfinite_alerts, timeout=60)
    firing = [a for a in alerts if a.status == "firing"]
    resolved = [a for a in alerts if a.status == "resolved"]
    assert len(firing) == 1 and len(resolved) == 1, alerts
    opened = (firing[0].rank, firing[0].metric, firing[0].step)
    assert opened in {(1, "loss", 30), (0, "loss", 45)}
    assert resolved[0].step in {31, 46} and resolved[0].rank == firing[0].rank
    assert resolved[0].fingerprint == firing[0].fingerprint
    assert sorted(resolved[0].affected) == ["rank 0: loss", "rank 1: loss"]
    value = firing[0].evidence["value"]
    assert value is not None and not math.isfinite(value)
    assert [a for a in reader.active_alerts(run_id) if a.rule == "nonfinite"] == []

    with AlertFeed(live_settings, run=run_id) as feed:
        on_topic = wait_for(lambda: feed.poll(0.5), timeout=20)
    on_topic = [a for a in on_topic if a.rule == "nonfinite"]
    assert {(a.fingerprint, a.status) for a in on_topic} <= {
        (firing[0].fingerprint, "firing"),
        (firing[0].fingerprint, "resolved"),
    }


def test_bad_messages_go_to_the_dead_letter_topic_and_processing_goes_on(
    live_settings: Settings, reader: MetricsReader, run_id: str
) -> None:
    topics = Topics(live_settings.topic_prefix)
    producer = KafkaProducer(bootstrap_servers=live_settings.kafka_bootstrap)
    future_version = json.dumps({"v": 9, "run": run_id, "rank": 0, "records": []}).encode()
    good = Batch(
        run=run_id,
        rank=0,
        incarnation="x",
        records=[Record(seq=0, t=time.time(), step=0, values={"loss": 0.5})],
    )
    for key, value in [
        (b"bad:0", b"\xff\xfe garbage"),
        (b"bad:1", future_version),
        (b"bad:2", b'{"v": 1, "run": "has space", "rank": 0}'),
        (good.key, good.to_bytes()),
    ]:
        producer.send(topics.telemetry, key=key, value=value)
    producer.flush()
    producer.close()

    assert wait_for(lambda: reader.latest(run_id).get((0, "loss")) == 0.5)

    consumer = KafkaConsumer(
        bootstrap_servers=live_settings.kafka_bootstrap, enable_auto_commit=False
    )
    try:
        consumer.assign(
            [TopicPartition(topics.deadletter, p) for p in range(live_settings.partitions)]
        )
        consumer.seek_to_beginning()
        letters: dict[str, dict] = {}

        def collect() -> bool:
            for messages in consumer.poll(500).values():
                for m in messages:
                    doc = json.loads(m.value)
                    assert doc["key"] not in letters, f"two dead letters for {doc['key']}"
                    letters[doc["key"]] = doc
            return {"bad:0", "bad:1", "bad:2"} <= letters.keys()

        wait_for(collect, timeout=30)
    finally:
        consumer.close()
    assert letters["bad:0"]["reason"] == "undecodable"
    assert letters["bad:0"]["payload_encoding"] == "base64"  # not UTF-8: carried as base64
    assert base64.b64decode(letters["bad:0"]["payload"]) == b"\xff\xfe garbage"
    assert letters["bad:0"]["stage"] == "processor/series-stage"
    assert letters["bad:0"]["size"] == len(b"\xff\xfe garbage")
    assert letters["bad:1"]["reason"] == "version"
    assert letters["bad:2"]["reason"] == "schema" and "run" in letters["bad:2"]["detail"]
    assert letters["bad:1"]["topic"] == topics.telemetry


def test_worker_logs_hold_no_terminal_control_codes(live_settings: Settings) -> None:
    # faust's start-up spinner wrote cursor escapes into the workers' log files, and the
    # root logger it left at DEBUG made every faust and aiokafka debug call build a record.
    logs = sorted((live_settings.state_dir / "logs").glob("*.log"))
    workers = [p for p in logs if p.name.startswith(("processor", "sink"))]
    assert workers, [p.name for p in logs]
    for path in workers:
        text = path.read_bytes()
        assert b"\x1b[" not in text, (path.name, text[:300])
