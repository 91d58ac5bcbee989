"""Framework callbacks: the name mapping, step timing, and imports that stay optional."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from producers.integrations.names import batch_size, hf_log, lightning_name, optimizer_lr_name
from producers.integrations.timing import StepTimer
from stepstream.contract import RecordKind

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_importing_the_sdk_imports_no_framework() -> None:
    done = _python(
        f"""
        import sys
        import producers, producers.integrations, producers.integrations.names
        import producers.integrations.session, producers.integrations.timing
        from producers import watch
        loaded = [m for m in {FRAMEWORKS!r} if m in sys.modules]
        print(loaded)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("lightning", ("lightning", "pytorch_lightning"), "stepstream[lightning]"),
        ("transformers", ("transformers",), "stepstream[transformers]"),
    ],
)
def test_a_missing_framework_names_the_extra_to_install(
    module: str, blocked: tuple[str, ...], extra: str
) -> None:
    done = _python(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError("no " + name)
        sys.meta_path.insert(0, Block())
        from stepstream.errors import MissingExtraError
        try:
            import producers.integrations.{module}
        except MissingExtraError as exc:
            assert isinstance(exc, ImportError)
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert f"pip install '{extra}'" in done.stdout


@pytest.mark.parametrize(
    ("name", "stage", "on_step", "sent"),
    [
        ("train_loss_step", "train", True, "loss"),  # forked on_step + on_epoch
        ("train_loss", "train", True, "loss"),  # on_step only
        ("loss", "train", True, "loss"),
        ("train_loss_epoch", "train", False, "train_loss_epoch"),  # an epoch mean stays
        ("grad_norm", "train", True, "grad/global_norm"),
        ("lr-Adam", "train", True, "opt/lr/Adam"),  # LearningRateMonitor's name
        ("train_acc", "train", True, "train_acc"),  # the user's own name
        ("val_loss", "validate", False, "eval_loss"),
        ("val_loss_epoch", "validate", False, "eval_loss"),
        ("val_loss_step", "validate", True, "val_loss_step"),  # one per eval batch
        ("val_acc", "validate", False, "val_acc"),
        ("test_loss", "test", False, "test_loss"),
    ],
)
def test_lightning_names(name: str, stage: str, on_step: bool, sent: str) -> None:
    assert lightning_name(name, stage, on_step) == sent


def test_hf_training_log_with_watch_drops_what_watch_sends() -> None:
    log = {"loss": 2.5, "grad_norm": 1.5, "learning_rate": 1e-3, "epoch": 0.5}
    watched = hf_log(log, watched=True)
    assert watched.kind == RecordKind.TRAIN
    assert watched.values == {"loss": 2.5, "epoch": 0.5}
    alone = hf_log(log, watched=False)
    assert alone.values == {
        "loss": 2.5,
        "grad/global_norm": 1.5,
        "opt/lr/0": 1e-3,
        "epoch": 0.5,
    }


def test_hf_eval_and_summary_logs() -> None:
    ev = hf_log({"eval_loss": 3.0, "eval_runtime": 0.2, "eval_acc": 0.5, "epoch": 1.0}, True)
    assert ev.kind == RecordKind.EVAL
    assert ev.values == {"eval_loss": 3.0, "eval_runtime": 0.2, "eval_acc": 0.5, "epoch": 1.0}
    summary = hf_log(
        {"train_runtime": 9.7, "train_loss": 3.9, "total_flos": 1e8, "epoch": 0.4}, True
    )
    # train_loss is the mean of the losses already sent: it must not land as a loss point
    assert summary.kind == RecordKind.TRAIN
    assert summary.values == {"train_runtime": 9.7, "total_flos": 1e8, "epoch": 0.4}
    assert hf_log({"note": "text", "flag": True}, True).values == {}


def test_learning_rate_names_per_optimizer() -> None:
    assert optimizer_lr_name(0, 1) == "opt/lr/1"
    assert optimizer_lr_name(2, 0) == "opt/lr/opt2/0"


def test_batch_size_finds_the_first_tensor() -> None:
    x = torch.zeros(7, 3)
    assert batch_size(x) == 7
    assert batch_size((x, torch.zeros(7))) == 7
    assert batch_size({"input_ids": torch.zeros(5, 16, dtype=torch.long)}) == 5
    assert batch_size([torch.tensor(1.0), x]) == 7  # a 0-d tensor is no batch
    assert batch_size("text") is None


def test_step_timer_splits_data_wait_and_compute() -> None:
    timer = StepTimer()
    timer.start(10.0)
    first = timer.end(10.5, samples=8)
    assert first == {"perf/compute_s": 0.5}  # no step ended before: no data wait yet
    timer.start(10.7)
    second = timer.end(11.5, samples=8)
    assert math.isclose(second["perf/data_wait_s"], 0.2)
    assert math.isclose(second["perf/compute_s"], 0.8)
    assert math.isclose(second["perf/step_time_s"], 1.0)
    assert math.isclose(second["perf/samples_per_s"], 8.0)
    timer.pause()  # a validation run: not data wait
    timer.start(20.0)
    assert set(timer.end(20.1)) == {"perf/compute_s"}


def test_fsdp1_names_lose_the_wrapper_modules() -> None:
    from producers.fsdp1 import clean_name

    assert clean_name("net.0._fsdp_wrapped_module.weight") == "net.0.weight"
    assert clean_name("_fsdp_wrapped_module.h.0._checkpoint_wrapped_module.w") == "h.0.w"
    assert clean_name("net.0.weight") == "net.0.weight"


def test_fsdp1_adapt_leaves_a_model_fsdp_did_not_flatten() -> None:
    from producers.fsdp1 import adapt_watch
    from producers.watch import Watch

    model = torch.nn.Linear(4, 2)
    watch = Watch(lambda *_: None, model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert not adapt_watch(watch, [model], world=2)
    assert not watch.sharded and watch.names == ["weight", "bias"]
    watch.remove()


def test_fsdp1_one_rank_stays_replicated_under_its_own_names() -> None:
    """A real FSDP1 model on one gloo rank (CPU, each Linear its own unit), in a child
    process (it owns the process group). FSDP runs one rank as NO_SHARD whatever it was
    asked: the watch keeps reporting the whole norm (no shares), equal to FSDP's
    clip_grad_norm_, under the model's own names. The sharded case (2 ranks, shares
    combined by stage 2) is tests/integration/test_examples.py's Lightning FSDP job."""
    done = _python(
        """
        import math
        import torch, torch.distributed as dist
        from torch import nn
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        from producers.fsdp1 import adapt_watch
        from producers.watch import Watch

        dist.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:0")
        torch.manual_seed(0)
        inner = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        model = FSDP(inner, auto_wrap_policy=ModuleWrapPolicy({nn.Linear}),
                     device_id=torch.device("cpu"), use_orig_params=True)
        opt = torch.optim.SGD(inner.parameters(), lr=0.1)
        sent = []
        watch = Watch(lambda step, kind, v: sent.append(v), inner, opt)
        print(adapt_watch(watch, [inner, model], world=1), watch.sharded, watch.names)
        model(torch.randn(3, 4)).sum().backward()
        reference = float(model.clip_grad_norm_(math.inf))
        opt.step()
        values = [v for v in sent if hasattr(v, "resolve")][0].resolve()[0]
        print(math.isclose(values["grad/global_norm"], reference, rel_tol=1e-6))
        watch.remove()
        dist.destroy_process_group()
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == [
        "False False ['0.weight', '0.bias', '2.weight', '2.bias']",
        "True",
    ], done.stdout
