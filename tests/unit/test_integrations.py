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
