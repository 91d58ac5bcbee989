"""What the Lightning callback costs the training loop: callback vs plain SDK calls vs none.

One process trains a small MLP (256 -> 512 -> 10, batch 64, CPU) with Lightning in three
modes, interleaved in shuffled order over several rounds in one run (so the noise of a
shared machine hits every mode alike):

- ``none``: no monitoring;
- ``sdk``: what a user writes by hand: ``monitor.watch(model, optimizer)`` and one
  ``monitor.log(step, loss=...)`` per step from a two-hook callback;
- ``callback``: `producers.integrations.lightning.StepstreamCallback` on the same monitor
  (everything it sends: logged values, watch(), timing, learning rates).

The figure is process CPU time per training step (``time.process_time``, so the SDK's
publisher and heartbeat threads count) over the steady-state steps of each fit, median
over rounds; the ratios compare modes of the same run. The monitor publishes to a real
embedded broker (no workers). Run: ``python bench/integrations_overhead.py`` (a few
minutes). Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import producers
from producers.integrations.lightning import StepstreamCallback
from producers.monitor import Monitor
from stepstream.settings import Settings
from stepstream.stack import LocalStack

MODES = ("none", "sdk", "callback")


class Mlp(pl.LightningModule):
    """The loop's own metric (``self.log``) is there in every mode."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class CpuClock(pl.Callback):
    """Process CPU seconds from the start of batch `warmup` to the end of the last."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end = 0.0
        self.batches = 0  # across epochs (a batch index restarts at each)
        self.steps = 0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
        if self.batches == self.warmup:
            self.start = time.process_time()

    def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, idx: int) -> None:
        self.batches += 1
        if self.start is not None:
            self.end = time.process_time()
            self.steps = self.batches - self.warmup

    def per_step(self) -> float:
        assert self.start is not None and self.steps
        return (self.end - self.start) / self.steps


class PlainSdk(pl.Callback):
    """The hand-written instrumentation a callback replaces."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.watch: Any = None

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.watch = self.monitor.watch(module, trainer.optimizers[0], every=1)

    def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, idx: int) -> None:
        self.monitor.log(trainer.global_step - 1, loss=out["loss"].detach())

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self.watch.remove()


def fit(mode: str, monitor: Monitor, steps: int, warmup: int) -> float:
    """CPU seconds per step of one fit in `mode`."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64 * 16, 256), torch.randint(0, 10, (64 * 16,)))
    clock = CpuClock(warmup)
    extra: list[pl.Callback] = []
    if mode == "sdk":
        extra = [PlainSdk(monitor)]
    elif mode == "callback":
        extra = [StepstreamCallback(monitor=monitor)]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[clock, *extra],
    )
    trainer.fit(Mlp(), DataLoader(data, batch_size=64))
    return clock.per_step()


def main() -> None:
    """Interleave the modes over rounds; print per-mode CPU per step and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(state_dir=Path(tmp), topic_prefix=f"bench{uuid.uuid4().hex[:6]}")
        stack = LocalStack(settings, workers=False)
        state = stack.start()
        try:
            monitor = producers.init(
                f"bench-integrations-{uuid.uuid4().hex[:6]}",
                kafka_bootstrap=state.kafka_bootstrap,
                state_dir=Path(tmp),
            )
            per_mode: dict[str, list[float]] = {m: [] for m in MODES}
            ratios: dict[str, list[float]] = {"callback_vs_none": [], "sdk_vs_none": []}
            ratios["callback_vs_sdk"] = []
            for _ in range(args.rounds):
                order = list(MODES)
                random.shuffle(order)
                got = {m: fit(m, monitor, args.steps, args.warmup) for m in order}
                for m in MODES:
                    per_mode[m].append(got[m])
                ratios["callback_vs_none"].append(got["callback"] / got["none"])
                ratios["sdk_vs_none"].append(got["sdk"] / got["none"])
                ratios["callback_vs_sdk"].append(got["callback"] / got["sdk"])
            monitor.close()
        finally:
            stack.stop()
    us = {m: statistics.median(v) * 1e6 for m, v in per_mode.items()}
    r = {k: statistics.median(v) for k, v in ratios.items()}
    for m in MODES:
        print(f"{m:>9}: {us[m]:8.0f} us CPU per step (median of {args.rounds} rounds)")
    print(
        f"cpu_us_none={us['none']:.0f} cpu_us_sdk={us['sdk']:.0f} "
        f"cpu_us_callback={us['callback']:.0f} callback_vs_none={r['callback_vs_none']:.3f} "
        f"sdk_vs_none={r['sdk_vs_none']:.3f} callback_vs_sdk={r['callback_vs_sdk']:.3f}"
    )


if __name__ == "__main__":
    main()
