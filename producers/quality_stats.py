"""Tensor -> sufficient statistics for model-quality metrics, computed on the tensors'
device without a host sync; the result is handed to `Monitor.log_quality`, which converts
it on the publisher thread. Names and the math back to metrics: stepstream.quality.
"""

from __future__ import annotations

from typing import Any

import torch

from producers.deferred import TensorValues
from stepstream import quality as q


def classification(
    targets: torch.Tensor, predictions: torch.Tensor, num_classes: int, task: str = "cls"
) -> TensorValues:
    """Per-class tp/fp/fn and the count. `predictions` are class ids (N,) or logits /
    probabilities (N, C), of which the argmax is taken; `targets` are class ids (N,)."""
    q.check_task(task)
    with torch.no_grad():
        if predictions.dim() > 1:
            predictions = predictions.argmax(dim=-1)
        t = targets.reshape(-1).long()
        p = predictions.reshape(-1).long().to(t.device)
        matrix = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
        matrix = matrix[: num_classes * num_classes].reshape(num_classes, num_classes)
        tp = matrix.diagonal()
        fp = matrix.sum(dim=0) - tp
        fn = matrix.sum(dim=1) - tp
        n = t.new_full((1,), t.numel())
        stacked = torch.cat([n, tp, fp, fn])
    names = [q.n_name(task)]
    for stat in ("tp", "fp", "fn"):
        names += [q.class_name(task, stat, c) for c in range(num_classes)]
    return TensorValues(names, stacked)


def binary_scores(
    targets: torch.Tensor, scores: torch.Tensor, bins: int = q.AUC_BINS, task: str = "bin"
) -> TensorValues:
    """Histograms of the scores of positives (target 1) and negatives (target 0) over
    `bins` equal bins of [0, 1]; scores outside are clamped. Pass probabilities, not logits."""
    q.check_task(task)
    with torch.no_grad():
        s = scores.reshape(-1).float()
        label = targets.reshape(-1).to(s.device).long().clamp(0, 1)
        index = (s * bins).long().clamp(0, bins - 1)
        counts = torch.bincount(index + bins * (1 - label), minlength=2 * bins)[: 2 * bins]
    names = [q.bin_name(task, "pos", i) for i in range(bins)]
    names += [q.bin_name(task, "neg", i) for i in range(bins)]
    return TensorValues(names, counts)


def regression(targets: torch.Tensor, predictions: Any, task: str = "reg") -> TensorValues:
    """Count and sums of absolute and squared errors."""
    q.check_task(task)
    with torch.no_grad():
        err = torch.as_tensor(predictions).reshape(-1).double() - targets.reshape(-1).double()
        stacked = torch.stack(
            [err.new_tensor(float(err.numel())), err.abs().sum(), (err * err).sum()]
        )
    names = [q.n_name(task), q.error_name(task, "abs_err"), q.error_name(task, "sq_err")]
    return TensorValues(names, stacked)
