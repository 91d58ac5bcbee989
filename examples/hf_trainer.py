"""A Hugging Face ``Trainer`` job instrumented by one callback (CPU, no download).

    python examples/hf_trainer.py --run my-run                       # one process
    STEPSTREAM_RUN=my-run torchrun --nproc-per-node 2 examples/hf_trainer.py  # two (gloo)

The lines a Trainer user adds: the import and ``callbacks=[StepstreamCallback(run)]``.
The model is a one-layer GPT-2 built from its config, trained on random tokens.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from producers.integrations.transformers import StepstreamCallback


class RandomTokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token sequences; the labels are the inputs (causal language modelling)."""

    def __init__(self, n: int, seq: int, vocab: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, seq), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    """Train a few steps with evaluation and a checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--run", default=None, help="run id (default: STEPSTREAM_RUN, torchrun's id or the time)"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--save-steps", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    config.bos_token_id = config.eos_token_id = 0
    model = GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=8,
            per_device_eval_batch_size=8,
            learning_rate=1e-3,
            logging_steps=1,
            eval_strategy="steps",
            eval_steps=max(1, args.steps // 2),
            save_strategy="steps",
            save_steps=args.save_steps,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            # gloo under torchrun on CPU; accelerate refuses a backend with one process
            ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        )
        trainer = Trainer(
            model=model,
            args=training,
            train_dataset=RandomTokens(400, 16, 64, seed=1),
            eval_dataset=RandomTokens(32, 16, 64, seed=2),
            callbacks=[StepstreamCallback(args.run)],  # <- the one line stepstream needs
        )
        trainer.train()


if __name__ == "__main__":
    main()
