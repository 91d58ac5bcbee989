"""A small data-parallel training job (gloo, CPU) that injects faults on cue, for the
detector integration test. One process per rank, RANK/WORLD_SIZE/MASTER_* set by the test.

Gradients are all-reduced by hand after a local backward so that `compute_time`
(forward + backward) and `data_time` exclude the collective: a straggler's delay shows in
its own times only, while every rank's `step_time` grows with it. A heartbeat thread keeps
publishing while the main thread is blocked in a collective (a dead peer hangs the rest).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import signal
import threading
import time

import torch
import torch.distributed as dist
from torch import nn

import producers
from stepstream.contract import RecordKind


def main() -> None:
    """Train, injecting the faults named on the command line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--step-sleep", type=float, default=0.04)
    parser.add_argument("--spike-rank", type=int, default=0)
    parser.add_argument("--spike-step", type=int, default=30)
    parser.add_argument("--straggler-rank", type=int, default=1)
    parser.add_argument("--straggler-from", type=int, default=40)
    parser.add_argument("--straggler-sleep", type=float, default=0.1)
    parser.add_argument("--nan-rank", type=int, default=1)
    parser.add_argument("--nan-step", type=int, default=70)
    parser.add_argument("--kill-rank", type=int, default=2)
    parser.add_argument("--kill-step", type=int, default=90)
    parser.add_argument("--heartbeat-s", type=float, default=0.25)
    parser.add_argument("--hang-s", type=float, default=60.0)
    args = parser.parse_args()

    torch.set_num_threads(1)  # ranks share a few cores; threads would only contend
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    teacher = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    data = torch.Generator().manual_seed(100 + rank)
    monitor = producers.init(args.run, rank=rank, world=world)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(args.heartbeat_s):
            monitor.log_kind(RecordKind.HEARTBEAT, None, alive=1.0)

    beat = threading.Thread(target=heartbeat, name="heartbeat", daemon=True)
    beat.start()
    try:
        try:
            train(args, rank, world, model, optimizer, teacher, data, monitor)
        except RuntimeError:
            # gloo reports a dead peer at once; NCCL would hang in the collective until its
            # timeout. Wait like NCCL, heartbeats going, so the rank looks hung, not gone.
            time.sleep(args.hang_s)
    finally:
        stop.set()
        monitor.close()
        dist.destroy_process_group()


def train(
    args: argparse.Namespace,
    rank: int,
    world: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    teacher: torch.Tensor,
    data: torch.Generator,
    monitor: producers.Monitor,
) -> None:
    """The training loop with the faults."""
    for step in range(args.steps):
        if rank == args.kill_rank and step == args.kill_step:
            monitor.flush(5)
            os.kill(os.getpid(), signal.SIGKILL)
        started = time.perf_counter()
        x = torch.randn(64, 32, generator=data)
        y = (x @ teacher).argmax(dim=1)
        if rank == args.straggler_rank and step >= args.straggler_from:
            time.sleep(args.straggler_sleep)  # a slow input pipeline on one rank
        data_done = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        if rank == args.nan_rank and step == args.nan_step:
            loss = loss * math.nan
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        compute_done = time.perf_counter()
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world
        grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
        grad_norm = torch.norm(torch.stack(grads))
        optimizer.step()
        logged = loss.item()
        if rank == args.spike_rank and step == args.spike_step:
            logged *= 20  # what a bad batch looks like in the loss curve
        monitor.log(
            step,
            loss=logged,
            grad_norm=grad_norm.item(),
            data_time=data_done - started,
            compute_time=compute_done - data_done,
            step_time=time.perf_counter() - started,
        )
        time.sleep(args.step_sleep)


if __name__ == "__main__":
    main()
