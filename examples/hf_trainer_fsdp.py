"""A Hugging Face ``Trainer`` job with FSDP, instrumented by one callback (GPUs).

    STEPSTREAM_RUN=my-run torchrun --nproc-per-node 2 examples/hf_trainer_fsdp.py  # 2 GPUs
    ... examples/hf_trainer_fsdp.py --fsdp-version 1     # FSDP1 (deprecated in transformers)

The lines a Trainer user adds: the import and ``callbacks=[StepstreamCallback(run)]``.
The Trainer shards a two-layer GPT-2 (built from its config, trained on random tokens)
with FSDP2's ``fully_shard``, each ``GPT2Block`` its own unit (``fsdp_config``). Each rank
sends its share of the squared gradient norms; stage 2 adds them into the job's
``grad/global_norm`` (``reader.crossrank(run)``, field ``combined``). ``--norms-out PATH``
has rank 0 write the Trainer's own ``grad_norm`` per step (its ``clip_grad_norm_``, a
collective over the shards) to compare with.

Needs CUDA (or another accelerator accelerate shards on). On CPU, accelerate 1.x keeps
the FSDP plugin only for accelerator device types (``DistributedType.MULTI_GPU``, NPU,
XPU, HPU, ...): with ``use_cpu`` (``MULTI_CPU``, gloo) it silently drops it and the Trainer
wraps the model in DistributedDataParallel instead, and a model sharded beforehand with
``fully_shard`` fails inside that DDP wrapper (DTensor has no sharding rule for c10d's
broadcast). Rather than train DDP under an FSDP name, this script then exits with status
3 and says why; ``examples/hf_trainer.py`` is the CPU (DDP) example.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from producers.integrations.transformers import StepstreamCallback

#: The exit status when accelerate would not shard (no accelerator): not a crash.
NO_FSDP_EXIT = 3


class RandomTokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token sequences; the labels are the inputs (causal language modelling)."""

    def __init__(self, n: int, seq: int, vocab: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, seq), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class GradNorms(TrainerCallback):
    """The Trainer's ``grad_norm`` per step (logged at ``global_step``, which counts the
    step just taken: stepstream's step is one less)."""

    def __init__(self) -> None:
        self.norms: dict[int, float] = {}

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
    ) -> None:
        if logs and "grad_norm" in logs:
            self.norms[int(state.global_step) - 1] = float(logs["grad_norm"])


def main() -> None:
    """Train a few sharded steps with evaluation and a checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--run", default=None, help="run id (default: STEPSTREAM_RUN, torchrun's id or the time)"
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--save-steps", type=int, default=5)
    parser.add_argument("--fsdp-version", type=int, choices=(1, 2), default=2)
    parser.add_argument("--norms-out", type=Path, default=None, help="rank 0's reference norms")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    config.bos_token_id = config.eos_token_id = 0
    model = GPT2LMHeadModel(config)
    norms = GradNorms()
    cuda = torch.cuda.is_available()
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
            disable_tqdm=True,
            # Without a GPU, the CPU and gloo, as a CPU user sets them: the Trainer then
            # shows what accelerate does with FSDP there (below).
            use_cpu=not cuda,
            ddp_backend=None if cuda else "gloo",
            # transformers 5 asks for True (strings are deprecated) but still annotates str
            fsdp=True,  # type: ignore[arg-type]
            fsdp_config={
                "version": args.fsdp_version,
                "transformer_layer_cls_to_wrap": ["GPT2Block"],
            },
        )
        trainer = Trainer(
            model=model,
            args=training,
            train_dataset=RandomTokens(400, 16, 64, seed=1),
            eval_dataset=RandomTokens(32, 16, 64, seed=2),
            callbacks=[StepstreamCallback(args.run), norms],  # <- the one stepstream needs
        )
        if not trainer.is_fsdp_enabled:
            print(
                f"hf_trainer_fsdp: accelerate did not enable FSDP on this machine "
                f"(distributed type {trainer.accelerator.distributed_type}; it shards only on "
                "an accelerator such as CUDA); not training DDP under an FSDP name.",
                file=sys.stderr,
            )
            sys.exit(NO_FSDP_EXIT)
        trainer.train()
    if args.norms_out is not None and int(os.environ.get("RANK", "0")) == 0:
        args.norms_out.write_text(json.dumps(norms.norms))


if __name__ == "__main__":
    main()
