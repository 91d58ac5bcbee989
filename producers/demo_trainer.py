"""The demo's training job: a small MLP under torch.distributed (gloo, CPU), one process
per rank, publishing loss, accuracy and learning rate every step with stepstream.

Run by `stepstream demo` with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, like
torchrun would. `--nan-rank` logs a NaN loss at `--nan-step`, the way a fp16 overflow
would: the NaN gradient is all-reduced, every rank sees it and skips that optimizer step
(as torch.amp.GradScaler does), so training goes on.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import producers


def main() -> None:
    """Train and publish; exits 0 when done."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--nan-step", type=int, default=40)
    parser.add_argument("--nan-rank", type=int, default=1)
    parser.add_argument("--step-sleep", type=float, default=0.05)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    teacher = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    data = torch.Generator().manual_seed(100 + rank)
    monitor = producers.init(args.run, rank=rank, world=world)
    try:
        for step in range(args.steps):
            x = torch.randn(64, 32, generator=data)
            y = (x @ teacher).argmax(dim=1)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            if rank == args.nan_rank and step == args.nan_step:
                loss = loss * math.nan
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads_finite = all(
                torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
            )
            if grads_finite:
                optimizer.step()
            schedule.step()
            accuracy = (logits.argmax(dim=1) == y).float().mean()
            monitor.log(step, loss=loss.detach(), accuracy=accuracy, lr=schedule.get_last_lr()[0])
            time.sleep(args.step_sleep)
    finally:
        monitor.close()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
