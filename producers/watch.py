"""Torch hooks behind `Monitor.watch(model, optimizer)`: gradient, weight and update norms,
the first layer with a non-finite gradient, learning rates and momentum, step time split
into data wait and compute, and throughput.

Everything on the training thread is tensor ops queued on the device (``_foreach_norm``,
one ``stack``) and ``perf_counter`` reads; the stacked norms travel as one tensor to the
publisher thread, where ``tolist()`` (the only host sync) and the per-layer arithmetic run.

Timing is host-side: data wait is from the end of one optimizer step to the next forward,
compute from that forward to the end of the step. On CUDA the host runs ahead of the device,
so compute then means launch time unless something in the step synchronizes.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from producers.mesh import Topology, replication
from producers.phase import PhaseClock
from stepstream import vocabulary as vocab
from stepstream.contract import RecordKind

GLOBAL_NORM = vocab.GRAD_NORM.name
NONFINITE_COUNT = vocab.NONFINITE_GRADS.name
STEP_TIME = vocab.STEP_TIME.name
DATA_WAIT = vocab.DATA_WAIT.name
FORWARD = vocab.FORWARD.name
COMPUTE = vocab.COMPUTE.name
SAMPLES_PER_S = vocab.SAMPLES_PER_S.name
TOKENS_PER_S = vocab.TOKENS_PER_S.name
LAYER_NORM = vocab.GRAD_LAYER_NORM.name
GLOBAL_NORM_SQ = vocab.GRAD_NORM_SQ.name
LAYER_NORM_SQ = vocab.GRAD_LAYER_NORM_SQ.name
SHARD_NORM = vocab.SHARD_NORM.name
WEIGHT_NORM = vocab.WEIGHT_NORM.name
UPDATE_RATIO = vocab.UPDATE_RATIO.name
LR = vocab.LR.name
MOMENTUM = vocab.MOMENTUM.name

PHASE_FORWARD = vocab.PHASE_FORWARD
PHASE_BACKWARD = vocab.PHASE_BACKWARD
PHASE_OPTIMIZER = vocab.PHASE_OPTIMIZER
PHASE_DATA = vocab.PHASE_DATA

Enqueue = Callable[[int | None, RecordKind, Any], None]
#: Told when a part of the SDK failed on the training thread: (part, exception).
OnError = Callable[[str, BaseException], None]

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

#: The parts of `watch()` that fail and turn off independently: a failure in one (a
#: tensor type the norms cannot read) leaves the others (timing, learning rates) running.
PART_GRADS = "watch.grads"
PART_TIMING = "watch.timing"
PART_OPTIMIZER = "watch.optimizer"


_no_grad = torch.no_grad


def _ignore(_phase: str) -> None:
    """No phase clock: phases are not tracked."""


def layer_names(model: torch.nn.Module) -> tuple[list[str], list[torch.nn.Parameter]]:
    """Trainable parameters and their names, without DDP/compile wrapper prefixes."""
    names, params = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            for prefix in ("module.", "_orig_mod."):
                name = name.removeprefix(prefix)
            names.append(name)
            params.append(param)
    return names, params


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module a wrapper (DistributedDataParallel, FSDP-style ``.module``) runs."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def _is_dtensor(tensor: Any) -> bool:
    """True for a DTensor (checked by attribute: importing DTensor costs 0.3 s)."""
    return hasattr(tensor, "to_local") and hasattr(tensor, "placements")


def _local(tensor: Any) -> Any:
    """The rank's local part of a DTensor; a plain tensor itself."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor


class GradStats:
    """Deferred values of one watched step: resolved on the publisher thread."""

    __slots__ = ("index", "names", "order", "parts", "scales", "updates", "weights")

    def __init__(
        self,
        names: Sequence[str],
        index: list[int],
        order: list[int],
        parts: Any,
        weights: bool = True,
        updates: bool = True,
        scales: Sequence[float | None] | None = None,
    ) -> None:
        self.names = names
        self.index = index  # positions (in `names`) of the params that had a gradient
        self.order = order  # positions in the order backward produced their gradients
        # One stacked tensor (or its floats, read on the CPU; or one tensor per device):
        # grad norms[, weight norms[, update norms]]
        self.parts = parts
        self.weights = weights
        self.updates = updates and weights
        # Sharded model: per parameter (in `names` order) 1 / the ranks holding the same
        # local data, or None where the local gradient is a pending partial sum. None for
        # a model every rank holds whole (DDP): the norms are the job's own.
        self.scales = scales

    def resolve(self) -> tuple[dict[str, float], str | None]:
        """Per-layer and global norms, update ratios and the first non-finite layer; for a
        sharded model, this rank's shares of the squared norms instead (see
        `producers.mesh`)."""
        parts = self.parts
        if hasattr(parts, "tolist"):
            flat = parts.tolist()
        else:  # norms read on the training thread (CPU), or one tensor per device
            flat = [p if isinstance(p, float) else p.item() for p in parts]
        k = len(self.index)
        grads = flat[:k]
        weights = flat[k : 2 * k] if self.weights else []
        updates = flat[2 * k : 3 * k] if self.updates else []
        values: dict[str, float] = {}
        by_pos: dict[int, float] = {}
        scales = self.scales
        exact = True
        total_sq = 0.0
        for j, pos in enumerate(self.index):
            name = self.names[pos]
            g = grads[j]
            by_pos[pos] = g
            if scales is None:
                values[LAYER_NORM + name] = g
            else:
                scale = scales[pos]
                if scale is None:
                    exact = False
                else:
                    share = g * g * scale
                    values[LAYER_NORM_SQ + name] = share
                    total_sq += share
            if weights and scales is None:
                # A shard's weight norm is no norm of the model's: left out when sharded.
                values[WEIGHT_NORM + name] = weights[j]
            if updates:  # a ratio: the shard's is an estimate of the parameter's
                u, w = updates[j], weights[j]
                ratio = u / w if w else (0.0 if u == 0 else math.inf)
                values[UPDATE_RATIO + name] = ratio
        if scales is None:
            values[GLOBAL_NORM] = math.sqrt(sum(g * g for g in grads))
        else:
            values[SHARD_NORM] = math.sqrt(sum(g * g for g in grads))
            if exact:  # a share missing a partial sum would understate the job's norm
                values[GLOBAL_NORM_SQ] = total_sq
        bad = [pos for pos in by_pos if not math.isfinite(by_pos[pos])]
        values[NONFINITE_COUNT] = float(len(bad))
        text = None
        if bad:
            ranked = [p for p in self.order if p in bad] or sorted(bad)
            text = f"first non-finite gradient: {self.names[ranked[0]]}"
        return values, text


class NoWatch:
    """What `Monitor.watch()` returns when it could not hook the model (the failure was
    reported): nothing to take off."""

    disabled: frozenset[str] = frozenset({PART_GRADS, PART_TIMING, PART_OPTIMIZER})

    def __init__(self) -> None:
        self.step = 0

    def remove(self) -> None:
        """Nothing was hooked."""


class Watch:
    """The hooks on one model and optimizer; `remove()` takes them all off."""

    def __init__(
        self,
        enqueue: Enqueue,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        every: int = 1,
        tokens_per_sample: int | None = None,
        update_ratio: bool = True,
        weights_every: int | None = None,
        phases: PhaseClock | None = None,
        timing: bool = True,
        on_error: OnError | None = None,
        world: int = 1,
        topology: Topology | None = None,
        start_step: int = 0,
    ) -> None:
        self._enqueue = enqueue
        self._on_error = on_error
        #: Parts that failed once and stay off (`PART_*`).
        self.disabled: set[str] = set()
        # False when a framework callback times the step from its own hooks (Lightning's
        # training_step need not call the module's forward at all).
        self.timing = timing
        # The training thread's phase (see `producers.phase`): one tuple store per change.
        self._phases = phases
        self._enter: Callable[[str], None] = phases.enter if phases is not None else _ignore
        self._optimizer = optimizer
        self.every = max(1, every)
        # Weight norms and update ratios move slowly and cost a copy of the weights plus
        # three more passes over them: by default they come every 10th watched step.
        self.weights_every = max(1, weights_every or 10 * self.every)
        self.tokens_per_sample = tokens_per_sample
        self.update_ratio = update_ratio
        self.names, self.params = layer_names(model)
        self.world = max(1, world)
        self.topology = topology or Topology()
        # Sharded when a parameter is a DTensor (FSDP2, tensor parallel) or the job is a
        # pipeline: then no rank's norms are the model's, and each rank reports its shares.
        self.sharded = self.topology.pp_size > 1 or any(_is_dtensor(p) for p in self.params)
        self._scales: list[float | None] | None = None
        self.step = max(0, start_step)
        self._order: list[int] = []
        self._t_end: float | None = None
        self._t_fwd: float | None = None
        self._t_inner: float | None = None
        self._forward_s = 0.0
        self._samples = 0
        self._tokens = 0
        self._pending: tuple[list[int], list[torch.Tensor], bool, list[torch.Tensor] | None] | None
        self._pending = None
        self._before: tuple[list[int], list[torch.Tensor]] | None = None
        # Forward time is taken around the wrapped module (DDP's `.module`), so it leaves
        # out what the wrapper does before it (buffer broadcast, a collective): under data
        # parallelism data wait + forward is the time a rank spends before its first
        # collective, the one number that names a straggler.
        inner = _unwrapped(model)
        # Every hook catches its own failure (`_guarded`): a monitor must never raise into
        # the training step, whatever the model, wrapper or tensor type.
        self._handles = [
            # First of the model's pre-hooks: FSDP2's root hook all-gathers parameters,
            # which waits for the slowest rank; behind it, every rank's data wait would
            # include its slowest peer's.
            model.register_forward_pre_hook(
                self._guarded(PART_TIMING, self._on_forward), with_kwargs=True, prepend=True
            ),
            inner.register_forward_pre_hook(self._guarded(PART_TIMING, self._on_inner_forward)),
            inner.register_forward_hook(self._guarded(PART_TIMING, self._on_inner_forward_end)),
            optimizer.register_step_pre_hook(self._guarded(PART_OPTIMIZER, self._pre_step)),
            optimizer.register_step_post_hook(self._guarded(PART_OPTIMIZER, self._post_step)),
        ]
        # Which layer's gradient came first is the order backward produces them: learn it
        # once from the first backward, then drop these per-parameter hooks.
        self._order_handles = [
            p.register_post_accumulate_grad_hook(self._guarded(PART_GRADS, self._order_hook(i)))
            for i, p in enumerate(self.params)
        ]

    def _guarded(self, part: str, hook: F) -> F:
        """`hook`, made unable to raise: a failure is reported once (`on_error`), turns
        `part` off for good, and the hook returns None (torch then leaves the step's
        arguments and outputs as they were)."""
        disabled = self.disabled

        @functools.wraps(hook)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if part in disabled:
                return None
            try:
                return hook(*args, **kwargs)
            except Exception as exc:
                self._fail(part, exc)
                return None

        return guarded  # type: ignore[return-value]

    def _fail(self, part: str, exc: BaseException) -> None:
        """Turn `part` off and report its failure once."""
        if part in self.disabled:
            return
        self.disabled.add(part)
        if part == PART_GRADS:
            self._pending = None
        if self._on_error is not None:
            self._on_error(part, exc)
        else:
            log.warning("stepstream: %s failed and is now off", part, exc_info=exc)

    def _order_hook(self, pos: int) -> Callable[[torch.Tensor], None]:
        def hook(_param: torch.Tensor) -> None:
            if pos not in self._order:
                self._order.append(pos)

        return hook

    def _on_forward(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if not module.training:
            # An evaluation between two steps (Trainer.evaluate, a validation loop): not
            # this step's forward, its time or its samples, and not the training phase.
            return
        self._enter(PHASE_FORWARD)
        if self._t_fwd is None:
            self._t_fwd = time.perf_counter()
        # Hugging Face models are called with keywords (input_ids=...): the first tensor.
        first = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(first, torch.Tensor) and first.dim() > 0:
            batch = first.shape[0]
            self._samples += batch
            if self.tokens_per_sample:
                self._tokens += batch * self.tokens_per_sample
            elif first.dim() >= 2 and not first.is_floating_point():
                self._tokens += batch * first.shape[1]  # token ids (batch, sequence)

    def _on_inner_forward(self, module: torch.nn.Module, _args: tuple[Any, ...]) -> None:
        if not module.training:
            return
        self._enter(PHASE_FORWARD)
        self._t_inner = time.perf_counter()

    def _on_inner_forward_end(self, module: torch.nn.Module, _args: Any, _out: Any) -> None:
        if not module.training:
            return
        self._enter(PHASE_BACKWARD)  # then the loss, backward and the gradient all-reduce
        if self._t_inner is not None:
            self._forward_s += time.perf_counter() - self._t_inner
            self._t_inner = None

    def _watched(self) -> bool:
        return self.step % self.every == 0

    def _pre_step(
        self, _optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        self._enter(PHASE_OPTIMIZER)
        if not self._watched():
            return None
        # `args` holds the optimizer itself first, then step()'s own positional arguments.
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._read_grads_safely()
            return None

        # step(closure) runs forward and backward inside the step (Lightning, LBFGS): the
        # gradients exist only once the closure returned, so read them there. The closure's
        # own exceptions are the training code's: they propagate untouched.
        def read_after(*c_args: Any, **c_kwargs: Any) -> Any:
            result = closure(*c_args, **c_kwargs)
            self._enter(PHASE_OPTIMIZER)
            self._read_grads_safely()
            return result

        if "closure" in kwargs:
            return args, {**kwargs, "closure": read_after}
        return (args[0], read_after, *args[2:]), kwargs

    def _read_grads_safely(self) -> None:
        if PART_GRADS in self.disabled:
            return
        try:
            self._read_grads()
        except Exception as exc:
            self._fail(PART_GRADS, exc)

    def _read_grads(self) -> None:
        index = [i for i, p in enumerate(self.params) if p.grad is not None]
        params: list[torch.Tensor] = [self.params[i] for i in index]
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        if self.sharded:
            if self._scales is None:
                self._scales = self._shard_scales()
            # The local shards: a norm of a DTensor would be a collective (or fail).
            grads = [_local(g) for g in grads]
            params = [_local(p) for p in params]
        # Gradients hold no graph (unless backward ran with create_graph=True), so their
        # norms need no grad-mode switch: two context managers a step were a third of
        # what watch() cost the training thread besides the norms themselves.
        if grads[0].requires_grad:
            with _no_grad():
                norms = list(torch._foreach_norm(grads))
        else:
            norms = list(torch._foreach_norm(grads))
        weights = self.step % self.weights_every == 0
        before: list[torch.Tensor] | None = None
        if weights:
            with _no_grad():
                norms += torch._foreach_norm(params)
                if self.update_ratio:
                    before = self._copy_weights(index, params)
        self._pending = (index, norms, weights, before)

    def _copy_weights(self, index: list[int], params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The weights before the optimizer step, in buffers kept between weight steps
        when every parameter is on the CPU: there a fresh copy of the model is fresh pages
        from the OS every time (the allocator hands large blocks back), and faulting them
        in cost more than the copy. CUDA's caching allocator reuses its blocks anyway, and
        a second resident copy of a model on a GPU is memory the model may need."""
        kept = self._before
        if kept is not None and kept[0] == index:
            torch._foreach_copy_(kept[1], params)
            return kept[1]
        copies = list(torch._foreach_mul(params, 1.0))
        if all(p.device.type == "cpu" for p in params):
            self._before = (index, copies)
        return copies

    def _shard_scales(self) -> list[float | None]:
        """Per parameter, 1 / the ranks holding the same local gradient data (None where it
        is a pending partial sum): read once, placements do not change."""
        scales: list[float | None] = []
        for param in self.params:
            grad = param.grad if param.grad is not None else param
            copies, exact = replication(grad, self.world, self.topology.pp_size)
            scales.append(1.0 / copies if exact else None)
        return scales

    def _post_step(self, *_: Any) -> None:
        now = time.perf_counter()
        try:
            self._enter(PHASE_DATA)  # waiting for the next batch
            if self._phases is not None and self._t_end is not None:
                self._phases.step_times.append(now - self._t_end)
            if self._watched():
                if PART_GRADS not in self.disabled:
                    try:
                        self._emit_grads()
                    except Exception as exc:
                        self._fail(PART_GRADS, exc)
                if PART_TIMING not in self.disabled:
                    try:
                        self._emit(now)
                    except Exception as exc:
                        self._fail(PART_TIMING, exc)
            if self._order_handles and len(self._order) == len(self.params):
                for handle in self._order_handles:
                    handle.remove()
                self._order_handles = []
        finally:
            # The step count moves on whatever failed: steps stay optimizer steps.
            self._t_end = now
            self._t_fwd = None
            self._forward_s = 0.0
            self._samples = 0
            self._tokens = 0
            self.step += 1

    def _emit_grads(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            index, norms, weights, before = pending
            if before is not None:
                with _no_grad():
                    params: list[torch.Tensor] = [self.params[i] for i in index]
                    if self.sharded:
                        params = [_local(p) for p in params]
                    torch._foreach_sub_(before, params)
                    norms += list(torch._foreach_norm(before))
            try:
                # Norms hold no graph (gradients, or taken under no_grad): no mode switch.
                # One tensor also on the CPU: handing over the 0-d norms unstacked saved
                # the stack here but cost the step more (their frees and item() calls on
                # the publisher thread: +2 to +6 % of a step, measured).
                parts: Any = torch.stack(norms)
            except RuntimeError:  # parameters on several devices: convert one by one
                parts = norms
            else:
                if parts.device.type == "cpu":
                    # On the CPU, reading the norms costs a microsecond and no sync; a
                    # tensor held in the queue until the flush slowed the next steps.
                    parts = parts.tolist()
            stats = GradStats(
                self.names, index, self._order, parts, weights, before is not None, self._scales
            )
            self._enqueue(self.step, RecordKind.GRAD, stats)

    def _emit(self, now: float) -> None:
        values: dict[str, Any] = {}
        for g, group in enumerate(self._optimizer.param_groups):
            values[f"{LR}{g}"] = group.get("lr")
            momentum = group.get("momentum")
            if momentum is None and "betas" in group:
                momentum = group["betas"][0]
            if momentum is not None:
                values[f"{MOMENTUM}{g}"] = momentum
        if self.timing and self._t_end is not None:
            step_time = now - self._t_end
            values[STEP_TIME] = step_time
            if self._t_fwd is not None:
                values[DATA_WAIT] = self._t_fwd - self._t_end
                values[COMPUTE] = now - self._t_fwd
                if self._forward_s > 0:
                    values[FORWARD] = self._forward_s
            if self._phases is not None and self._phases.declared:
                # Declared work (eval, checkpoint) inside this step: its step time and,
                # when it ran between two steps, its data wait include these seconds.
                for phase, seconds in self._phases.take_declared().items():
                    values[vocab.DECLARED_TIME[phase].name] = seconds
            if step_time > 0 and self._samples:
                values[SAMPLES_PER_S] = self._samples / step_time
                if self._tokens:
                    values[TOKENS_PER_S] = self._tokens / step_time
        self._enqueue(self.step, RecordKind.TRAIN, values)

    def remove(self) -> None:
        """Take every hook off the model, optimizer and parameters."""
        for handle in self._handles + self._order_handles:
            handle.remove()
        self._handles = []
        self._order_handles = []
