"""Two processor workers share the telemetry partitions; killing one moves its partitions
to the other and every run keeps flowing into Redis. Window state of the moved partitions
starts cold on the survivor (documented in docs/detectors.md): the test checks flow, and
that the moved series' windows refill from new data."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import producers
from query.reader import MetricsReader, RollingStats
from stepstream.settings import Settings
from stepstream.stack import LocalStack, settings_env, worker_command
from stepstream.topics import Topics

from .conftest import kafka_consumer, wait_committed, wait_for

pytestmark = pytest.mark.integration

RUNS = 6


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Settings, list[subprocess.Popen[bytes]]]]:
    """A broker and Redis, one sink worker and two processor workers; all stopped after."""
    settings = Settings(state_dir=tmp_path, topic_prefix=f"s{uuid.uuid4().hex[:8]}")
    stack = LocalStack(settings, workers=False)
    state = stack.start()
    live = settings.model_copy(
        update={"kafka_bootstrap": state.kafka_bootstrap, "redis_url": state.redis_url}
    )
    env = {**os.environ, **settings_env(live)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, stage in enumerate(("sink", "processor", "processor")):
            with (tmp_path / f"{stage}{i}.log").open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        worker_command(stage),
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        yield live, procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        stack.stop()


def telemetry_log(settings: Settings, runs: list[str]) -> str:
    """Where `runs`' telemetry lies in the log (partition, offset, steps) and the
    processor group's committed offsets there: a failure message's evidence of records
    the survivor never read."""
    from kafka import TopicPartition

    from stepstream.contract import decode_batch

    topics = Topics(settings.topic_prefix)
    topic = topics.telemetry
    reader = kafka_consumer(settings)
    group = kafka_consumer(settings, topics.group("processor"))
    try:
        parts = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
        reader.assign(parts)
        reader.seek_to_beginning(*parts)
        found: dict[str, list[tuple[int, int, list[int | None]]]] = {run: [] for run in runs}
        partitions: set[int] = set()
        for records in reader.poll(timeout_ms=3000, max_records=100_000).values():
            for message in records:
                batch = decode_batch(message.value, settings.max_message_bytes)
                if batch.run in found:
                    steps = [r.step for r in batch.records if "loss" in r.values]
                    found[batch.run].append((message.partition, message.offset, steps))
                    partitions.add(message.partition)
        committed = {p: group.committed(TopicPartition(topic, p)) for p in sorted(partitions)}
        return f"telemetry (partition, offset, loss steps): {found}; committed: {committed}"
    except Exception as exc:  # evidence only: never hide the failure it explains
        return f"telemetry not read: {exc!r}"
    finally:
        reader.close()
        group.close()


def test_killing_one_of_two_processors_keeps_every_run_flowing(
    broker: tuple[Settings, list[subprocess.Popen[bytes]]],
) -> None:
    settings, procs = broker
    runs = [f"so-{uuid.uuid4().hex[:6]}-{i}" for i in range(RUNS)]
    reader = MetricsReader.from_url(settings.redis_url, settings.key_prefix)
    monitors = [producers.init(run, rank=0, world=1, settings=settings) for run in runs]
    try:

        def publish(steps: range) -> None:
            for step in steps:
                for monitor in monitors:
                    monitor.log(step, loss=1.0 / (1 + step))
            for monitor in monitors:
                assert monitor.flush(20)

        def all_at(step: int) -> bool:
            return all(
                any(r.step is not None and r.step >= step for r in reader.ranks(run))
                for run in runs
            )

        publish(range(0, 20))
        wait_for(lambda: all_at(19), timeout=60)

        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(10)

        publish(range(20, 40))
        wait_for(lambda: all_at(39), timeout=60)

        # Liveness comes from the sink's raw-series path (the validated telemetry the
        # processor forwards), windows from the processor's window updates: the windows of
        # step 39 may land a moment after the liveness of step 39.
        def loss_windows() -> dict[str, RollingStats]:
            out = {}
            for run in runs:
                rows = {row.metric: row.stats for row in reader.rolling(run, "50steps")}
                if "loss" in rows:
                    out[run] = rows["loss"]
            return out

        def windows_at_39() -> bool:
            windows = loss_windows()
            return len(windows) == RUNS and all(w.last == 1.0 / 40 for w in windows.values())

        try:
            wait_for(windows_at_39, timeout=60)
        except AssertionError:
            seen = {run: (w.last, w.count) for run, w in loss_windows().items()}
            # The raw series tells a step the survivor never read (skipped offsets) from
            # one it read but whose window stats it never sent.
            raw = {run: [p.step for p in reader.series(run, "loss", 0).points] for run in runs}
            frozen = [run for run, w in seen.items() if w[0] != 1.0 / 40]
            raise AssertionError(
                f"loss windows (last, count) by run, wanted last={1.0 / 40}: {seen}; "
                f"ranks: {[(run, [r.step for r in reader.ranks(run)]) for run in runs]}; "
                f"raw loss steps stored: {raw}; {telemetry_log(settings, frozen)}"
            ) from None
        # Every run's 50-step window holds the new steps; a run whose partition moved
        # starts a cold window on the survivor (at least the 20 new steps).
        for run, stats in loss_windows().items():
            assert stats.last == 1.0 / 40, run
            assert (stats.count or 0) >= 20, run
    finally:
        for monitor in monitors:
            monitor.close()
        reader.close()


def test_a_moved_run_keeps_its_firing_alert_without_paging_again(
    broker: tuple[Settings, list[subprocess.Popen[bytes]]],
) -> None:
    """The survivor restores the firing alerts of runs it takes over from Redis: a NaN
    that goes on across the failover is one firing and, when it ends, one resolved. A NaN
    that ended while its run moved (the clear the dead worker owed is lost) resolves once
    the survivor has not re-asserted it for STEPSTREAM_FAILOVER_REASSERT_S (10 s), not
    after the 300 s resolve timeout."""
    settings, procs = broker
    runs = [f"fo-{uuid.uuid4().hex[:6]}-{i}" for i in range(RUNS)]
    # Twelve more: about half move, and one of them at least with odds of 4,095 to 1.
    ended = [f"fe-{uuid.uuid4().hex[:6]}-{i}" for i in range(12)]
    reader = MetricsReader.from_url(settings.redis_url, settings.key_prefix)
    monitors = [producers.init(run, rank=0, world=1, settings=settings) for run in runs]
    quiet = [producers.init(run, rank=0, world=1, settings=settings) for run in ended]

    def publish(steps: range, loss: float, to: list[producers.Monitor] = monitors) -> None:
        for step in steps:
            for monitor in to:
                monitor.log(step, loss=loss)
        for monitor in to:
            assert monitor.flush(20)

    def nan_alerts(run: str) -> list[str]:
        return [
            a.status for a in reader.alerts(run) if a.rule == "nonfinite" and a.metric == "loss"
        ]

    try:
        publish(range(0, 10), 1.0, monitors + quiet)
        publish(range(10, 20), math.nan, monitors + quiet)
        wait_for(lambda: all(nan_alerts(run) == ["firing"] for run in runs + ended), timeout=60)
        # Let the workers commit past the NaN steps: a survivor that re-read them would
        # re-raise the same transition, which the sink dedups, and this test would not
        # see a restart at all.
        topics = Topics(settings.topic_prefix)
        wait_committed(settings, topics.group("processor"), [topics.telemetry, topics.summaries])

        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(10)

        killed = time.monotonic()
        publish(range(20, 45), 1.0, quiet)  # these ended during the move
        publish(range(20, 40), math.nan)  # the moved runs' detectors start afresh here
        # The NaN goes on past the re-assert window (10 s): a taken-over alert must be
        # restated or raised again, not resolved for want of news.
        step = 40
        until = time.monotonic() + 13
        while time.monotonic() < until:
            publish(range(step, step + 1), math.nan)
            step += 1
            time.sleep(0.5)
        publish(range(step, step + 5), 1.0)
        wait_for(lambda: all("resolved" in nan_alerts(run) for run in runs), timeout=90)
        for run in runs:
            assert nan_alerts(run) == ["firing", "resolved"], run
            assert reader.active_alerts(run) == [] or all(
                a.rule != "nonfinite" for a in reader.active_alerts(run)
            )
            # The NaN went on across the move: restated or raised again, never resolved
            # for want of news.
            last = [a for a in reader.alerts(run) if a.rule == "nonfinite"][-1]
            assert "not re-asserted" not in last.summary, (run, last.summary)
        # Kept alive (their runs report) so that only the re-assert window can end them.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(
            "resolved" in nan_alerts(run) for run in ended
        ):
            publish(range(45, 46), 1.0, quiet)
            time.sleep(1.0)
        assert time.monotonic() - killed < 120, "waited for the 300 s resolve timeout"
        lost = []
        for run in ended:
            assert nan_alerts(run) == ["firing", "resolved"], run
            last = [a for a in reader.alerts(run) if a.rule == "nonfinite"][-1]
            if "not re-asserted" in last.summary:
                lost.append(run)
        assert lost, "no run moved: the survivor resolved every alert itself"
    finally:
        for monitor in monitors + quiet:
            monitor.close()
        reader.close()


DYING_RANKS = """
import sys, time
import producers
monitors = [producers.init(run, rank=1, world=2) for run in sys.argv[1:]]
for step in range(10):
    for monitor in monitors:
        monitor.log(step, loss=1.0)
for monitor in monitors:
    monitor.flush(20)
print("ready", flush=True)
time.sleep(3600)
"""


def test_a_rank_that_died_around_a_failover_is_reported_dead_once_and_stays_so(
    broker: tuple[Settings, list[subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    """Rank 1 of each run dies (SIGKILL, no goodbye) and a processor is killed with it.
    Whether the dead worker had flagged it or not, the survivor learns the rank from the
    rank registry: one dead_rank alert per run, firing, re-asserted past the re-assert
    window rather than resolved or paged again."""
    settings, procs = broker
    runs = [f"fd-{uuid.uuid4().hex[:6]}-{i}" for i in range(8)]
    reader = MetricsReader.from_url(settings.redis_url, settings.key_prefix)
    alive = [producers.init(run, rank=0, world=2, settings=settings) for run in runs]
    env = {
        **os.environ,
        **settings_env(settings),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    with (tmp_path / "dying.log").open("wb") as log:
        dying = subprocess.Popen(
            [sys.executable, "-c", DYING_RANKS, *runs],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    step = [0]

    def tick() -> None:
        for monitor in alive:
            monitor.log(step[0], loss=1.0)
        step[0] += 1

    def dead(run: str) -> list[str]:
        return [a.status for a in reader.alerts(run) if a.rule == "dead_rank" and a.rank == 1]

    try:
        assert dying.stdout is not None and dying.stdout.readline().strip() == b"ready"

        def registered() -> bool:
            tick()
            return all(any(r.rank == 1 and r.step == 9 for r in reader.ranks(run)) for run in runs)

        wait_for(registered, timeout=60, every=0.5)
        dying.send_signal(signal.SIGKILL)
        dying.wait(10)
        # The workers commit past rank 1's last words: the survivor does not read them
        # again, so only the rank registry tells it rank 1 existed.
        topics = Topics(settings.topic_prefix)
        wait_committed(settings, topics.group("processor"), [topics.telemetry, topics.summaries])
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(10)

        def all_dead() -> bool:
            tick()
            return all(dead(run) == ["firing"] for run in runs)

        wait_for(all_dead, timeout=90, every=0.5)
        # Past the re-assert window (10 s) and a rebalance grace: still one firing each.
        until = time.monotonic() + 15
        while time.monotonic() < until:
            tick()
            time.sleep(0.5)
        for run in runs:
            assert dead(run) == ["firing"], [
                (a.status, a.summary) for a in reader.alerts(run) if a.rule == "dead_rank"
            ]
    finally:
        with contextlib.suppress(ProcessLookupError):
            dying.kill()
        dying.wait(10)
        for monitor in alive:
            monitor.close()
        reader.close()
