"""Hugging Face ``Trainer`` callback: one line in ``Trainer(callbacks=[...])``.

    from producers.integrations.transformers import StepstreamCallback

    trainer = Trainer(model, args, train_dataset=..., callbacks=[StepstreamCallback("my-run")])

What it sends, per process (rank, world and local rank are ``args.process_index``,
``args.world_size`` and ``args.local_process_index``):

- every ``on_log`` dict: ``loss``, evaluation metrics (``eval_loss`` and the rest, kind
  eval) and, without watch(), ``grad_norm`` and ``learning_rate`` under the vocabulary's
  names (`producers.integrations.names.hf_log`);
- `Monitor.watch()` on the model and its optimizer (accelerate's wrapper unwrapped):
  gradient and weight norms, update ratios, learning rate, momentum, step time split into
  data wait and compute, samples and tokens per second, every `every` steps;
- ``event/checkpoint`` at every save.

The callback opens the monitor at ``on_train_begin`` and closes it at ``on_train_end``
(the rank is then finished) unless a `monitor` was given. ``Trainer`` has no exception
hook: an exception leaving ``trainer.train()`` reaches the SDK's own excepthook, which
sends the traceback and marks the rank crashed; one the script catches can be reported
with `StepstreamCallback.log_exception`. Steps are optimizer-step indices from 0, as in
watch(): a log at ``global_step`` N is sent at step N - 1.

Under data parallelism the ``loss`` the Trainer logs is already averaged over the ranks.
Under FSDP (``fsdp_config``) the model the callback is handed is the sharded one: FSDP2's
DTensor parameters, or FSDP1's flat-parameter slices (`producers.fsdp1`);
each rank then sends its shares of the squared gradient norms, which stage 2 adds into the
job's norms (``examples/hf_trainer_fsdp.py``, GPUs: accelerate shards only there).
"""

from __future__ import annotations

from typing import Any

from producers.integrations.names import hf_log
from producers.integrations.session import MonitorSession
from producers.monitor import Monitor
from stepstream import vocabulary as vocab
from stepstream.contract import RecordKind
from stepstream.errors import MissingExtraError

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise MissingExtraError("Hugging Face transformers", "transformers") from exc

__all__ = ["StepstreamCallback"]


def _agree(run: str) -> str:
    """Rank 0's run id on every rank (the Trainer has set up torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return run
    box = [run]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


class StepstreamCallback(TrainerCallback, MonitorSession):
    """Publishes a ``Trainer`` job's telemetry through the stepstream SDK (module
    docstring).

    run: the run id (default: ``STEPSTREAM_RUN``, torchrun's or SLURM's id, else rank 0's
        clock, agreed by every rank). monitor: publish through this monitor instead of
        opening one (never closed here). watch, every, weights_every: the
        `Monitor.watch()` call. node: overrides the node name. init_kwargs: settings for
        `producers.init`.
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
        self._init_session(
            run,
            monitor=monitor,
            watch=watch,
            every=every,
            weights_every=weights_every,
            node=node,
            init_kwargs=init_kwargs,
        )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Open this process's monitor and watch the model and optimizer."""
        self._open(args.process_index, args.world_size, args.local_process_index, _agree)
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is not None and optimizer is not None:
            # accelerate's AcceleratedOptimizer wraps the torch optimizer and has no step
            # hooks of its own: hook the optimizer it steps.
            self._start_watch(model, getattr(optimizer, "optimizer", optimizer), state.global_step)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
    ) -> None:
        """Send one Trainer log: training values as kind train, evaluation as eval."""
        if self.monitor is None or not logs:
            return
        mapped = hf_log(logs, watched=self._watch is not None)
        if not mapped.values:
            return
        step = max(int(state.global_step) - 1, 0)
        if mapped.kind == RecordKind.EVAL:
            self.monitor.log_eval(step, **mapped.values)
        else:
            self.monitor.log(step, **mapped.values)

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        """Mark the step a checkpoint was saved at."""
        if self.monitor is not None:
            self.monitor.log(max(int(state.global_step) - 1, 0), **{vocab.CHECKPOINT.name: 1.0})

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        """Take the hooks off and close the monitor this callback opened: the rank is
        finished."""
        self.close()

    def log_exception(self, exc: BaseException) -> None:
        """Report an exception the script caught around ``trainer.train()``: its traceback,
        the rank crashed, the monitor closed (if this callback opened it)."""
        if self.monitor is not None:
            self.monitor.log_exception(exc)
        self.close()

    def close(self) -> None:
        """Remove the hooks and close the monitor this callback opened."""
        self._end()
