"""The metric vocabulary: one set of names for the SDK, the detectors and the docs."""

from __future__ import annotations

import torch
from torch import nn

from processors.detectors import (
    DPMismatchParams,
    GradientParams,
    OverfittingParams,
    PlateauParams,
    SpikeParams,
    StragglerParams,
    ThroughputParams,
)
from processors.detectors.trends import DivergenceParams
from producers.phase import PhaseClock
from producers.watch import Watch
from stepstream import vocabulary as vocab
from stepstream.settings import Settings


def sdk_names() -> set[str]:
    """Every name watch() emits over a few steps of a real model (DDP-style wrapper)."""

    class Wrapper(nn.Module):  # a `.module` wrapper, as DistributedDataParallel is
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x)

    torch.manual_seed(0)
    model = Wrapper(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    names: set[str] = set()

    def enqueue(step: int | None, kind: object, values: object) -> None:
        resolved = values.resolve()[0] if hasattr(values, "resolve") else values
        names.update(resolved)  # type: ignore[arg-type]

    clock = PhaseClock()  # declared phases give the per-step eval/checkpoint seconds
    watch = Watch(enqueue, model, opt, every=1, weights_every=1, phases=clock)
    for _ in range(3):
        for declared in (vocab.PHASE_EVAL, vocab.PHASE_CHECKPOINT):
            with clock.phase(declared):
                pass
        loss = model(torch.randn(4, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    watch.remove()
    return names


def consumed_by_default() -> set[str]:
    """Every name a detector or the cross-rank stage reads by default."""
    names = {
        *GradientParams().metrics,
        *StragglerParams().metrics,
        *StragglerParams().alone,
        DPMismatchParams().metric,
        *ThroughputParams().metrics,
        *SpikeParams().metrics,
        *PlateauParams().metrics,
        *DivergenceParams().metrics,
        OverfittingParams().train_metric,
        OverfittingParams().eval_metric,
        *Settings().crossrank_metrics,
    }
    return names


def test_every_signal_a_detector_reads_by_default_is_one_the_sdk_emits_or_the_user_logs() -> None:
    emitted = sdk_names()
    emitted_signals = {vocab.signal_of(n) for n in emitted} - {None}
    for name in consumed_by_default():
        signal = vocab.signal_of(name)
        assert signal is not None, f"{name} is not in the vocabulary"
        assert vocab.canonical(name) == name or signal.prefix, f"{name} is an alias"
        if signal.source == "sdk":
            if signal is vocab.TOKENS_PER_S:
                continue  # only for token inputs (tokens_per_sample or integer ids)
            assert signal in emitted_signals, f"watch() never emits {name}"
        else:  # logged by the training code, as the README shows
            assert signal in (vocab.LOSS, vocab.EVAL_LOSS), name


def test_watch_emits_only_vocabulary_names_and_forward_time() -> None:
    emitted = sdk_names()
    assert all(vocab.signal_of(n) is not None for n in emitted), sorted(
        n for n in emitted if vocab.signal_of(n) is None
    )
    assert {vocab.FORWARD.name, vocab.DATA_WAIT.name, vocab.GRAD_NORM.name} <= emitted
    # layer names come without the wrapper's `module.` prefix
    assert "grad/norm/0.weight" in emitted


def test_common_hand_logged_names_are_aliases() -> None:
    assert vocab.canonical("grad_norm") == "grad/global_norm"
    assert vocab.canonical("grad_norm/encoder.0.weight") == "grad/norm/encoder.0.weight"
    assert vocab.canonical("data_time") == "perf/data_wait_s"
    assert vocab.canonical("val_loss") == vocab.canonical("eval_loss") == "eval_loss"
    assert vocab.canonical("my_metric") == "my_metric"
    assert vocab.is_rank_local("loss") and vocab.is_rank_local("my_metric")
    assert not vocab.is_rank_local("grad_norm") and not vocab.is_rank_local("grad/norm/fc")
    assert vocab.sync_of("perf/step_time_s") is vocab.Sync.COLLECTIVE_BOUND


def test_resource_limits_are_signals_the_system_sampler_sends() -> None:
    from processors.detectors import ResourceDetector, ResourceParams
    from producers.system import SystemSampler

    sampler = SystemSampler(gpus=False)
    sent = set(sampler.sample())
    sampler.close()
    detector = ResourceDetector()
    for name in ResourceParams().limits:
        signal = vocab.signal_of(name)
        assert signal is not None and signal.source == "sdk", name
    assert detector.wants("sys/host_mem_pct") and "sys/host_mem_pct" in sent
    assert detector.wants("sys/disk_used_pct") and "sys/disk_used_pct" in sent
    assert detector.wants("gpu3/mem_used_pct")  # every GPU, as NVML names them
    assert not detector.wants("gpu3/util_pct")


def test_framework_names_reach_their_signals() -> None:
    from stepstream.vocabulary import canonical

    assert canonical("learning_rate") == "opt/lr/0"  # Hugging Face
    assert canonical("lr") == "opt/lr/0"
    assert canonical("lr-Adam/pg1") == "opt/lr/Adam/pg1"  # Lightning's LearningRateMonitor
    assert canonical("eval_loss") == canonical("val_loss") == "eval_loss"
    assert canonical("train_loss") == "loss"
    assert canonical("grad_norm") == "grad/global_norm"


def test_run_page_sections_follow_the_vocabulary() -> None:
    """One definition of names: the run page's sections come from the vocabulary, the
    user's own metrics first and the SDK's internal series never among them."""
    from query.dashboard.shaping import metric_entries

    cases = {
        "loss": "user",
        "val_loss": "user",
        "accuracy": "user",
        "perf/step_time_s": "performance",
        "data_time": "performance",
        "throughput": "performance",
        "grad_norm": "gradients",
        "grad/norm/fc.weight": "gradients",
        "opt/lr/0": "gradients",
        "sys/host_cpu_pct": "system",
        "sys/proc_rss_bytes": "system",
        "gpu0/mem_used_pct": "gpu",
        "cuda/mem_allocated_bytes": "gpu",
        "heartbeat/step": "internal",
        "stepstream/enqueued": "internal",
        "stepstream/sdk_errors": "internal",
        "log/level": "internal",
    }
    assert {m: vocab.section_of(m) for m in cases} == cases
    entries = metric_entries({m: [1, 0] for m in [*cases, "grad/global_norm"]})
    names = [e["name"] for e in entries]
    assert names[:3] == ["loss", "val_loss", "accuracy"]
    grads = [e["name"] for e in entries if e["section"] == "gradients"]
    assert grads[0] == "grad/global_norm" and grads[-1] == "grad/norm/fc.weight"
    assert [e["per_layer"] for e in entries if e["name"] == "grad/norm/fc.weight"] == [True]
    assert names[-4:] == [n for n in names if cases.get(n) == "internal"]
    assert entries[0]["ranks"] == [0, 1]
