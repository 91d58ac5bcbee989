"""One rank of the fault-injection training job: gloo on CPU, the public SDK, and a
seq-checkable series (``counter = step``). Rank 1 logs a NaN loss at `nan_step`.

argv: run steps step_s nan_step report.json. Writes ``rank<r>.started`` beside the report
after the first step, and the report (max / p99 `log()` time, flush result) at the end.
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
    run, steps, step_s, nan_step, report = sys.argv[1:6]
    out = Path(report)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(100 + rank)
    monitor = producers.init(run, rank=rank, world=world)
    log_s: list[float] = []
    try:
        for step in range(int(steps)):
            started = time.monotonic()
            x = torch.randn(8, 16, generator=data)
            loss = model(x).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for p in model.parameters():
                assert p.grad is not None
                dist.all_reduce(p.grad)
                p.grad /= world
            optimizer.step()
            value = float("nan") if (rank == 1 and step == int(nan_step)) else loss.item()
            t0 = time.perf_counter()
            monitor.log(step, counter=float(step), loss=value)
            log_s.append(time.perf_counter() - t0)
            if step == 0:
                out.with_name(f"rank{rank}.started").touch()
            time.sleep(max(0.0, float(step_s) - (time.monotonic() - started)))
        flushed = monitor.flush(120)
    finally:
        monitor.close()
        dist.destroy_process_group()
    log_s.sort()
    out.write_text(
        json.dumps(
            {
                "max_log_ms": log_s[-1] * 1000,
                "p99_log_ms": log_s[int(len(log_s) * 0.99) - 1] * 1000,
                "flushed": flushed,
            }
        )
    )


if __name__ == "__main__":
    main()
