"""A PyTorch Lightning job with ``FSDPStrategy``, instrumented by one callback.

    python examples/lightning_fsdp.py --run my-run                    # CPU, 2 processes (gloo)
    python examples/lightning_fsdp.py --run my-run --accelerator cuda # GPUs (nccl)

The lines a Lightning user adds: the import and ``callbacks=[StepstreamCallback(run)]``.
FSDPStrategy wraps the model in FSDP1 (``FullyShardedDataParallel``, each ``Linear`` its
own unit, ``use_orig_params=True``): every rank holds a slice of each flat parameter and
its gradient. Each rank sends its share of the squared gradient norms; stage 2 adds them
into the job's ``grad/global_norm`` (``reader.crossrank(run)``, field ``combined``), the
value ``clip_grad_norm_`` returns. ``--norms-out PATH`` has rank 0 write that reference
value per step (FSDP's own ``clip_grad_norm_``, a collective) to compare with.

On CPU, Lightning 2.6 refuses FSDPStrategy (``accelerator="cpu"`` raises "requires a GPU
accelerator", a check on the exact class) and passes ``device_id=None`` to FSDP, which torch
refuses on a machine without an accelerator ("FSDP needs a non-CPU accelerator device").
FSDP itself trains on CPU with gloo given ``device_id=cpu``: `CPUFSDPStrategy` below, a
subclass that only wraps the model with that device, is what lets this example (and its
test) run without a GPU. With ``--accelerator cuda`` the stock FSDPStrategy is used.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from torch.utils.data import DataLoader, TensorDataset

from producers.integrations.lightning import StepstreamCallback


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy on CPU: the model is wrapped with ``device_id=cpu`` (the
    stock strategy passes the device index, None on CPU, which torch's FSDP refuses
    without an accelerator); the rest is the stock strategy. Being a subclass also passes
    Lightning's GPU check, which tests for FSDPStrategy's exact class."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(
                model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )
            # Applied above: the stock method warns when it finds a policy and a wrapped model.
            self.kwargs.pop("auto_wrap_policy", None)
        return super()._setup_model(model)


class Classifier(pl.LightningModule):
    """A small MLP classifier logging its loss per step and per epoch, and val loss;
    optionally the job's gradient norm per step as FSDP computes it (`norms`)."""

    def __init__(self, norms: dict[int, float] | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
        )
        self.loss_fn = nn.CrossEntropyLoss()
        self.norms = norms

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> None:
        x, y = batch
        self.log("val_loss", self.loss_fn(self.net(x), y), sync_dist=True)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self.norms is None:
            return
        # FSDP's clip_grad_norm_ is a collective over the shards; an infinite max_norm
        # scales every gradient by exactly 1, so training is what it would be without it.
        model = self.trainer.strategy.model
        assert isinstance(model, FullyShardedDataParallel)
        self.norms[self.global_step] = float(model.clip_grad_norm_(float("inf")))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def loader(n: int, seed: int) -> DataLoader[tuple[torch.Tensor, ...]]:
    """Random inputs and labels."""
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g))
    return DataLoader(data, batch_size=16)


def main() -> None:
    """Fit for a few epochs, sharded, with a checkpoint at each epoch end."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--run", default=None, help="run id (default: STEPSTREAM_RUN, torchrun's id or the time)"
    )
    parser.add_argument("--accelerator", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--norms-out", type=Path, default=None, help="rank 0's reference norms")
    args = parser.parse_args()

    torch.manual_seed(0)
    strategy_class = CPUFSDPStrategy if args.accelerator == "cpu" else FSDPStrategy
    # Each Linear its own FSDP unit, as a transformer block would be.
    strategy = strategy_class(
        auto_wrap_policy=ModuleWrapPolicy({nn.Linear}),
        # A full checkpoint gathers with offload_to_cpu=True, which on CPU frees the
        # parameters it gathered and crashes the process (pytorch/pytorch#188989): each
        # rank saves its shards instead (torch.distributed.checkpoint, a directory).
        state_dict_type="sharded" if args.accelerator == "cpu" else "full",
    )
    norms: dict[int, float] | None = {} if args.norms_out is not None else None
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator=args.accelerator,
            devices=args.devices,
            strategy=strategy,
            max_epochs=args.epochs,
            default_root_dir=root,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[StepstreamCallback(args.run)],  # <- the one line stepstream needs
        )
        trainer.fit(Classifier(norms), loader(320, 1), loader(64, 2))
    if args.norms_out is not None and trainer.global_rank == 0:
        args.norms_out.write_text(json.dumps(norms))


if __name__ == "__main__":
    main()
