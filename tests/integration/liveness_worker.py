"""One rank of the liveness tests: DDP over gloo on CPU, instrumented through the public
SDK only (``producers.init``, ``monitor.watch``, ``monitor.log``), run as a subprocess with
RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and STEPSTREAM_* set, like torchrun would.

    liveness_worker.py RUN STEPS MODE ARG

MODE ``stagger``: every rank trains STEPS steps, then rank r waits r x ARG seconds before
``monitor.close()`` (staggered clean exits). MODE ``data_hang``: at step STEPS // 2, rank 1
blocks ARG seconds in its data loader while its peers wait in the all-reduce; it prints
``{"hang_t": ...}`` (wall clock) when the block starts. MODE ``early_exit``: the ranks
train on their own (no DDP wrapper, so nothing waits for anyone); rank 1 closes after 20
steps, rank 0 goes on stepping for ARG seconds. MODE ``no_show``: the last rank of the
world exits with code 3 before its first record; the others train on their own (no process
group: it would wait for the missing rank) for ARG seconds. MODE ``vanish``: the ranks
train on their own; the last rank flushes what it logged after 20 steps and exits at once,
without closing (a crash that takes the SDK with it: silence, so ``dead_rank``); the
others step for ARG seconds.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import producers


def load_batch(gen: torch.Generator, block_s: float) -> torch.Tensor:
    """The data loader: blocks `block_s` seconds (a stuck read) before the batch."""
    if block_s:
        print(json.dumps({"hang_t": time.time()}), flush=True)
        time.sleep(block_s)
    return torch.randn(8, 16, generator=gen)


def main() -> None:
    run, steps, mode, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    torch.set_num_threads(1)
    if mode == "no_show":
        no_show(run, arg)
        return
    if mode == "vanish":
        vanish(run, arg)
        return
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    torch.manual_seed(0)
    model: nn.Module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    if mode != "early_exit":
        model = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(100 + rank)
    monitor = producers.init(run)
    monitor.watch(model, optimizer, every=1)
    started = time.monotonic()
    try:
        for step in range(steps):
            if mode == "early_exit" and (
                (rank == 1 and step == 20) or (rank == 0 and time.monotonic() - started > arg)
            ):
                break
            block = arg if mode == "data_hang" and rank == 1 and step == steps // 2 else 0.0
            x = load_batch(data, block)
            loss = model(x).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            monitor.log(step, loss=loss.detach())
            time.sleep(0.005)
        if mode == "stagger":
            time.sleep(rank * arg)
    finally:
        monitor.close()
        dist.destroy_process_group()


def no_show(run: str, seconds: float) -> None:
    """The last rank fails before its first record; the others step for `seconds`."""
    if int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1:
        sys.exit(3)
    model = nn.Linear(16, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = producers.init(run)
    started, step = time.monotonic(), 0
    try:
        while time.monotonic() - started < seconds:
            loss = model(torch.randn(8, 16)).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            monitor.log(step, loss=loss.detach())
            step += 1
            time.sleep(0.02)
    finally:
        monitor.close()


def vanish(run: str, seconds: float) -> None:
    """The last rank goes silent after 20 steps without a close; the others step for
    `seconds`, then close."""
    last = int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1
    model = nn.Linear(16, 4)
    monitor = producers.init(run)
    started, step = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        loss = model(torch.randn(8, 16)).pow(2).mean()
        monitor.log(step, loss=loss.detach())
        step += 1
        if last and step == 20:
            monitor.flush(30)
            os._exit(0)  # no close, no atexit flush: the rank's heartbeats just stop
        time.sleep(0.02)
    monitor.close()


if __name__ == "__main__":
    main()
