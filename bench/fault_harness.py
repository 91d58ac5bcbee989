"""Fault injection around a real stack: tansu, Redis, processor and sink workers as child
processes (each stopped by pid), real gloo training ranks instrumented with the public SDK,
and the read-back through the public reader. Shared by tests/integration/test_faults.py
(short faults, CI) and bench/faults.py (the long versions).

Every rank logs ``counter = step`` and ``loss`` each step (rank 1 logs a NaN loss once,
which must fire one alert) and times each ``monitor.log`` call; the verdict counts steps
missing from ``MetricsReader.series`` and firing transitions repeated per fingerprint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from bench.tls_proxy import Pki, TlsProxy
from query.reader import MetricsReader
from sinks.local_redis import LocalRedis
from stepstream.admin import ensure_topics
from stepstream.contract import decode_batch
from stepstream.errors import ContractError
from stepstream.settings import Settings
from stepstream.stack import find_broker_binary, free_port, settings_env, worker_command
from stepstream.streaming import ready_file
from stepstream.topics import Topics

ROOT = Path(__file__).resolve().parents[1]
RANK_SCRIPT = Path(__file__).with_name("fault_rank.py")
PUBLISHER_CLIENT_ID = b"stepstream-publisher"


class FaultRelay:
    """A loopback TCP relay in front of the broker that adds `latency_s` to every chunk
    and resets (RST) connections every `reset_every_s`, for Kafka clients whose client id
    starts with `target` (read from the first request header); other clients pass clean.
    """

    def __init__(
        self,
        target_port: int,
        latency_s: float = 0.02,
        reset_every_s: float = 3.0,
        target: bytes = PUBLISHER_CLIENT_ID,
    ) -> None:
        self.target_port = target_port
        self.latency_s = latency_s
        self.reset_every_s = reset_every_s
        self.target = target
        self.port = 0
        self.active = False
        """Faults apply only while active; otherwise the relay passes bytes untouched."""
        self.resets = 0
        self.faulty_connections = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> FaultRelay:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("fault relay did not listen")
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopping.set)
        thread.join(10)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            # Request header: size(4) api_key(2) api_version(2) correlation(4) client_id
            head = await client_r.readexactly(14)
            (id_len,) = struct.unpack(">h", head[12:14])
            client_id = await client_r.readexactly(max(id_len, 0))
            faulty = client_id.startswith(self.target)
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            upstream_w.write(head + client_id)

            def delay() -> float:
                return self.latency_s if faulty and self.active else 0.0

            pipes = [
                asyncio.ensure_future(_pipe(client_r, upstream_w, delay)),
                asyncio.ensure_future(_pipe(upstream_r, client_w, delay)),
            ]
            if faulty:
                self.faulty_connections += 1
            timeout = self.reset_every_s if faulty and self.reset_every_s > 0 else None
            reset = False
            while True:
                done, _ = await asyncio.wait(
                    pipes, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if done or self.active:
                    reset = not done
                    break
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            if reset:  # RST to both sides, mid-conversation
                self.resets += 1
                for writer in (client_w, upstream_w):
                    sock = writer.get_extra_info("socket")
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                            )
                    writer.transport.abort()
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    writer.close()
            self._tasks.discard(task)


async def _pipe(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay: Callable[[], float]
) -> None:
    while data := await source.read(65536):
        if wait := delay():
            await asyncio.sleep(wait)
        sink.write(data)
        await sink.drain()


@dataclass
class Child:
    """A child process of the harness, stopped by its pid."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a paused process cannot exit
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def deliver(self, sig: int) -> None:
        """Send the process the OS signal `sig` (SIGSTOP, SIGCONT)."""
        os.kill(self.proc.pid, sig)


@dataclass
class FaultStack:
    """tansu + Redis + processor + sink on loopback, with faults to inject."""

    root: Path
    tls: Pki | None = None
    relay: bool = False
    relay_latency_s: float = 0.02
    relay_reset_every_s: float = 3.0
    session_timeout_s: float = 4.0
    settings: Settings = field(init=False)
    children: dict[str, Child] = field(default_factory=dict)
    redis: LocalRedis | None = None
    fault_relay: FaultRelay | None = None
    tls_proxy: TlsProxy | None = None
    current_run: str | None = None
    """The run `scenario` is training now: what `restart_broker` measures before the kill."""
    unread: Unread | None = None
    """What the broker held unread of `current_run` at the last kill (`restart_broker`);
    None where the measurement failed (the kill goes on)."""

    @property
    def cwd(self) -> Path:
        """The working directory of every child: must stay empty."""
        return self.root / "cwd"

    def start(self) -> FaultStack:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> FaultStack:
        self.cwd.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.kafka_port = free_port()
        front = self.kafka_port
        if self.tls is not None:
            self.tls_proxy = TlsProxy(self.kafka_port, self.tls.server_cert, self.tls.server_key)
            front = self.tls_proxy.start().port
        if self.relay:
            self.fault_relay = FaultRelay(
                self.kafka_port, self.relay_latency_s, self.relay_reset_every_s
            )
            front = self.fault_relay.start().port
        self.front_port = front
        self.start_broker()
        self.redis = LocalRedis(persist=True).start()
        security: dict[str, object] = {}
        if self.tls is not None:
            security = {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": str(self.tls.ca)}
        self.settings = Settings(
            kafka_bootstrap=f"127.0.0.1:{front}",
            redis_url=self.redis.url,
            state_dir=self.root / "state",
            topic_prefix=f"f{uuid.uuid4().hex[:8]}",
            session_timeout_s=self.session_timeout_s,
            heartbeat_interval_s=0.5,
            system_interval_s=0,
            kafka_delivery_timeout_s=3.0,
            **security,  # type: ignore[arg-type]
        )
        ensure_topics(self.settings)
        for stage in ("processor", "sink"):
            self.start_worker(stage)
        self.wait_ready(("processor", "sink"))
        return self

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.root / "logs" / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
            )
        child = Child(name, proc, log)
        self.children[name] = child
        return child

    def start_broker(self) -> None:
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        self._spawn(
            "broker",
            [
                find_broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.front_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.kafka_port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("tansu did not listen")

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("STEPSTREAM_")}
        return {**base, **settings_env(self.settings), "PYTHONPATH": str(ROOT)}

    def marker(self, stage: str) -> Path:
        return ready_file(self.settings, Topics(self.settings.topic_prefix).group(stage))

    def start_worker(self, stage: str) -> None:
        self.marker(stage).unlink(missing_ok=True)
        self._spawn(stage, worker_command(stage), self.env())

    def wait_ready(self, stages: tuple[str, ...], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.marker(s).exists() for s in stages):
            for s in stages:
                if not self.children[s].alive():
                    raise RuntimeError(f"{s} exited: {self.children[s].log.read_text()[-1500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready within {timeout}s")
            time.sleep(0.1)

    # -- faults ---------------------------------------------------------------------

    def pause_broker(self, seconds: float) -> None:
        broker = self.children["broker"]
        broker.deliver(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            broker.deliver(signal.SIGCONT)

    def restart_broker(self, down_s: float = 1.0) -> None:
        """Kill tansu and start a new one on the same port: memory storage, so topics,
        records and group offsets are gone; topics are created again (as `stepstream
        worker` does at start). With a `current_run`, what the broker holds of it that
        the pipeline has not read is measured just before the kill (`unread`)."""
        broker = self.children["broker"]
        try:
            if self.current_run is not None:
                self.unread = measure_unread(self.settings, self.current_run, broker.kill)
        except Exception as exc:  # the fault goes on; the verdict shows no measurement
            print(f"unread at the kill not measured: {exc!r}", file=sys.stderr)
        finally:
            broker.kill()  # at once, unless measure_unread did
        time.sleep(down_s)
        self.start_broker()
        ensure_topics(self.settings)

    def kill_worker(self, stage: str, down_s: float = 1.0) -> None:
        """SIGKILL a worker, then start it again (what a supervisor does)."""
        self.children[stage].kill()
        time.sleep(down_s)
        self.start_worker(stage)

    def restart_redis(self, down_s: float = 2.0, persist: bool = True) -> None:
        """Kill Redis and start it again on the same port: with its append-only file (a
        production Redis), or with `persist` off empty, as the embedded stack's Redis
        (``--save "" --appendonly no``) comes back."""
        assert self.redis is not None
        self.redis.kill()
        time.sleep(down_s)
        self.redis.persist = persist
        try:
            self.redis.start()
        finally:
            self.redis.persist = True

    def stop(self) -> None:
        for name in ("sink", "processor", "broker"):
            child = self.children.get(name)
            if child is not None:
                child.stop()
        for extra in (self.fault_relay, self.tls_proxy):
            if extra is not None:
                extra.stop()
        if self.redis is not None:
            self.redis.close()


@dataclass
class Training:
    """`world` gloo ranks of bench/fault_rank.py, started at once."""

    stack: FaultStack
    run: str
    world: int = 2
    steps: int = 150
    step_s: float = 0.05
    nan_step: int = 20
    ranks: list[Child] = field(default_factory=list)

    def start(self) -> Training:
        port = free_port()
        out = self.stack.root / "ranks" / self.run
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        for rank in range(self.world):
            env = {
                **self.stack.env(),
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(self.world),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "STEPSTREAM_SPOOL_DIR": str(out / "spool"),
            }
            cmd = [
                sys.executable,
                str(RANK_SCRIPT),
                self.run,
                str(self.steps),
                str(self.step_s),
                str(self.nan_step),
                str(out / f"rank{rank}.json"),
            ]
            self.ranks.append(self.stack._spawn(f"{self.run}-rank{rank}", cmd, env))
        return self

    def wait_started(self, timeout: float = 60.0) -> None:
        """Until every rank logged its first step (torch imported, group formed)."""
        deadline = time.monotonic() + timeout
        while not all((self.out / f"rank{r}.started").exists() for r in range(self.world)):
            if time.monotonic() > deadline:
                raise RuntimeError("ranks did not start")
            time.sleep(0.05)

    def wait(self, timeout: float = 240.0) -> list[dict[str, float]]:
        deadline = time.monotonic() + timeout
        try:
            for child in self.ranks:
                child.proc.wait(max(1.0, deadline - time.monotonic()))
        finally:
            for child in self.ranks:
                child.stop()
        reports = []
        for rank, child in enumerate(self.ranks):
            path = self.out / f"rank{rank}.json"
            if child.proc.returncode != 0 or not path.exists():
                raise RuntimeError(f"rank {rank} failed: {child.log.read_text()[-2000:]}")
            reports.append(json.loads(path.read_text()))
        return reports


@dataclass
class Verdict:
    """What a fault cost, read back through the public reader."""

    fault: str
    lost: int
    wrong: int
    duplicate_alerts: int
    alerts_fired: int
    max_log_ms: float
    unflushed_ranks: int
    seconds: float
    unread: Unread | None = None
    """What the broker held unread of the run at a broker kill (none for other faults)."""

    @property
    def unread_at_kill(self) -> int | None:
        """Points of the counted series the broker held unread at the kill: the most a
        kill of the memory-only broker can lose (`Unread`); None without a kill."""
        return None if self.unread is None else self.unread.steps

    def row(self) -> str:
        unread = "-" if self.unread_at_kill is None else str(self.unread_at_kill)
        return (
            f"{self.fault:<22} {self.lost:>5} {unread:>6} {self.wrong:>5} "
            f"{self.duplicate_alerts:>9} {self.alerts_fired:>6} {self.max_log_ms:>11.2f} "
            f"{self.unflushed_ranks:>9} {self.seconds:>7.1f}"
        )


HEADER = (
    f"{'fault':<22} {'lost':>5} {'unread':>6} {'wrong':>5} {'dup_alert':>9} {'fired':>6} "
    f"{'max_log_ms':>11} {'unflushed':>9} {'seconds':>7}"
)


def read_back(
    settings: Settings, run: str, world: int, steps: int, timeout: float = 60.0
) -> tuple[int, int, int, int]:
    """(lost, wrong, duplicate firing alerts, firing alerts) once the series are complete
    or `timeout` passed; an alert must have fired for the NaN."""
    deadline = time.monotonic() + timeout
    with MetricsReader.from_url(settings.redis_url, settings.key_prefix) as reader:
        while True:
            lost = wrong = 0
            for rank in range(world):
                try:
                    points = reader.series(run, "counter", rank=rank).points
                except Exception:  # Redis restarting: read again
                    points = []
                got = {p.step: p.value for p in points}
                lost += sum(1 for s in range(steps) if s not in got)
                wrong += sum(1 for s, v in got.items() if v != float(s))
            try:
                firing = [a for a in reader.alerts(run, 10_000) if a.status == "firing"]
            except Exception:
                firing = []
            if (lost == 0 and firing) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # alerts that arrive late would be duplicates too: give them a moment
        time.sleep(2.0)
        firing = [a for a in reader.alerts(run, 10_000) if a.status == "firing"]
    return lost, wrong, duplicate_firings(firing_and_resolved(settings, run)), len(firing)


def firing_and_resolved(settings: Settings, run: str) -> list[tuple[str, str]]:
    """(fingerprint, status) of every stored transition of `run`, oldest first."""
    with MetricsReader.from_url(settings.redis_url, settings.key_prefix) as reader:
        return [(a.fingerprint, a.status) for a in reader.alerts(run, 10_000)]


def duplicate_firings(transitions: list[tuple[str, str]]) -> int:
    """Firing transitions of a fingerprint that was already firing (a page sent twice)."""
    state: dict[str, str] = {}
    duplicates = 0
    for fingerprint, status in transitions:
        if status == "firing" and state.get(fingerprint) == "firing":
            duplicates += 1
        state[fingerprint] = status
    return duplicates


SERIES = "counter"
"""The series every rank logs as ``counter = step``: what `read_back` counts as lost."""


@dataclass(frozen=True)
class Unread:
    """What the broker held of one run that the pipeline had not read, measured just
    before a kill: the (rank, step) points of the `SERIES` in telemetry messages at or
    past the processor group's committed offsets, and in validated messages at or past
    the sink group's. The groups commit after they handled a batch, on an interval, so
    this is an upper bound of what a kill of the memory-only broker can lose (points read
    but not yet committed are counted, and reach Redis all the same)."""

    steps: int
    """Distinct (rank, step) points of the run in either part: the bound."""
    telemetry: int
    """Points in telemetry messages past the processor group's committed offsets."""
    validated: int
    """Points in validated messages past the sink group's committed offsets."""
    gap_ms: float
    """From the last request for the end offsets (read up to them) to the kill: what the
    broker acknowledged in this gap is not counted."""
    points: frozenset[tuple[int, int]] = field(default=frozenset(), repr=False)
    """The (rank, step) points counted in `steps`."""


def unread_points(
    run: str,
    committed: Mapping[int, int],
    messages: Iterable[tuple[int, int, bytes | None]],
    series: str = SERIES,
) -> set[tuple[int, int]]:
    """(rank, step) of the `series` records of `run` in those `messages` (partition,
    offset, value) at or past their partition's `committed` offset (all of a partition
    without one). Values are decoded with the contract's `decode_batch`, as the processor
    and the sink do; a message it refuses holds nothing the sink would store."""
    points: set[tuple[int, int]] = set()
    for partition, offset, value in messages:
        if offset < committed.get(partition, 0):
            continue
        try:
            batch = decode_batch(value)
        except ContractError:
            continue
        if batch.run != run:
            continue
        for record in batch.records:
            if record.step is not None and series in record.values:
                points.add((batch.rank, record.step))
    return points


def committed_offsets(
    admin: KafkaAdminClient, group: str, parts: list[TopicPartition]
) -> dict[int, int]:
    """The offsets `group` committed in `parts` (all of one topic), by partition; a
    partition without a commit is left out."""
    found = admin.list_group_offsets({group: parts})[group]
    return {tp.partition: meta.offset for tp, meta in found.items() if meta.offset >= 0}


def measure_unread(
    settings: Settings, run: str, kill: Callable[[], None], timeout_s: float = 10.0
) -> Unread:
    """Read, with a client of its own, every message of the telemetry and validated
    topics past the processor and sink groups' committed offsets up to the end offsets,
    until the end offsets stop moving, then call `kill` at once; count what of `run`
    was unread (`Unread`)."""
    topics = Topics(settings.topic_prefix)
    groups = {topics.telemetry: topics.group("processor"), topics.validated: topics.group("sink")}
    common: dict[str, object] = {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "client_id": "stepstream-faults-unread",
        **settings.kafka_client_config(),
    }
    admin = KafkaAdminClient(**common)
    consumer = KafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,  # tansu holds a fetch for all of it
        **common,
    )
    try:
        parts = [
            TopicPartition(topic, p)
            for topic in groups
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(parts)
        committed = {
            topic: committed_offsets(admin, group, [tp for tp in parts if tp.topic == topic])
            for topic, group in groups.items()
        }
        starts = consumer.beginning_offsets(parts)
        for tp in parts:
            consumer.seek(tp, max(committed[tp.topic].get(tp.partition, 0), starts[tp]))
        got: dict[str, list[tuple[int, int, bytes | None]]] = {topic: [] for topic in groups}
        deadline = time.monotonic() + timeout_s
        ends: dict[TopicPartition, int] = {}
        while True:
            asked = time.monotonic()
            now = consumer.end_offsets(parts)
            if now == ends or time.monotonic() > deadline:
                kill()
                gap_ms = (time.monotonic() - asked) * 1000
                break
            ends = now
            while any(consumer.position(tp) < ends[tp] for tp in parts):
                if time.monotonic() > deadline:
                    break
                for tp, records in consumer.poll(timeout_ms=100).items():
                    got[tp.topic].extend((r.partition, r.offset, r.value) for r in records)
    finally:
        consumer.close()
        admin.close()
    per_topic = {topic: unread_points(run, committed[topic], got[topic]) for topic in groups}
    return Unread(
        steps=len(per_topic[topics.telemetry] | per_topic[topics.validated]),
        telemetry=len(per_topic[topics.telemetry]),
        validated=len(per_topic[topics.validated]),
        gap_ms=gap_ms,
        points=frozenset(per_topic[topics.telemetry] | per_topic[topics.validated]),
    )


def summary(verdicts: list[Verdict]) -> str:
    return (
        f"lost={sum(v.lost for v in verdicts)} "
        f"duplicate_alerts={sum(v.duplicate_alerts for v in verdicts)} "
        f"max_log_stall_ms={max(v.max_log_ms for v in verdicts):.2f}"
    )


def scenario(
    stack: FaultStack,
    name: str,
    inject: Callable[[], None],
    steps: int,
    step_s: float = 0.05,
    lead_s: float = 1.5,
    world: int = 2,
) -> Verdict:
    """Train `world` ranks for `steps` steps, call `inject` `lead_s` after they started,
    and read back what reached Redis."""
    started = time.monotonic()
    run = f"{name.split()[0]}-{uuid.uuid4().hex[:6]}"
    training = Training(stack, run, world=world, steps=steps, step_s=step_s, nan_step=10)
    training.start()
    stack.current_run, stack.unread = run, None
    try:
        training.wait_started()
        time.sleep(lead_s)
        inject()
    finally:
        stack.current_run = None
        reports = training.wait()
    lost, wrong, duplicates, fired = read_back(stack.settings, run, world, steps)
    return Verdict(
        fault=name,
        lost=lost,
        wrong=wrong,
        duplicate_alerts=duplicates,
        alerts_fired=fired,
        max_log_ms=max(r["max_log_ms"] for r in reports),
        unflushed_ranks=sum(1 for r in reports if not r["flushed"]),
        seconds=time.monotonic() - started,
        unread=stack.unread,
    )


def faults(
    stack: FaultStack, pause_s: float, relay_s: float, memory_redis: bool = False
) -> dict[str, Callable[[], None]]:
    """Every fault, by name, with the recovery a supervisor would do. `memory_redis` adds
    a Redis restart that comes back empty (the embedded stack's Redis): it loses by design
    everything stored before, so it is reported apart."""

    def relay() -> None:
        assert stack.fault_relay is not None
        stack.fault_relay.active = True
        try:
            time.sleep(relay_s)
        finally:
            stack.fault_relay.active = False

    def worker(stage: str) -> Callable[[], None]:
        def kill() -> None:
            stack.kill_worker(stage)
            stack.wait_ready((stage,))

        return kill

    def broker_restart() -> None:
        stack.restart_broker()
        stack.wait_ready(("processor", "sink"), timeout=90)

    return {
        f"relay latency+resets {relay_s:g}s": relay,
        "sink SIGKILL": worker("sink"),
        "processor SIGKILL": worker("processor"),
        "redis kill+restart": stack.restart_redis,
        f"broker SIGSTOP {pause_s:g}s": lambda: stack.pause_broker(pause_s),
        "broker kill+restart": broker_restart,
    } | ({MEMORY_REDIS: lambda: stack.restart_redis(persist=False)} if memory_redis else {})


MEMORY_REDIS = "redis restart, no AOF"
