"""A plain PyTorch loop instrumented with the stepstream SDK (one process, CPU).

stepstream up                      # then export what it prints, or nothing on this host
python examples/plain_loop.py --run my-run
stepstream query --run my-run
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import producers


def main() -> None:
    """Train a small MLP on random data, logging every step."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--run", default=None, help="run id (default: STEPSTREAM_RUN, torchrun's id or the time)"
    )
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)
    loss_fn = nn.CrossEntropyLoss()
    with producers.init(args.run) as monitor:  # returns at once; never waits for Kafka
        monitor.watch(model, optimizer, every=1)  # grad/weight norms, LR, step timing
        for step in range(args.steps):
            x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sched.step()
            monitor.log(step, loss=loss.detach(), lr=sched.get_last_lr()[0])
            if step % 20 == 19:
                with monitor.phase("eval"), torch.no_grad():
                    xv, yv = torch.randn(64, 16), torch.randint(0, 4, (64,))
                    monitor.log_eval(step, val_loss=loss_fn(model(xv), yv))
        monitor.flush(30)


if __name__ == "__main__":
    main()
