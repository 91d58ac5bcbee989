"""Heartbeats, system metrics, the log handler, crash and SIGTERM hooks, settings."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from producers import system
from producers.identity import Identity
from producers.loghandler import LOG_LEVEL, ShippingHandler
from producers.periodic import HEARTBEAT_PID, HEARTBEAT_STATUS, HEARTBEAT_STEP, Ticker
from producers.publisher import PublisherStats
from stepstream.contract import RecordKind
from stepstream.settings import Settings

IDENT = Identity(run="r", rank=0, world=1, local_rank=0, node="n")
ROOT = Path(__file__).resolve().parents[2]


class NullProducer:
    """A Kafka producer that accepts everything and sends nothing."""

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        return None

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


class Queue:
    """Stands in for the publisher: keeps what would have been enqueued."""

    disabled = False

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self.stats = PublisherStats()

    def enqueue(self, step: Any, kind: Any, values: Any, text: Any = None) -> None:
        self.items.append((step, kind, values, text))


def test_heartbeat_and_counters() -> None:
    queue = Queue()
    ticker = Ticker(queue, lambda: 41, lambda: "running", 2.0, 0)  # type: ignore[arg-type]
    ticker.heartbeat()
    (step, kind, values, text), (_, kind2, counters, _) = queue.items
    assert (step, kind, text) == (41, RecordKind.HEARTBEAT, "running")
    assert values == {
        HEARTBEAT_STEP: 41.0,
        HEARTBEAT_PID: float(os.getpid()),
        HEARTBEAT_STATUS: 1.0,
    }
    assert kind2 == RecordKind.SYSTEM and "stepstream/dropped" in counters


def test_ticker_thread_runs_both_schedules() -> None:
    queue = Queue()

    class Fake:
        closed = False

        def sample(self) -> dict[str, float]:
            return {"sys/x": 1.0}

        def close(self) -> None:
            Fake.closed = True

    ticker = Ticker(queue, lambda: None, lambda: "starting", 0.05, 0.02, Fake)  # type: ignore[arg-type]
    ticker.start()
    threading.Event().wait(0.3)
    ticker.stop()
    kinds = [item[1] for item in queue.items]
    assert kinds.count(RecordKind.HEARTBEAT) >= 3
    assert sum(1 for item in queue.items if item[2] == {"sys/x": 1.0}) >= 6
    assert Fake.closed and ticker.sample_cost_s


def test_system_sample_names_and_rates() -> None:
    sampler = system.SystemSampler("/")
    first = sampler.sample()
    second = sampler.sample()
    sampler.close()
    for name in (
        system.PROC_CPU,
        system.HOST_CPU,
        system.PROC_RSS,
        system.PROC_FDS,
        system.HOST_MEM_USED,
        system.HOST_MEM_PCT,
        system.DISK_PCT,
    ):
        assert name in first, name
    assert system.NET_SENT not in first  # rates need two samples
    assert {system.NET_SENT, system.NET_RECV} <= set(second)
    assert second[system.PROC_RSS] > 10e6 and 0 <= second[system.HOST_MEM_PCT] <= 100
    # No GPU and no CUDA on this machine: those names are absent, nothing fails.
    assert not any(n.startswith(("gpu", "cuda/")) for n in second)


def test_nvml_absent_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    nvml = system.Nvml()
    assert not nvml.available and nvml.sample() == {}
    nvml.close()


def test_log_handler_ships_warnings_not_its_own_loggers() -> None:
    queue = Queue()
    handler = ShippingHandler(queue, lambda: 7)  # type: ignore[arg-type]
    logger = logging.getLogger("user.training")
    logger.addHandler(handler)
    try:
        logger.info("not shipped")
        logger.warning("loss spiked to %s", 9.5)
        logging.getLogger("kafka.conn").addHandler(handler)
        logging.getLogger("kafka.conn").error("broker away")
    finally:
        logger.removeHandler(handler)
        logging.getLogger("kafka.conn").removeHandler(handler)
    assert queue.items == [
        (7, RecordKind.LOG, {LOG_LEVEL: 30.0}, "WARNING user.training: loss spiked to 9.5")
    ]


def test_settings_argument_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().heartbeat_interval_s == 1.0 and Settings().system_interval_s == 1.0
    monkeypatch.setenv("STEPSTREAM_HEARTBEAT_INTERVAL_S", "0.5")
    monkeypatch.setenv("STEPSTREAM_SPOOL_DIR", "/tmp/x")
    assert Settings().heartbeat_interval_s == 0.5
    assert Settings().resolved_spool_dir() == Path("/tmp/x")
    assert Settings(heartbeat_interval_s=3).heartbeat_interval_s == 3.0


CHILD = textwrap.dedent(
    """
    import json, sys, time
    from producers.identity import Identity
    from producers.monitor import Monitor
    from stepstream.settings import Settings

    out = open(sys.argv[1], "a")

    class FileProducer:
        def send(self, topic, key, value):
            out.write(value.decode() + "\\n"); out.flush()
        def flush(self, timeout=None): pass
        def close(self, timeout=None): pass

    settings = Settings(spool_dir=sys.argv[2], flush_interval_s=5, heartbeat_interval_s=60,
                        system_interval_s=0)
    monitor = Monitor(Identity("crash", 0, 1, 0, "n"), settings, lambda s: FileProducer())
    monitor.log(3, loss=1.5)
    if sys.argv[3] == "raise":
        raise RuntimeError("boom in the training loop")
    print("ready", flush=True)
    time.sleep(30)
    """
)


def run_child(tmp_path: Path, mode: str) -> tuple[int, list[dict[str, Any]]]:
    out = tmp_path / "sent.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), str(tmp_path / "spool"), mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if mode == "sigterm":
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    records = [r for line in out.read_text().splitlines() for r in json.loads(line)["records"]]
    return code, records


def test_uncaught_exception_ships_its_traceback(tmp_path: Path) -> None:
    code, records = run_child(tmp_path, "raise")
    assert code == 1  # Python's own excepthook still ran after ours
    assert any(r["kind"] == "train" and r["values"] == {"loss": 1.5} for r in records)
    (crash,) = [r for r in records if r["kind"] == "log"]
    assert crash["values"] == {LOG_LEVEL: 50.0} and crash["step"] == 3
    assert "RuntimeError: boom in the training loop" in crash["text"]
    assert "Traceback" in crash["text"]
    beats = [r for r in records if r["kind"] == "heartbeat"]
    assert beats[-1]["text"] == "crashed"


def test_sigterm_flushes_then_dies_by_the_signal(tmp_path: Path) -> None:
    code, records = run_child(tmp_path, "sigterm")
    assert code == -signal.SIGTERM
    assert any(r["kind"] == "train" and r["values"] == {"loss": 1.5} for r in records)


def test_nvml_values_are_named_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    fake = SimpleNamespace(
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=50 + h),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=1000, total=8000),
        nvmlDeviceGetTemperature=lambda h, kind: 60,
        nvmlDeviceGetPowerUsage=lambda h: 250_000,  # milliwatts
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    nvml = system.Nvml()
    values = nvml.sample()
    nvml.close()
    assert values["gpu1/util_pct"] == 51.0 and values["gpu0/power_w"] == 250.0
    assert values["gpu0/mem_used_bytes"] == 1000.0 and values["gpu1/mem_total_bytes"] == 8000.0
    assert values["gpu0/temp_c"] == 60.0 and len(values) == 12
    assert values["gpu0/mem_used_pct"] == 12.5  # what resource_pressure reads


def test_nvml_without_driver_is_skipped() -> None:
    # nvidia-ml-py may be installed (the gpu extra) on a machine without a driver.
    nvml = system.Nvml()
    assert nvml.sample() == {} or nvml.available
    nvml.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_worker_starts_no_thread_and_no_producer(tmp_path: Path) -> None:
    from producers.monitor import Monitor

    built: list[int] = []

    def factory(settings: Settings) -> NullProducer:
        built.append(os.getpid())
        return NullProducer()

    settings = Settings(spool_dir=tmp_path, system_interval_s=0.05, heartbeat_interval_s=0.05)
    monitor = Monitor(IDENT, settings, factory)
    monitor.log(0, x=1.0)
    assert monitor.flush(5)
    pid = os.fork()
    if pid == 0:  # a DataLoader worker: everything must stay silent and thread-free
        monitor.log(1, x=2.0)
        logging.getLogger("user").warning("from the worker")
        monitor._ticker.heartbeat()
        ok = (
            threading.active_count() == 1
            and monitor._publisher.disabled
            and not monitor._publisher._queue
            and not monitor.flush(0.1)
            and os.getpid() not in built
        )
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    monitor.close(2)
    assert os.waitstatus_to_exitcode(status) == 0
    assert built == [os.getpid()]


def test_log_reads_cpu_scalar_tensors_at_once_and_leaves_the_rest(tmp_path: Path) -> None:
    """A CPU scalar tensor is read by log() itself (held in the queue until the flush,
    the step's tensors slowed the training thread); anything else is queued as given
    for the publisher thread to read (a GPU tensor there, without a device sync)."""
    import torch

    from producers.monitor import Monitor

    settings = Settings(spool_dir=tmp_path, system_interval_s=0, capture_logs=False)
    monitor = Monitor(IDENT, settings, lambda s: NullProducer())
    try:
        vector = torch.ones(3)
        queue = monitor._publisher._queue
        monitor.log(0, loss=torch.tensor(0.25), grad=torch.tensor([2.0]), v=vector, x=1)
        _, step, _, values, _ = queue[-1]
        assert step == 0
        assert values["loss"] == 0.25 and type(values["loss"]) is float
        assert values["grad"] == 2.0 and type(values["grad"]) is float
        assert values["v"] is vector and values["x"] == 1
    finally:
        monitor.close(2)
