"""One rank of the 2-rank watch() test: DDP over gloo on CPU, run as a subprocess with
RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and STEPSTREAM_* set, like torchrun would."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import producers


def main() -> None:
    """Train a few steps with watch() on and every rank on its own data."""
    run, steps = sys.argv[1], int(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(100 + rank)
    monitor = producers.init(run)
    monitor.watch(model, optimizer, every=1, weights_every=1)
    try:
        for step in range(steps):
            x = torch.randn(8, 16, generator=data)
            loss = model(x).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            monitor.log(step, loss=loss.detach())
        if not monitor.flush(30):
            sys.exit(3)
    finally:
        monitor.close()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
