"""A real multi-node job across hosts made of network namespaces (tests/integration/netns.py):

- ``svc``: tansu and Redis; ``proc-a`` / ``proc-b``: a processor and a sink worker each;
- ``train-a`` / ``train-b``: ``torchrun --nnodes 2 --nproc-per-node 2`` with gloo over the
  training network (``eth1``), telemetry over the other (``eth0``); train-b's host name is
  ``host-b`` and its job sets ``STEPSTREAM_NODE=train-b`` (the override), train-a's ranks
  report their host name.

One job and one topology serve every scenario, in order (module fixture): node identity
and the nodes view; a 20 s telemetry partition of train-b; proc-b cut off; the seq
accounting of all that; then train-b lost and back. Reads go through the public reader,
CLI and HTTP API from the services host.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.fault_harness import Child
from query.reader import MetricsReader
from stepstream import vocabulary as vocab
from stepstream.admin import ensure_topics
from stepstream.contract import Alert, series_key
from stepstream.settings import Settings
from stepstream.stack import find_broker_binary, find_redis_binary, settings_env, worker_command
from stepstream.streaming import ready_file
from stepstream.topics import Topics

from .conftest import wait_for
from .netns import Topology, kill_tree, unavailable

WHY_NOT = unavailable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(WHY_NOT is not None, reason=f"multi-host tests: {WHY_NOT}"),
]

ROOT = Path(__file__).resolve().parents[2]
RANK_SCRIPT = Path(__file__).with_name("multinode_rank.py")
REJOIN_SCRIPT = Path(__file__).with_name("multinode_rejoin.py")
HOSTS = {
    "svc": ("services", False),
    "proc-a": ("proc-a", False),
    "proc-b": ("proc-b", False),
    "train-a": ("train-a", True),
    "train-b": ("host-b", True),
}
PARTITIONS = 4
STEP_S = 0.1
PARTITION_S = 20.0
LOG_BOUND_MS = 50.0


def run_covering_partitions(partitions: int, world: int) -> str:
    """A run id whose ranks' keys land on every partition, so that each processor worker
    holds some of the job's series (kafka-python's default partitioner: murmur2)."""
    from kafka.partitioner.default import murmur2

    while True:
        run = f"mn-{uuid.uuid4().hex[:8]}"
        used = {(murmur2(series_key(run, r)) & 0x7FFFFFFF) % partitions for r in range(world)}
        if len(used) == min(partitions, world):
            return run


@dataclass
class Cluster:
    topo: Topology
    settings: Settings
    run: str
    control: Path
    agents: dict[str, Child] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)

    def reader(self) -> MetricsReader:
        return MetricsReader.from_url(self.settings.redis_url, self.settings.key_prefix)

    def alerts(self) -> list[Alert]:
        with self.reader() as reader:
            return reader.alerts(self.run, 10_000)

    def history(self) -> str:
        """Every alert transition of the run, stamped in seconds since the module's first
        fault, with the faults' marks: what a failure message needs to be read."""
        origin = self.marks.get("cut", 0.0)
        marks = {k: round(v - origin, 1) if v > 1e9 else v for k, v in self.marks.items()}
        rows = [
            f"{a.raised_at - origin:+.1f} {a.rule}@{a.rank} {a.status} "
            f"{a.labels.get(vocab.NODE_LABEL, '')} {a.suppressed_by or ''}"
            for a in self.alerts()
        ]
        return f"marks {marks}; transitions: " + "; ".join(rows)

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("STEPSTREAM_")}
        return {
            **base,
            **settings_env(self.settings),
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            **extra,
        }

    def steps_stored(self, rank: int, metric: str = "counter") -> list[tuple[int, float]]:
        """(step, event time) of every stored point of `rank`'s series, by step."""
        with self.reader() as reader:
            points = reader.series_by_time(self.run, metric, rank).points
        return [(p.step, p.x) for p in points if p.step is not None]


def _listening(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("multinode")
    topo = Topology(root)
    try:
        topo.up(HOSTS)
        svc = topo.hosts["svc"].ip
        with topo.entered("svc"):  # the test reads as a client on the services host
            yield from _start(topo, root, svc)
    finally:
        topo.down()


def _start(topo: Topology, root: Path, svc: str) -> Iterator[Cluster]:
    topo.spawn(
        "svc",
        "broker",
        [
            find_broker_binary(),
            "broker",
            "--listener-url", f"tcp://{svc}:9092",
            "--advertised-listener-url", f"tcp://{svc}:9092",
            "--storage-engine", "memory://tansu/",
        ],
    )  # fmt: skip
    (root / "redis").mkdir()
    topo.spawn(
        "svc",
        "redis",
        [
            find_redis_binary(), "--bind", svc, "--port", "6379", "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--dir", str(root / "redis"),
        ],
    )  # fmt: skip
    _listening(svc, 9092)
    _listening(svc, 6379)
    settings = Settings(
        kafka_bootstrap=f"{svc}:9092",
        redis_url=f"redis://{svc}:6379/0",
        state_dir=root / "state",
        topic_prefix=f"m{uuid.uuid4().hex[:8]}",
        partitions=PARTITIONS,
        session_timeout_s=4.0,
        heartbeat_interval_s=0.5,
        system_interval_s=1.0,
        kafka_delivery_timeout_s=3.0,
        # An alert whose clear was owed by the worker that lost the run's partition (the
        # processor cut) is restored from Redis by the new owner and resolves only after
        # this timeout; short here so such a leftover clears before the next fault.
        resolve_timeout_s=12.0,
    )
    ensure_topics(settings)
    run = run_covering_partitions(PARTITIONS, 4)
    control = root / "control"
    control.mkdir()
    c = Cluster(topo, settings, run, control)
    # The job first: torch starts while the workers join (records wait in the topics).
    for node_rank, host in enumerate(("train-a", "train-b")):
        extra = {
            "GLOO_SOCKET_IFNAME": "eth1",
            "STEPSTREAM_SPOOL_DIR": str(root / f"spool-{host}"),
        }
        if host == "train-b":
            extra["STEPSTREAM_NODE"] = "train-b"  # the override; its host name is host-b
        c.agents[host] = topo.spawn(
            host,
            f"torchrun-{host}",
            [
                sys.executable, "-m", "torch.distributed.run",
                "--nnodes", "2", "--nproc-per-node", "2", "--node-rank", str(node_rank),
                "--master-addr", topo.hosts["train-a"].training_ip, "--master-port", "29500",
                "--rdzv-id", run,
                str(RANK_SCRIPT), str(control), str(STEP_S),
            ],
            c.env(**extra),
        )  # fmt: skip
    markers = []
    for host in ("proc-a", "proc-b"):
        state = root / host
        worker_settings = settings.model_copy(update={"state_dir": state})
        for stage in ("processor", "sink"):
            topo.spawn(
                host,
                f"{stage}-{host}",
                worker_command(stage),
                c.env(STEPSTREAM_STATE_DIR=str(state)),
            )
            markers.append(ready_file(worker_settings, Topics(settings.topic_prefix).group(stage)))
    wait_for(lambda: all(m.exists() for m in markers), timeout=90)
    wait_for(lambda: all((control / f"rank{r}.started").exists() for r in range(4)), 90)
    try:
        yield c
    finally:
        (control / "stop").touch()
        for agent in c.agents.values():
            kill_tree(agent)


def test_node_identity_and_ranks_grouped_by_node(cluster: Cluster) -> None:
    from fastapi.testclient import TestClient

    from query.http_api import create_api
    from query.nodes import run_nodes

    started = json.loads((cluster.control / "rank0.started").read_text())
    assert started["run"] == cluster.run  # torchrun's --rdzv-id

    def grouped() -> list[object] | None:
        with cluster.reader() as reader:
            rows = run_nodes(reader, cluster.run)
        ok = [(r.node, r.ranks) for r in rows] == [("train-a", [0, 1]), ("train-b", [2, 3])]
        ok = ok and all(
            "sys/host_cpu_pct" in r.system and "sys/proc_rss_bytes" in r.system for r in rows
        )
        return rows if ok else None  # type: ignore[return-value]

    rows = wait_for(grouped, timeout=30)
    assert [r.ranks for r in rows] == [[0, 1], [2, 3]]  # type: ignore[attr-defined]

    out = subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "query", "--run", cluster.run, "--nodes",
         "--json", "--redis-url", cluster.settings.redis_url],
        capture_output=True, text=True, timeout=60, env=cluster.env(), cwd=cluster.topo.root,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    assert {n["node"]: n["ranks"] for n in cli} == {"train-a": [0, 1], "train-b": [2, 3]}
    assert all(n["system"]["sys/host_mem_pct"] > 0 for n in cli)
    assert "host-b" not in out.stdout  # the override beat the host name

    api = create_api(cluster.reader)
    with TestClient(api) as client:
        body = client.get(f"/runs/{cluster.run}/nodes").json()
    assert {n["node"]: n["ranks"] for n in body} == {"train-a": [0, 1], "train-b": [2, 3]}
    assert all(n["alive"] == 2 for n in body)
    print(f"\nnodes: {out.stdout.strip()[:400]}")


def test_telemetry_partition_of_a_training_host_loses_nothing(cluster: Cluster) -> None:
    """train-b cannot reach the broker for 20 s while gloo goes on over the training
    network: its ranks spool, and on heal replay in order with their event times."""
    steps_before = len(cluster.steps_stored(0))
    cut = time.time()
    cluster.topo.cut("train-b")
    cut_done = time.time()
    try:
        time.sleep(2.0)
        (cluster.control / "nan").touch()  # rank 2 logs a NaN loss inside the partition
        # training goes on over the training network: train-a's ranks keep stepping
        wait_for(lambda: len(cluster.steps_stored(0)) > steps_before + 50, timeout=30)
        time.sleep(max(0.0, cut + PARTITION_S - time.time()))
        # nothing logged after the cut got through; what was logged before it may still
        # land (up to the SDK's 1 s hold plus the pipeline), so count by event time
        late = [(s, t) for s, t in cluster.steps_stored(2) if t > cut_done]
        assert late == [], late[:5]
    finally:
        cluster.topo.heal("train-b")
    healed = time.time()
    cluster.marks.update(cut=cut, healed=healed)
    nan = json.loads((cluster.control / "nan.json").read_text())
    assert cut < nan["t"] < healed

    def nan_alert() -> Alert | None:
        return next(
            (a for a in cluster.alerts() if a.rule == "nonfinite" and a.status == "firing"), None
        )

    alert = wait_for(nan_alert, timeout=60)
    # computed on the replayed records, with their event time and step
    assert alert.rank == 2 and alert.step == nan["step"]
    assert abs(alert.t - nan["t"]) < 1.0
    assert alert.raised_at >= healed - 1.0
    for rank in (2, 3):
        points = wait_for(
            lambda r=rank: (p := cluster.steps_stored(r)) and p[-1][1] > healed and p, 60
        )
        steps = [s for s, _ in points]
        assert steps == sorted(steps) == list(range(steps[0], steps[0] + len(steps)))
        times = [t for _, t in points]
        assert times == sorted(times)  # event times, in order
        inside = [t for t in times if cut + 1 < t < healed - 1]
        assert len(inside) > 0.5 * (healed - cut - 2) / STEP_S, len(inside)
    # the processor saw train-b's node go silent, then come back
    lost = [a for a in cluster.alerts() if a.rule == vocab.NODE_LOST]
    assert [a.status for a in lost][:1] == ["firing"] and lost[0].labels["node"] == "train-b"
    wait_for(lambda: [a.status for a in cluster.alerts() if a.rule == vocab.NODE_LOST][-1:]
             == ["resolved"], 30)  # fmt: skip


def _assigned_times(log: Path) -> list[float]:
    """When the processor logged a partition assignment (its log's local time stamps)."""
    times = []
    for line in log.read_text(errors="replace").splitlines():
        if "partitions assigned after a rebalance" in line and "[20" in line:
            stamp = line[line.index("[20") + 1 :].split("]")[0]
            times.append(time.mktime(time.strptime(stamp.split(",")[0], "%Y-%m-%d %H:%M:%S")))
    return times


def test_processor_host_cut_off_moves_its_partitions(cluster: Cluster) -> None:
    """proc-b (a processor and a sink worker) loses the network: its partitions move to
    proc-a's workers after the session timeout, and every rank's data keeps arriving."""

    def assigned_since(host: str, t: float) -> bool:
        log = cluster.topo.root / "logs" / f"processor-{host}.log"
        return any(at >= int(t) for at in _assigned_times(log))

    cut = time.time()
    cluster.topo.cut("proc-b")
    try:
        after = cut + cluster.settings.session_timeout_s + 2.0

        def all_ranks_flow() -> bool:
            return all((p := cluster.steps_stored(r)) and p[-1][1] > after for r in range(4))

        wait_for(all_ranks_flow, timeout=60, every=0.5)
        took = time.time() - cut
    finally:
        cluster.topo.heal("proc-b")
    healed = time.time()
    # proc-b rejoins the group (a rebalance) once its session is found expired; the next
    # fault starts after the group settled (a rebalance during it is not what it tests).
    wait_for(lambda: assigned_since("proc-b", healed), timeout=45, every=0.5)
    time.sleep(3.0)
    cluster.marks["proc_cut_s"] = took
    cluster.marks["proc_cut"] = cut
    cluster.marks["proc_healed"] = healed
    # A processor host lost is the pipeline's fault, not the job's: no rank is dead, no
    # node lost, nothing hung.
    paged = [
        (a.rule, a.rank, a.status, round(a.raised_at - cut, 1), a.summary)
        for a in cluster.alerts()
        if a.raised_at >= cut
        and a.status == "firing"
        and a.rule in (vocab.DEAD_RANK, vocab.NODE_LOST, vocab.HUNG_RANK)
    ]
    assert paged == [], cluster.history()
    print(f"\nproc-b cut: every rank's records after cut+{after - cut:.0f}s stored "
          f"{took:.1f}s after the cut, proc-b still cut off")  # fmt: skip


def test_seq_accounting_after_the_faults(cluster: Cluster) -> None:
    (cluster.control / "report").touch()
    reports = wait_for(
        lambda: (
            [
                json.loads(p.read_text())
                for r in range(4)
                if (p := cluster.control / f"rank{r}.json").exists()
            ]
            if all((cluster.control / f"rank{r}.json").exists() for r in range(4))
            else None
        ),
        timeout=30,
    )

    def accounting() -> list[tuple[int, int, int, int, int]]:
        """(rank, sent, stored, lost, duplicated or wrong) of the counter series."""
        rows = []
        with cluster.reader() as reader:
            for rank, report in enumerate(reports):
                sent = report["steps"]
                points = reader.series(cluster.run, "counter", rank, 0, sent - 1).points
                got = {p.step for p in points}
                wrong = sum(1 for p in points if p.value != float(p.step))
                rows.append((rank, sent, len(got), sent - len(got), len(points) - len(got) + wrong))
        return rows

    def account() -> list[tuple[int, int, int, int, int]] | None:
        rows = accounting()
        return rows if all(lost == 0 for _, _, _, lost, _ in rows) else None

    try:
        rows = wait_for(account, timeout=60, every=0.5)
    except AssertionError:
        rows = accounting()
        raise
    finally:
        with cluster.reader() as reader:
            counters = reader.latest(cluster.run)
        print("\nrank  sent  stored  lost  dup  spooled  replayed  dropped  max_log_ms")
        for (rank, sent, stored, lost, dup), report in zip(rows, reports, strict=False):
            spooled, replayed, dropped = (
                int(counters.get((rank, f"stepstream/{n}"), -1))
                for n in ("spooled", "replayed", "dropped")
            )
            print(
                f"{rank:>4} {sent:>5} {stored:>7} {lost:>5} {dup:>4} {spooled:>8} "
                f"{replayed:>9} {dropped:>8} {report['max_log_ms']:>11.2f}"
            )
    assert all(lost == 0 and dup == 0 for _, _, _, lost, dup in rows)
    assert max(r["max_log_ms"] for r in reports) < LOG_BOUND_MS
    # train-b's ranks went through the spool (the partition), train-a's did not
    assert all(counters[(r, "stepstream/replayed")] > 0 for r in (2, 3))
    assert all(counters.get((r, "stepstream/spooled"), 0) == 0 for r in (0, 1))


def test_a_lost_node_is_one_alert_that_resolves_when_it_is_back(cluster: Cluster) -> None:
    """train-b vanishes (its network, then every rank and its agent, killed): one
    node_lost alert naming the node and its ranks; its ranks' dead_rank alerts and the
    run's hang are inhibited; restarted ranks on train-b resolve it."""

    def leftovers() -> list[str]:
        with cluster.reader() as reader:
            return [
                f"{a.rule}@{a.rank} {a.status} since {a.raised_at:.1f}: {a.summary}"
                for a in reader.active_alerts(cluster.run)
                if a.rule in (vocab.NODE_LOST, vocab.DEAD_RANK)
            ]

    # A clean slate: liveness alerts of the earlier faults resolved (see resolve_timeout_s).
    try:
        wait_for(lambda: not leftovers(), timeout=40, every=0.5)
    except AssertionError:
        raise AssertionError(
            f"liveness alerts of the earlier faults still open: {leftovers()}; {cluster.history()}"
        ) from None
    start = time.time()
    for iface in ("eth0", "eth1"):  # a host that loses power says nothing to its peers
        cluster.topo.cut("train-b", iface)
    kill_tree(cluster.agents["train-b"])

    def since() -> list[Alert]:
        return [a for a in cluster.alerts() if a.raised_at >= start]

    def fired() -> list[Alert] | None:
        return [a for a in since() if a.rule == vocab.NODE_LOST and a.status == "firing"] or None

    try:
        lost = wait_for(fired, timeout=30)
    except AssertionError:
        seen = [(a.rule, a.rank, a.status, a.suppressed_by, a.summary) for a in since()]
        with cluster.reader() as reader:
            active = [(a.rule, a.rank, a.summary) for a in reader.active_alerts(cluster.run)]
        raise AssertionError(
            f"no node_lost within 30 s; transitions since the cut: {seen}; active: "
            f"{active}; {cluster.history()}"
        ) from None
    assert len(lost) == 1
    alert = lost[0]
    assert alert.labels["node"] == "train-b" and alert.suppressed_by is None
    assert "node train-b" in alert.summary and "ranks 2, 3" in alert.summary
    detected = alert.raised_at - start
    time.sleep(2.0)  # what else the fault raises
    for iface in ("eth0", "eth1"):
        cluster.topo.heal("train-b", iface)
    rejoined = []
    for rank in (2, 3):
        rejoined.append(
            cluster.topo.spawn(
                "train-b",
                f"rejoin-{rank}",
                [sys.executable, str(REJOIN_SCRIPT), str(cluster.control)],
                cluster.env(
                    STEPSTREAM_RUN=cluster.run,
                    STEPSTREAM_NODE="train-b",
                    RANK=str(rank),
                    WORLD_SIZE="4",
                    LOCAL_RANK=str(rank - 2),
                ),
            )
        )

    def resolved() -> bool:
        return any(a.rule == vocab.NODE_LOST and a.status == "resolved" for a in since())

    try:
        wait_for(resolved, timeout=30)
    except AssertionError:
        seen = [(a.rule, a.rank, a.status, a.suppressed_by, a.summary) for a in since()]
        raise AssertionError(f"node_lost not resolved within 30 s: {seen}") from None
    finally:
        for child in rejoined:
            child.stop()
    transitions = since()
    assert sum(1 for a in transitions if a.rule == vocab.NODE_LOST and a.status == "firing") == 1
    dead = [a for a in transitions if a.rule == vocab.DEAD_RANK and a.status == "firing"]
    seen = [(a.rule, a.rank, a.status, a.suppressed_by, a.summary) for a in transitions]
    assert all(a.suppressed_by == f"inhibited:{vocab.NODE_LOST}" for a in dead), (
        f"{seen}; {cluster.history()}"
    )
    paged = [a for a in transitions if a.status == "firing" and a.suppressed_by is None]
    assert [a.rule for a in paged] == [vocab.NODE_LOST], f"{seen}; {cluster.history()}"
    print(f"\nnode lost: alerted {detected:.1f}s after the cut; {len(dead)} dead_rank "
          f"alert(s) inhibited; summary: {alert.summary}")  # fmt: skip
