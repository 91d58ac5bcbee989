"""One rank of the multi-node job (tests/integration/test_multinode.py), started by torchrun:
gloo on CPU over the training network, instrumented only through the public SDK.

The run id is torchrun's ``--rdzv-id``; the node the host name (or ``STEPSTREAM_NODE``).
Every step logs ``counter = step`` (the seq accounting reads it back) and the loss, and
times each ``monitor.log`` call. The test steers the job through files in the control
folder (argv[1]):

- ``nan``: the first rank of the second node logs a NaN loss once, and records the step
  and its event time in ``nan.json``;
- ``report``: each rank writes ``rank<r>.json`` (steps logged so far, slowest `log()`);
- ``stop``: leave the loop, close the monitor, exit.

A failed collective (a peer node gone) does not end the rank: it stays up, its SDK still
sending heartbeats, until ``stop``, as a rank stuck in a collective does.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import producers


def main() -> None:
    control = Path(sys.argv[1])
    step_s = float(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    local_world = int(os.environ["LOCAL_WORLD_SIZE"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(100 + rank)
    monitor = producers.init(rank=rank, world=world)
    monitor.watch(model, optimizer, every=5)
    log_s: list[float] = []
    reported = nanned = False
    step = 0
    (control / f"rank{rank}.started").write_text(json.dumps({"run": monitor.identity.run}))
    try:
        while not (control / "stop").exists():
            started = time.monotonic()
            x = torch.randn(8, 16, generator=data)
            loss = ddp(x).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            if rank == local_world and not nanned and (control / "nan").exists():
                value, nanned = float("nan"), True
                done = {"step": step, "t": time.time()}
                (control / "nan.json").write_text(json.dumps(done))
            t0 = time.perf_counter()
            monitor.log(step, counter=float(step), loss=value)
            log_s.append(time.perf_counter() - t0)
            step += 1
            if not reported and (control / "report").exists():
                reported = True
                report = {"steps": step, "max_log_ms": max(log_s) * 1000}
                (control / f"rank{rank}.json").write_text(json.dumps(report))
            time.sleep(max(0.0, step_s - (time.monotonic() - started)))
    except Exception as exc:  # a peer node gone: stay up (heartbeats go on) until stop
        print(f"rank {rank}: collective failed at step {step}: {exc!r}", flush=True)
        while not (control / "stop").exists():
            time.sleep(0.1)
    monitor.close()


if __name__ == "__main__":
    main()
