"""DistributedDataParallel over gloo on CPU, instrumented with the stepstream SDK.

    STEPSTREAM_RUN=my-ddp-run torchrun --nproc-per-node 2 examples/ddp_torchrun.py

Every rank runs the same code; rank, world size and node come from torchrun's variables,
and every rank uses the same run id (``--run`` would be taken by torchrun itself).
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import producers


def main() -> None:
    """Train a small MLP, each rank on its own random data."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--run", default=None, help="run id (default: STEPSTREAM_RUN, torchrun's id or the time)"
    )
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    data = torch.Generator().manual_seed(100 + rank)
    monitor = producers.init(args.run)  # one call per rank
    monitor.watch(model, optimizer, every=1)
    try:
        for step in range(args.steps):
            x = torch.randn(32, 16, generator=data)
            y = torch.randint(0, 4, (32,), generator=data)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            monitor.log(step, loss=loss.detach())
        monitor.flush(30)
    finally:
        monitor.close()  # a closed rank is finished, never dead
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
