"""A training-like job for the dashboard tests, through the public SDK only (no torch, so
it starts in a fraction of a second): each rank logs a falling loss and an accuracy every
step, and rank `--nan-rank` logs a NaN loss at `--nan-step`.

Usage: python -m tests.integration.dashboard_job --run R --rank 0 --world 2 [...]
"""

from __future__ import annotations

import argparse
import math
import time

import producers


def main() -> None:
    """Log `--steps` steps and close."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--nan-step", type=int, default=-1)
    parser.add_argument("--nan-rank", type=int, default=1)
    parser.add_argument("--sleep", type=float, default=0.01)
    parser.add_argument("--metric", action="append", default=[])
    parser.add_argument("--offset", type=float, default=0.0, help="added to the loss")
    args = parser.parse_args()
    node = f"node-{args.rank // 2}"
    monitor = producers.init(args.run, rank=args.rank, world=args.world, node=node)
    try:
        for step in range(args.steps):
            loss = 2.0 / (1 + step / 10) + 0.01 * args.rank + args.offset
            if step == args.nan_step and args.rank == args.nan_rank:
                loss = math.nan
            values = {"loss": loss, "accuracy": 1 - 0.5 / (1 + step / 10)}
            values.update({m: step / 10 for m in args.metric})
            monitor.log(step, **values)
            time.sleep(args.sleep)
    finally:
        monitor.close()


if __name__ == "__main__":
    main()
