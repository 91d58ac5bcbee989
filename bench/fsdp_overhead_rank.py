"""One rank of `bench/producer_overhead.py`'s FSDP2 row: a 2-rank FSDP2 job on CPU/gloo
that alternates blocks of steps without monitoring and with ``monitor.watch(every=1)``, in
one process, so both see the same machine; it writes each block's process CPU seconds per
step (all threads: the SDK's included) to the report. Run by the bench as torchrun would.

argv: rounds steps warmup report.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import producers


def main() -> None:
    rounds, steps, warmup, report = (
        int(sys.argv[1]),
        int(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4],
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.Generator().manual_seed(rank)
    x, y = torch.randn(64, 256, generator=data), torch.randint(0, 10, (64,), generator=data)
    loss_fn = nn.CrossEntropyLoss()
    monitor = producers.init("bench-fsdp", rank=rank, world=world)
    monitor.flush(10)

    def block(n: int) -> float:
        dist.barrier()
        start = time.process_time()
        for _ in range(n):
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        monitor.flush(10)  # publishing what the block logged is part of its cost
        return (time.process_time() - start) / n

    out: dict[str, list[float]] = {"none": [], "watch": []}
    block(warmup)
    for r in range(rounds):
        # Alternating order per round: a slow phase of the machine hits both modes.
        for mode in ("none", "watch") if r % 2 == 0 else ("watch", "none"):
            watch = monitor.watch(model, optimizer, every=1) if mode == "watch" else None
            out[mode].append(block(steps))
            if watch is not None:
                watch.remove()
    monitor.close(10)
    Path(report).write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
