"""Liveness end to end: real 2-rank gloo DDP jobs instrumented through the public SDK,
through the embedded stack, read back through the public reader and CLI. Staggered clean
exits raise nothing and the run is finished; a rank that exits while its peer goes on is
``rank_exited`` (never dead); a rank blocked in its data loader is named as the origin of
the hang within seconds, with its stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from query.reader import MetricsReader
from stepstream.contract import Alert
from stepstream.settings import Settings
from stepstream.stack import free_port, settings_env

from .conftest import fresh_stack, same_partition_run, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("liveness_worker.py")
#: rank_exited's grace, shortened from the default 30 s (the test's own wait); the
#: staggered exits (6 s apart) stay well inside it.
EXIT_GRACE_S = 12.0


@pytest.fixture(scope="module")
def live_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The shared stack's settings, but rank_exited's grace is EXIT_GRACE_S."""
    yield from fresh_stack(
        tmp_path_factory, detector_params={"liveness": {"exit_grace_s": EXIT_GRACE_S}}
    )


def run_ranks(
    settings: Settings, run: str, steps: int, mode: str, arg: float, logs: Path, world: int = 2
) -> list[int | None]:
    """Start `world` ranks as torchrun would, wait for them, stop them by pid on any
    failure."""
    env = {
        **os.environ,
        **settings_env(settings),
        "PYTHONPATH": str(ROOT),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for rank in range(world):
            with (logs / f"rank{rank}.log").open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(WORKER), run, str(steps), mode, str(arg)],
                        env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        return [p.wait(150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_staggered_clean_exits_raise_nothing_and_the_run_is_finished(
    live_settings: Settings, reader: MetricsReader, run_id: str, tmp_path: Path
) -> None:
    # rank 1 closes 6 s after rank 0: well past the 2.5 s a silent rank needs to be dead
    codes = run_ranks(live_settings, run_id, 200, "stagger", 6.0, tmp_path)
    assert codes == [0, 0], [p.read_text()[-2000:] for p in tmp_path.glob("*.log")]
    meta = wait_for(lambda: (m := reader.run_meta(run_id)).state == "finished" and m, timeout=30)
    assert sorted((r.rank, r.status) for r in meta.ranks) == [(0, "closing"), (1, "closing")]
    assert [r.state for r in reader.runs() if r.run == run_id] == ["finished"]
    # Positive control: a later run on the same partition (so stage 2 and the alerts
    # topic handle it after this one), whose last rank vanishes; once its dead_rank alert
    # is stored, any liveness alert of this run would be stored too.
    control = same_partition_run(run_id, live_settings.partitions)
    (tmp_path / "control").mkdir()
    codes = run_ranks(live_settings, control, 0, "vanish", 6.0, tmp_path / "control")
    assert codes == [0, 0], [p.read_text()[-2000:] for p in tmp_path.glob("control/*.log")]
    wait_for(lambda: [a for a in reader.alerts(control) if a.rule == "dead_rank"], timeout=30)
    # Liveness only: the timing detectors are judged by test_detection_e2e's healthy job
    # (this job's 5 ms steps on a loaded 2-core machine once drew a straggler).
    liveness = ("dead_rank", "hung_rank", "rank_exited", "node_lost")
    alerts = [(a.rule, a.rank, a.status) for a in reader.alerts(run_id, count=100)]
    assert [a for a in alerts if a[0] in liveness] == []


def test_a_rank_that_exits_while_the_run_continues_is_rank_exited_not_dead(
    live_settings: Settings, reader: MetricsReader, run_id: str, tmp_path: Path
) -> None:
    # rank 1 closes after 20 steps; rank 0 steps on for 8 s past the grace
    steps_on = EXIT_GRACE_S + 8.0
    codes = run_ranks(live_settings, run_id, 1_000_000, "early_exit", steps_on, tmp_path)
    assert codes == [0, 0], [p.read_text()[-2000:] for p in tmp_path.glob("*.log")]
    wait_for(lambda: reader.run_meta(run_id).state == "finished", timeout=30)
    liveness = ("dead_rank", "hung_rank", "rank_exited")

    def seen() -> list[Alert]:
        return [a for a in reader.alerts(run_id, count=100) if a.rule in liveness]

    wait_for(lambda: [a for a in seen() if a.status == "resolved"], timeout=30)
    alerts = seen()  # (rank 0's loss on its own random data may spike: not judged here)
    assert sorted((a.rule, a.rank, a.status) for a in alerts) == [
        ("rank_exited", 1, "firing"),
        ("rank_exited", 1, "resolved"),  # the run finished
    ]
    exited = next(a for a in alerts if a.status == "firing")
    assert "while the run continues" in exited.summary
    assert exited.severity == "warning"
    assert EXIT_GRACE_S <= exited.raised_at - exited.t <= EXIT_GRACE_S + 4.0  # the grace


def test_a_data_loader_hang_names_its_rank_within_seconds_with_its_stack(
    live_settings: Settings, reader: MetricsReader, run_id: str, tmp_path: Path
) -> None:
    # 600 steps: the hang comes ~4 s in, when the SDK (one send a second) has shown the
    # run's rhythm; before that the hung threshold is the 120 s cap.
    codes = run_ranks(live_settings, run_id, 600, "data_hang", 14.0, tmp_path)
    assert codes == [0, 0], [p.read_text()[-2000:] for p in tmp_path.glob("*.log")]
    hang_t = next(
        json.loads(line)["hang_t"]
        for line in (tmp_path / "rank1.log").read_text().splitlines()
        if line.startswith('{"hang_t"')
    )
    alerts = wait_for(
        lambda: [
            a
            for a in reader.alerts(run_id, count=100)
            if a.rule == "hung_rank" and a.status == "firing"
        ],
        timeout=30,
    )
    assert len(alerts) == 1  # one incident
    hung = alerts[0]
    delay = hung.raised_at - hang_t
    assert hung.rank == 1, hung.summary
    assert 4.5 <= delay <= 8.0, (delay, hung.summary)  # the 5 s floor + heartbeat + pipeline
    assert hung.evidence["origin_phase"] == 1.0  # data
    assert hung.evidence["phase_rank0"] == 3.0  # backward: waiting in the all-reduce
    assert "origin rank 1 in data" in hung.summary
    assert hung.description.startswith("rank 1 (data):")
    assert "in load_batch" in hung.description and "time.sleep(block_s)" in hung.description
    assert len(hung.description) <= 4096
    # the hang ends when the rank steps again: the alert resolves
    assert wait_for(
        lambda: [
            a
            for a in reader.alerts(run_id, count=100)
            if a.rule == "hung_rank" and a.status == "resolved"
        ],
        timeout=30,
    )
    # and the CLI shows the stack under the alert
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepstream.cli",
            "alerts",
            "--run",
            run_id,
            "--redis-url",
            live_settings.redis_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    assert "hung_rank" in shown.stdout and "in load_batch" in shown.stdout


@pytest.fixture(autouse=True)
def _key_prefix_env(live_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads the stack's key prefix from the environment."""
    monkeypatch.setenv("STEPSTREAM_KEY_PREFIX", live_settings.key_prefix)
