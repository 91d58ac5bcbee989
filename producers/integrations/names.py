"""What the framework callbacks send, under which names: pure logic, no framework imports.

Framework names reach the canonical names of `stepstream.vocabulary` (its aliases are the
one definition: ``train_loss`` -> ``loss``, ``val_loss`` / ``eval_loss`` -> ``eval_loss``,
``grad_norm`` -> ``grad/global_norm``, ``learning_rate`` -> ``opt/lr/0``); every other name
is the user's and is kept. Values a callback cannot map to a signal without changing its
meaning (an epoch mean of the training loss is not the per-step loss the detectors read)
keep their framework name too.

Lightning forks a value logged both per step and per epoch into ``<name>_step`` and
``<name>_epoch``. Training values per step are the signal (``train_loss_step`` -> ``loss``);
per epoch they keep their name. Validation and test values per epoch are the signal
(``val_loss_epoch`` -> ``eval_loss``); per step (one per evaluation batch) they keep theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stepstream import vocabulary as vocab
from stepstream.contract import RecordKind

STEP_SUFFIX = "_step"
EPOCH_SUFFIX = "_epoch"

#: Hugging Face's per-log values that watch() already reports every step from the
#: optimizer and the gradients themselves: sent by the callback only without watch().
HF_WATCHED = frozenset({"grad_norm", "learning_rate"})
#: Keys of the Trainer's end-of-training summary log (``train_runtime`` marks it).
HF_SUMMARY_MARK = "train_runtime"
#: Prefixes of Hugging Face evaluation logs (``metric_key_prefix`` of evaluate/predict).
HF_EVAL_PREFIXES = ("eval_", "test_")


def lightning_name(name: str, stage: str, on_step: bool) -> str:
    """The name a value Lightning logged as `name` is sent under.

    stage: ``train``, ``validate`` or ``test``; on_step: read after a batch (else after an
    epoch or a whole evaluation).
    """
    if stage == "train":
        if on_step:
            return vocab.canonical(name.removesuffix(STEP_SUFFIX))
        return name
    if on_step:
        return name
    return vocab.canonical(name.removesuffix(EPOCH_SUFFIX))


@dataclass
class HfLog:
    """One Hugging Face ``on_log`` dict split into what the callback sends."""

    kind: RecordKind
    values: dict[str, float] = field(default_factory=dict)


def hf_log(logs: Mapping[str, Any], watched: bool) -> HfLog:
    """Map one ``Trainer.log`` dict: evaluation logs (``eval_*``) go as kind eval with
    ``eval_loss`` canonical; training logs as kind train with ``loss`` and, without
    watch(), ``grad_norm`` and ``learning_rate`` under their canonical names. The
    end-of-training summary keeps its names but drops ``train_loss`` (the mean of the
    per-step losses already sent, which would land as one more ``loss`` point)."""
    numbers = {
        k: float(v)
        for k, v in logs.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if any(k.startswith(HF_EVAL_PREFIXES) for k in numbers):
        return HfLog(RecordKind.EVAL, {vocab.canonical(k): v for k, v in numbers.items()})
    if HF_SUMMARY_MARK in numbers:
        summary = {k: v for k, v in numbers.items() if vocab.signal_of(k) is None}
        return HfLog(RecordKind.TRAIN, summary)
    values: dict[str, float] = {}
    for k, v in numbers.items():
        if watched and k in HF_WATCHED:
            continue
        values[vocab.canonical(k)] = v
    return HfLog(RecordKind.TRAIN, values)


def optimizer_lr_name(optimizer: int, group: int) -> str:
    """The learning-rate name of one parameter group of the `optimizer`-th optimizer:
    ``opt/lr/<group>`` for the first (what watch() sends), ``opt/lr/opt<k>/<group>``
    for the others."""
    if optimizer == 0:
        return f"{vocab.LR.name}{group}"
    return f"{vocab.LR.name}opt{optimizer}/{group}"


def batch_size(batch: Any) -> int | None:
    """Samples in a batch: the first dimension of its first tensor (a tensor, a sequence or
    a mapping of them, as data loaders yield), else None."""
    seen = 0
    stack = [batch]
    while stack and seen < 64:
        item = stack.pop(0)
        seen += 1
        shape = getattr(item, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None
