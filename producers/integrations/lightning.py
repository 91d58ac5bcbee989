"""PyTorch Lightning callback: one line in ``Trainer(callbacks=[...])`` instruments a job.

    from producers.integrations.lightning import StepstreamCallback

    trainer = L.Trainer(callbacks=[StepstreamCallback("my-run")], strategy="ddp", ...)

What it sends, per rank (rank, world and local rank are the trainer's):

- what ``self.log`` logs in training, validation and test, per step and per epoch, under
  the vocabulary's names where one applies (`producers.integrations.names`);
- `Monitor.watch()` on the LightningModule and the first optimizer: gradient and weight
  norms, update ratios, the first non-finite layer, learning rate and momentum; the
  learning rates of the other optimizers per step;
- step time from the batch hooks, split into data wait and compute, and samples/s;
- ``event/checkpoint`` at every checkpoint; an exception Lightning reports (``on_exception``)
  as the rank's crash, traceback included; validation runs as the ``eval`` phase.

Under ``FSDPStrategy`` (FSDP1) the parameters are slices of flat parameters: the callback
tells watch() so (`producers.fsdp1`), and each rank sends its shares of the
squared gradient norms, which stage 2 adds into the job's norms (``examples/lightning_fsdp.py``).

The callback opens the monitor at ``setup`` and closes it at ``teardown`` (the rank is then
finished) unless a `monitor` was given, which stays the caller's. Steps are optimizer-step
indices from 0, as in watch(): the values of a batch are sent at ``global_step - 1``.
"""

from __future__ import annotations

import importlib
import time
from contextlib import ExitStack
from typing import Any

from producers.integrations.names import batch_size, lightning_name, optimizer_lr_name
from producers.integrations.session import MonitorSession
from producers.integrations.timing import StepTimer
from producers.monitor import Monitor
from stepstream import vocabulary as vocab
from stepstream.errors import MissingExtraError


def _callback_base() -> Any:
    """Lightning's Callback class: from ``lightning`` 2.x, else the standalone
    ``pytorch_lightning`` package."""
    for module in ("lightning.pytorch.callbacks", "pytorch_lightning.callbacks"):
        try:
            return importlib.import_module(module).Callback
        except ImportError:
            continue
    raise MissingExtraError("PyTorch Lightning", "lightning")


Callback: Any = _callback_base()

__all__ = ["StepstreamCallback"]

_CHECKPOINT = vocab.CHECKPOINT.name
_STAGES = {"validate": "validate", "test": "test"}


class StepstreamCallback(Callback, MonitorSession):
    """Publishes a Lightning job's telemetry through the stepstream SDK (module docstring).

    run: the run id (default: ``STEPSTREAM_RUN``, torchrun's or SLURM's id, else rank 0's
        clock, agreed by every rank). monitor: publish through this monitor instead of
        opening one (it is then never closed here). watch, every, weights_every: the
        `Monitor.watch()` call. node: overrides the node name (default: SLURM's or the
        host name). init_kwargs: settings for `producers.init` (``kafka_bootstrap=...``).
    """

    def __init__(
        self,
        run: str | None = None,
        *,
        monitor: Monitor | None = None,
        watch: bool = True,
        every: int = 1,
        weights_every: int | None = None,
        node: str | None = None,
        **init_kwargs: Any,
    ) -> None:
        super().__init__()
        self._init_session(
            run,
            monitor=monitor,
            watch=watch,
            every=every,
            weights_every=weights_every,
            node=node,
            init_kwargs=init_kwargs,
        )
        self._timer = StepTimer()
        self._phase = ExitStack()
        # Per name, the storage of the value last sent and that value (held, so the storage
        # cannot be reused): Lightning hands out a new detached view at every read, but a
        # new value only when something was logged, so a value is sent once, not at every
        # later hook that finds it still in `logged_metrics`.
        self._sent: dict[str, tuple[int, Any]] = {}

    # Lifecycle

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Open this rank's monitor (unless one was given)."""
        self._open(
            trainer.global_rank,
            trainer.world_size,
            trainer.local_rank,
            lambda run: str(trainer.strategy.broadcast(run, src=0)),
        )

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Hook the module and the first optimizer (the optimizers exist from here)."""
        if trainer.optimizers:
            # The batch hooks time the step (timing off): training_step need not call the
            # module's forward, so forward hooks may never fire.
            # The strategy's wrapper (FSDPStrategy's FSDP1 root) holds the flat parameters.
            wrapper = trainer.strategy.model
            self._start_watch(
                pl_module,
                trainer.optimizers[0],
                trainer.global_step,
                timing=False,
                wrappers=[wrapper] if wrapper is not None else [],
            )

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Take the hooks off and close the monitor this callback opened (the rank is then
        finished); the next ``setup`` opens a new one."""
        self._phase.close()
        self._end()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """The rank crashed: its traceback and crashed status go out now, flushed."""
        if self.monitor is None:
            return
        self.monitor.log_exception(exception)
        self.teardown(trainer, pl_module, "fit")

    # Training

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Send the previous epoch's values (logged up to the module's own epoch-end hook,
        which runs after this callback's ``on_train_epoch_end``)."""
        self._send(trainer, "train", on_step=False)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        """The batch is here: its data wait ends."""
        self._timer.start(time.perf_counter())

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Send the step: what was logged, its timing, the other optimizers' rates."""
        values = self._timer.end(time.perf_counter(), batch_size(batch))
        optimizers = trainer.optimizers
        first = 1 if self._watch is not None else 0
        for k in range(first, len(optimizers)):
            for g, group in enumerate(optimizers[k].param_groups):
                values[optimizer_lr_name(k, g)] = group.get("lr")
        self._send(trainer, "train", on_step=True, extra=values)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """The last epoch's values."""
        self._send(trainer, "train", on_step=False)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: Any) -> None:
        """Mark the step a checkpoint was taken at (every rank builds it)."""
        if self.monitor is not None:
            self.monitor.log(self._step(trainer), **{_CHECKPOINT: 1.0})

    # Validation and test

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        """Evaluation is the ``eval`` phase: long by nature, named if it hangs."""
        self._eval_start()

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        """As validation."""
        self._eval_start()

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int, dl: int = 0
    ) -> None:
        """Per-batch validation values (``on_step=True`` logs)."""
        if not trainer.sanity_checking:
            self._send(trainer, "validate", on_step=True)

    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int, dl: int = 0
    ) -> None:
        """Per-batch test values."""
        self._send(trainer, "test", on_step=True)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """The validation epoch's values (``val_loss`` -> ``eval_loss``)."""
        if not trainer.sanity_checking:
            self._send(trainer, "validate", on_step=False)
        self._phase.close()

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        """The test epoch's values."""
        self._send(trainer, "test", on_step=False)
        self._phase.close()

    # Helpers

    def _eval_start(self) -> None:
        self._timer.pause()
        self._phase.close()
        if self.monitor is not None:
            self._phase.enter_context(self.monitor.phase(vocab.PHASE_EVAL))

    @staticmethod
    def _step(trainer: Any) -> int:
        return max(int(trainer.global_step) - 1, 0)

    def _send(
        self, trainer: Any, stage: str, on_step: bool, extra: dict[str, Any] | None = None
    ) -> None:
        monitor = self.monitor
        if monitor is None:
            return
        values = dict(extra) if extra else {}
        sent = self._sent
        for name, value in trainer.logged_metrics.items():
            key = value.data_ptr() if hasattr(value, "data_ptr") else id(value)
            last = sent.get(name)
            if last is not None and last[0] == key:
                continue
            sent[name] = (key, value)
            values[lightning_name(name, stage, on_step)] = value
        if not values:
            return
        if stage == "train":
            monitor.log(self._step(trainer), **values)
        else:
            monitor.log_eval(self._step(trainer), **values)
