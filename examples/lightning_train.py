"""A PyTorch Lightning job instrumented by one callback (CPU).

    python examples/lightning_train.py --run my-run                 # ddp, 2 processes (gloo)
    python examples/lightning_train.py --run my-run --devices 1     # one process

The lines a Lightning user adds: the import and ``callbacks=[StepstreamCallback(run)]``.
``--fail-at-step N`` raises in training_step at step N, to see the crash reported.
"""

from __future__ import annotations

import argparse
import tempfile

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from producers.integrations.lightning import StepstreamCallback


class Classifier(pl.LightningModule):
    """A small MLP classifier logging its loss per step and per epoch, and val loss."""

    def __init__(self, fail_at_step: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        self.loss_fn = nn.CrossEntropyLoss()
        self.fail_at_step = fail_at_step

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        if self.fail_at_step is not None and self.global_step >= self.fail_at_step:
            raise RuntimeError(f"injected failure at step {self.global_step}")
        x, y = batch
        logits = self.net(x)
        loss = self.loss_fn(logits, y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.log("train_acc", (logits.argmax(1) == y).float().mean(), on_step=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> None:
        x, y = batch
        self.log("val_loss", self.loss_fn(self.net(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def loader(n: int, seed: int) -> DataLoader[tuple[torch.Tensor, ...]]:
    """Random inputs and labels."""
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g))
    return DataLoader(data, batch_size=16)


def main() -> None:
    """Fit for a few epochs with a checkpoint at each epoch end."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--run", default=None, help="run id (default: STEPSTREAM_RUN, torchrun's id or the time)"
    )
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fail-at-step", type=int, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=args.devices,
            strategy="ddp" if args.devices > 1 else "auto",
            max_epochs=args.epochs,
            default_root_dir=root,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[StepstreamCallback(args.run)],  # <- the one line stepstream needs
        )
        trainer.fit(Classifier(args.fail_at_step), loader(320, 1), loader(64, 2))


if __name__ == "__main__":
    main()
