"""What instrumenting a training step costs: stepstream vs no monitoring vs TensorBoard.

A small CPU MLP step (256 -> 512 -> 10, batch 64) runs in four modes, interleaved in
shuffled order over several rounds so that the noise of a shared machine hits every mode
alike:

- ``none``: no monitoring at all (no monitor object, no threads);
- ``stepstream``: one ``log()`` of 20 scalars per step, with heartbeats and the 1 s
  system sampler running, publishing to a real (embedded tansu) broker;
- ``tensorboard``: ``SummaryWriter.add_scalar`` of the same 20 scalars;
- ``watch``: ``monitor.watch(model, optimizer, every=1)`` (norms every step), no log().

An FSDP2 row follows (``--fsdp-only`` runs just it): the same MLP under ``fully_shard`` on
2 ranks over gloo, each rank alternating blocks without monitoring and with
``watch(every=1)`` (norms from local shards, no collective added), compared by process CPU
per step, all threads (``fsdp_watch_overhead_pct``).

Every mode builds the same dict of 20 values each step (the loop has its metrics either
way); only handing them to a library differs. Each block is short and every round runs
all four, so a slow phase of the machine hits all modes of that round; an overhead is the
median over rounds of (median step time of the mode / median step time of ``none`` in the
same round - 1). The headline ``overhead_pct`` (and ``watch_overhead_pct``) is that
paired median of the process CPU time per step, all threads together (the SDK's
publisher, ticker and Kafka client threads included), from the first measured step until
what those steps logged is flushed; wall-clock overheads are printed beside it. The
logging cost of each library is timed directly around its calls
(perf_counter_ns), which is what
``tensorboard_ratio`` compares (median per step, 20 scalars). The SDK's threads are also
shown one by one (publisher, kafka-python's network thread with its CPU per Kafka message,
ticker): what bounds the headline besides ``log()``. Run:
``python bench/producer_overhead.py`` (about a minute). Prints figures; not a test.

It also prints the cost of one ``Publisher.enqueue`` (the training thread's share of a
record: a deque append, no I/O) against a producer that keeps nothing;
``--enqueue-only`` prints just that figure, without a broker or torch steps. (It was a
unit-test bound, 50 us, which measured the load of a shared machine, not the code.)
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import producers
from producers.identity import Identity
from producers.publisher import Publisher
from producers.system import SystemSampler
from stepstream.contract import RecordKind
from stepstream.settings import Settings
from stepstream.stack import LocalStack

N_SCALARS = 20


def make_step() -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """The model, optimizer and a closure running one training step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xs = [torch.randn(64, 256) for _ in range(16)]
    ys = [torch.randint(0, 10, (64,)) for _ in range(16)]

    def step(i: int) -> torch.Tensor:
        x, y = xs[i % 16], ys[i % 16]
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return model, optimizer, step


def scalars(i: int, loss: torch.Tensor) -> dict[str, Any]:
    """20 values as a training loop would log them: the loss tensor and 19 floats."""
    values: dict[str, Any] = {"loss": loss}
    for k in range(N_SCALARS - 1):
        values[f"metric_{k}"] = i * 0.001 + k
    return values


@contextlib.contextmanager
def broker(tmp: Path) -> Iterator[Settings]:
    """An embedded tansu broker without workers, stopped at the end."""
    settings = Settings(state_dir=tmp / "stack", topic_prefix=f"bench{uuid.uuid4().hex[:6]}")
    stack = LocalStack(settings, workers=False)
    state = stack.start()
    try:
        yield settings.model_copy(
            update={"kafka_bootstrap": state.kafka_bootstrap, "spool_dir": tmp / "spool"}
        )
    finally:
        stack.stop()


def run_mode(
    mode: str, steps: int, warmup: int, settings: Settings, tmp: Path
) -> tuple[list[float], list[float], tuple[float, float, float], dict[str, float]]:
    """Per-step wall times (s), per-step logging-call times (s), process CPU seconds per
    step (all threads, ours included; the training thread alone; the other threads) and
    the CPU seconds of each other thread by name (plus ``messages``: Kafka messages the
    monitor sent) of one block."""
    model, optimizer, step = make_step()
    monitor = writer = None
    if mode in ("stepstream", "watch"):
        monitor = producers.init("bench", rank=0, world=1, settings=settings)
        if mode == "watch":
            monitor.watch(model, optimizer, every=1)
        # Steady state: connecting to the broker is a one-time cost outside the steps.
        monitor.flush(10)
    elif mode == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tmp / f"tb-{uuid.uuid4().hex[:6]}"))
    step_times: list[float] = []
    cpu: list[float] = []  # process CPU seconds (every thread) of the measured steps
    log_times: list[float] = []
    clock = time.perf_counter_ns
    try:
        for i in range(warmup + steps):
            t0 = clock()
            loss = step(i)
            values = scalars(i, loss)  # the loop has its metrics in every mode
            if mode == "stepstream":
                a = clock()
                monitor.log(i, **values)  # type: ignore[union-attr]
                log_times.append((clock() - a) * 1e-9)
            elif mode == "tensorboard":
                a = clock()
                for name, value in values.items():
                    writer.add_scalar(name, value, i)  # type: ignore[union-attr]
                log_times.append((clock() - a) * 1e-9)
            if i == warmup - 1:
                # The warm-up's records are delivered before the window opens, so the
                # window holds the work of the measured steps and little else.
                if monitor is not None:
                    monitor.flush(10)
                cpu += [time.process_time(), time.thread_time()]
                clocks = _helper_clocks()
                helpers = _clock_sum(clocks.values())
                by_name = {name: _clock_sum([c]) for name, c in clocks.items()}
                sent = monitor.stats.sent_messages if monitor is not None else 0
            if i >= warmup:
                step_times.append((clock() - t0) * 1e-9)
        # Publishing what the measured steps logged is part of their cost (flush waits
        # for the broker, which costs no CPU); close() is a one-time cost like init().
        if monitor is not None:
            monitor.flush(10)
        elif writer is not None:
            writer.flush()
        cpu_per_step = (time.process_time() - cpu[0]) / steps
        main_per_step = (time.thread_time() - cpu[1]) / steps
        helper_per_step = (_clock_sum(clocks.values()) - helpers) / steps
        by_name = {name: _clock_sum([clocks[name]]) - t for name, t in by_name.items()}
        by_name["messages"] = (monitor.stats.sent_messages - sent) if monitor is not None else 0
    finally:
        if monitor is not None:
            monitor.close(10)
        if writer is not None:
            writer.close()
    return step_times, log_times[warmup:], (cpu_per_step, main_per_step, helper_per_step), by_name


def _helper_clocks() -> dict[str, int]:
    """CPU clocks of every thread but this one by thread name (the SDK's publisher, ticker
    and Kafka client threads in the monitored modes; TensorBoard's writer thread)."""
    me = threading.get_ident()
    out = {}
    for thread in threading.enumerate():
        if thread.ident is not None and thread.ident != me:
            with contextlib.suppress(OSError, ProcessLookupError):
                out[f"{thread.name}#{thread.ident}"] = time.pthread_getcpuclockid(thread.ident)
    return out


def _clock_sum(clocks: Iterable[int]) -> float:
    """Seconds of CPU of the threads behind `clocks` (those that ended count as 0)."""
    total = 0.0
    for clock in clocks:
        with contextlib.suppress(OSError):
            total += time.clock_gettime(clock)
    return total


def _by_thread(by_name: dict[str, float], steps: int) -> dict[str, float]:
    """CPU seconds per step of each kind of thread of one block (threads named alike
    summed), the Kafka network thread's CPU seconds per message, and messages."""
    out: dict[str, float] = {}
    for name, seconds in by_name.items():
        if name != "messages":
            kind = name.split("#")[0]
            out[kind] = out.get(kind, 0.0) + seconds / steps
    messages = by_name.get("messages", 0)
    network = out.get("stepstream-publisher-network-thread", 0.0) * steps
    out["network_per_message"] = network / messages if messages else 0.0
    out["messages"] = messages
    return out


def _thread_line(blocks: list[dict[str, float]]) -> str:
    """Medians over rounds of the SDK threads' CPU per step and of kafka-python's network
    thread CPU per message: what bounds the SDK besides log() itself."""

    def med(key: str) -> float:
        return statistics.median(b.get(key, 0.0) for b in blocks)

    return (
        f"publisher {med('stepstream-publisher') * 1e6:.1f} us/step, "
        f"kafka-python network thread {med('stepstream-publisher-network-thread') * 1e6:.1f}"
        f" us/step ({med('network_per_message') * 1e3:.2f} ms CPU per message, "
        f"{med('messages'):.0f} messages per block), "
        f"ticker {med('stepstream-ticker') * 1e6:.1f} us/step"
    )


def _ratios(values: list[float], bases: list[float]) -> list[float]:
    """value / base of each round."""
    return [v / b for v, b in zip(values, bases, strict=True)]


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _NullProducer:
    """Takes every send and keeps nothing: the enqueue figure measures the queue alone."""

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        return None

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


def enqueue_cost_us(calls: int = 20_000, repeats: int = 5) -> float:
    """Median over `repeats` runs of the wall time of one `Publisher.enqueue` of two
    floats, in microseconds, while the publisher thread drains the queue as it would."""
    values = {"loss": 0.1, "acc": 0.9}
    runs = []
    with tempfile.TemporaryDirectory() as name:
        settings = Settings(
            queue_size=calls * 2, flush_interval_s=0.05, spool_dir=Path(name) / "spool"
        )
        ident = Identity(run="bench-enqueue", rank=0, world=1, local_rank=0, node="bench")
        for _ in range(repeats):
            pub = Publisher(ident, settings, producer_factory=lambda s: _NullProducer())
            start = time.perf_counter()
            for step in range(calls):
                pub.enqueue(step, RecordKind.TRAIN, values)
            runs.append((time.perf_counter() - start) / calls * 1e6)
            pub.close()
    return statistics.median(runs)


def _enqueue_line() -> str:
    return (
        f"Publisher.enqueue of 2 values (training thread, per record, no I/O): median "
        f"{enqueue_cost_us():.2f} us over 5 x 20000 calls"
    )


def fsdp_row(settings: Settings, tmp: Path, rounds: int = 8, steps: int = 200) -> str:
    """The FSDP2 row: a 2-rank `fully_shard` job on gloo (bench/fsdp_overhead_rank.py)
    alternating blocks without monitoring and with ``watch(every=1)``; the paired median
    over rounds and ranks of the process CPU per step, all threads."""
    import json
    import os
    import subprocess
    import sys

    from stepstream.stack import free_port, settings_env

    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        **settings_env(settings),
        "PYTHONPATH": str(root),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
    }
    reports = [tmp / f"fsdp-r{r}.json" for r in range(2)]
    worker = root / "bench" / "fsdp_overhead_rank.py"
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(rounds), str(steps), "50", str(reports[r])],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
        )
        for r in range(2)
    ]
    try:
        codes = [p.wait(600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if codes != [0, 0]:
        return f"fsdp2: ranks exited {codes}"
    ratios: list[float] = []
    bases: list[float] = []
    for path in reports:
        got = json.loads(path.read_text())
        ratios += [(r - 1) * 100 for r in _ratios(got["watch"], got["none"])]
        bases += got["none"]
    return (
        f"fsdp2 (2 ranks, gloo, watch every step): none {statistics.median(bases) * 1e3:.3f} ms "
        f"CPU per step; fsdp_watch_overhead_pct={statistics.median(ratios):.2f}"
    )


def main() -> None:
    """Run the interleaved rounds and print the figures; the last line is the summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    # 1000 steps (~0.6 s) span three publisher flush intervals, as a long run does; a
    # block shorter than one interval paid a whole extra Kafka message (the flush that
    # closes it) per 250 steps, and the rounds spread from -10 % to +29 %.
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--enqueue-only", action="store_true", help="only the cost of Publisher.enqueue"
    )
    parser.add_argument("--fsdp-only", action="store_true", help="only the FSDP2 row")
    args = parser.parse_args()
    if args.enqueue_only:
        print(_enqueue_line())
        return
    if args.fsdp_only:
        with tempfile.TemporaryDirectory() as tmp_dir, broker(Path(tmp_dir)) as settings:
            print(fsdp_row(settings, Path(tmp_dir)))
        return
    torch.set_num_threads(args.threads)
    modes = ["none", "stepstream", "tensorboard", "watch"]
    steps: dict[str, list[float]] = {m: [] for m in modes}
    medians: dict[str, list[float]] = {m: [] for m in modes}
    logs: dict[str, list[float]] = {m: [] for m in modes}
    cpus: dict[str, list[float]] = {m: [] for m in modes}
    mains: dict[str, list[float]] = {m: [] for m in modes}
    helpers: dict[str, list[float]] = {m: [] for m in modes}
    threads: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as name, broker(Path(name)) as settings:
        tmp = Path(name)
        for r in range(args.rounds):
            order = modes[:]
            rng.shuffle(order)
            for mode in order:
                times, log_times, cpu, by_name = run_mode(
                    mode, args.steps, args.warmup, settings, tmp
                )
                threads[mode].append(_by_thread(by_name, args.steps))
                cpus[mode].append(cpu[0])
                mains[mode].append(cpu[1])
                helpers[mode].append(cpu[2])
                steps[mode] += times
                medians[mode].append(statistics.median(times))
                logs[mode] += log_times
            print(f"round {r}: " + " ".join(f"{m}={medians[m][-1] * 1e3:.3f}ms" for m in modes))
        fsdp_line = fsdp_row(settings, tmp)
        sampler = SystemSampler("/")
        costs = []
        for _ in range(30):
            start = time.perf_counter()
            sampler.sample()
            costs.append(time.perf_counter() - start)
            time.sleep(0.01)
        sampler.close()
        sent_check = producers.init("bench-check", settings=settings)
        delivered = sent_check.flush(10)
        sent_check.close()

    def paired(mode: str, of: dict[str, list[float]] = medians) -> float:
        ratios = [m / b - 1 for m, b in zip(of[mode], of["none"], strict=True)]
        return statistics.median(ratios) * 100

    base = statistics.median(steps["none"])
    for mode in modes:
        mean = statistics.fmean(steps[mode])
        print(
            f"{mode:12s} step median {statistics.median(steps[mode]) * 1e3:.3f} ms  "
            f"mean {mean * 1e3:.3f} ms  p99 {pct(steps[mode], 0.99) * 1e3:.3f} ms"
        )
    # The headline: process CPU per step, every thread (publisher, ticker, kafka-python's
    # sender), paired with the `none` block of the same round. Wall-clock medians of a
    # shared 2-core machine swing by more than the cost being measured (a run once gave
    # a negative overhead); CPU time is what the SDK takes from the training process.
    overhead = paired("stepstream", cpus)
    watch_overhead = paired("watch", cpus)
    wall_overhead = paired("stepstream")
    pooled = (statistics.median(steps["stepstream"]) - base) / base * 100
    overhead_mean = (
        (statistics.fmean(steps["stepstream"]) - statistics.fmean(steps["none"]))
        / statistics.fmean(steps["none"])
        * 100
    )
    ours = statistics.median(logs["stepstream"])
    theirs = statistics.median(logs["tensorboard"])
    print(
        f"per-step logging call, {N_SCALARS} scalars: stepstream {ours * 1e6:.2f} us, "
        f"TensorBoard {theirs * 1e6:.1f} us; overhead of pooled medians {pooled:.2f}%, "
        f"of means {overhead_mean:.2f}%; wall-clock paired medians: stepstream "
        f"{wall_overhead:.2f}%, watch {paired('watch'):.2f}%, TensorBoard "
        f"{paired('tensorboard'):.1f}%; "
        f"broker reachable at end: {delivered}; torch threads {args.threads}"
    )
    print(
        f"one system-metrics sample (psutil; NVML absent here): median "
        f"{statistics.median(costs) * 1e3:.2f} ms, max {max(costs) * 1e3:.2f} ms "
        f"(once per second by default)"
    )
    print(
        "process CPU per step (all threads; robust to other tenants): "
        + ", ".join(f"{m} {statistics.median(cpus[m]) * 1e3:.3f} ms" for m in modes)
        + f"; paired by round: stepstream +{overhead:.2f}%, watch +{watch_overhead:.2f}%"
        + f", TensorBoard +{paired('tensorboard', cpus):.1f}%"
    )
    # The SDK's own threads, by their CPU clocks: what it burns besides log() itself,
    # less exposed to other tenants than a difference of two process totals.
    print(
        "CPU per step of the other threads (SDK publisher, ticker, Kafka client): "
        + ", ".join(
            f"{m} {statistics.median(helpers[m]) * 1e6:.1f} us "
            f"({statistics.median(_ratios(helpers[m], cpus['none'])) * 100:.2f}% of none)"
            for m in modes[1:]
        )
    )
    print(
        "process CPU overhead per round, sorted: "
        + "; ".join(
            f"{m} "
            + " ".join(f"{(r - 1) * 100:.1f}" for r in sorted(_ratios(cpus[m], cpus["none"])))
            for m in ("stepstream", "watch")
        )
    )
    for mode in ("stepstream", "watch"):
        print(f"{mode} threads: {_thread_line(threads[mode])}")
    print(_enqueue_line())
    print(fsdp_line)
    main_base = statistics.median(mains["none"])
    print(
        "training-thread CPU per step: "
        + ", ".join(f"{m} {statistics.median(mains[m]) * 1e3:.3f} ms" for m in modes)
        + f"; stepstream +{(statistics.median(mains['stepstream']) / main_base - 1) * 100:.2f}%"
    )
    print(
        f"overhead_pct={overhead:.2f} log_p50_us={pct(logs['stepstream'], 0.5) * 1e6:.2f} "
        f"log_p99_us={pct(logs['stepstream'], 0.99) * 1e6:.2f} "
        f"tensorboard_ratio={theirs / ours:.1f} watch_overhead_pct={watch_overhead:.2f}"
    )


if __name__ == "__main__":
    main()
