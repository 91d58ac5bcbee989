"""The user-facing handle a training script holds: `init()` once, `log()` every step."""

from __future__ import annotations

import atexit
import logging
import sys
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from producers.control import ActionListener
from producers.deferred import Deferred
from producers.identity import Identity, detect_identity
from producers.loghandler import LOG_LEVEL, ShippingHandler
from producers.periodic import Ticker
from producers.phase import PhaseClock, StackCapture
from producers.publisher import ProducerFactory, Publisher, PublisherStats, kafka_producer
from producers.shutdown import CrashHooks, format_traceback
from producers.system import SystemSampler
from stepstream.contract import ControlAction, RecordKind
from stepstream.settings import Settings
from stepstream.vocabulary import PHASE_OUTSIDE

if TYPE_CHECKING:
    import torch

    from producers.mesh import Topology
    from producers.watch import NoWatch, Watch

_TRAIN = RecordKind.TRAIN
log = logging.getLogger(__name__)


def _shutdown(
    publisher: Publisher,
    ticker: Ticker,
    hooks: CrashHooks,
    handler: logging.Handler | None,
    timeout: float,
) -> None:
    # A plain function (not a bound method) so that the finalizer does not keep the
    # Monitor alive; runs at close(), at interpreter exit, or when the Monitor is collected.
    if handler is not None:
        logging.getLogger().removeHandler(handler)
    hooks.uninstall()
    ticker.stop()
    publisher.close(timeout)


class Monitor:
    """Publishes one rank's telemetry. `log()` only enqueues; sending happens elsewhere.

    Use as a context manager, or call `close()`; an interpreter exit, SIGTERM and an
    uncaught exception flush too.
    """

    def __init__(
        self,
        identity: Identity,
        settings: Settings,
        producer_factory: ProducerFactory = kafka_producer,
    ) -> None:
        self.identity = identity
        self.settings = settings
        self._step: int | None = None
        self._status: str | None = None  # closing or crashed; else derived from _step
        self._watches: list[Watch | NoWatch] = []
        #: SDK parts that failed once (reported once each).
        self._failed_parts: set[str] = set()
        #: The job's device mesh, when `init(mesh=...)` gave one (see `watch`).
        self.mesh: Any = None
        #: The training thread's phase (the thread that creates the monitor).
        self._phases = PhaseClock()
        self._publisher = Publisher(identity, settings, producer_factory)
        spool_root = settings.resolved_spool_dir()
        disk = spool_root if spool_root.exists() else settings.state_dir.anchor or "/"
        self._ticker = Ticker(
            self._publisher,
            step=lambda: self._step,
            status=self._status_now,
            heartbeat_s=settings.heartbeat_interval_s,
            system_s=settings.system_interval_s,
            sampler_factory=(lambda: SystemSampler(disk)) if settings.system_interval_s else None,
            phases=self._phases,
            stacks=StackCapture(self._phases) if settings.capture_stacks else None,
        )
        self._handler: ShippingHandler | None = None
        self._actions: ActionListener | None = None
        # On a crash or SIGTERM, spooled is as good as sent: do not wait for a broker.
        self._hooks = CrashHooks(
            self._on_crash,
            lambda timeout: self._publisher.flush(timeout, persist=True),
            settings.shutdown_timeout_s,
        )
        if settings.capture_logs:
            self._handler = ShippingHandler(self._publisher, lambda: self._step)
            logging.getLogger().addHandler(self._handler)
        self._hooks.install(excepthooks=settings.capture_logs, sigterm=settings.handle_sigterm)
        self._enqueue = self._publisher.enqueue  # one attribute lookup less per log()
        #: torch's tensor class when the process has loaded torch (never imported here).
        torch_module = sys.modules.get("torch")
        self._tensor: type[torch.Tensor] | None = getattr(torch_module, "Tensor", None)
        self._ticker.start()
        self._finalizer = weakref.finalize(
            self,
            _shutdown,
            self._publisher,
            self._ticker,
            self._hooks,
            self._handler,
            settings.shutdown_timeout_s,
        )
        atexit.register(self._finalizer)

    @property
    def run(self) -> str:
        """The run id every record of this monitor belongs to."""
        return self.identity.run

    @property
    def stats(self) -> PublisherStats:
        """Counters: enqueued, dropped, sent, spooled and replayed records, send errors."""
        return self._publisher.stats

    def log(self, step: int | None = None, /, **values: Any) -> None:
        """Record training metrics at `step`: numbers or 0-d tensors. A tensor on a device
        (GPU) is read off the training thread (reading it here would wait for the device);
        a CPU tensor is read here. Never raises: a value it cannot read is left to the
        publisher, which skips it (``stepstream/skipped_values``)."""
        if step is not None:
            self._step = step
        tensor = self._tensor
        if tensor is not None:
            for name, value in values.items():
                # A CPU scalar reads in a microsecond. Held in the queue until the flush
                # instead, the step's tensors slowed the training thread itself by 3 %
                # (measured: 0.58 ms CPU steps, 20 values, one a loss tensor).
                if type(value) is tensor and value.is_cpu and value.numel() == 1:
                    try:
                        values[name] = value.item()
                    except Exception as exc:  # a tensor subclass item() refuses
                        self._sdk_error("log", exc)
        self._enqueue(step, _TRAIN, values)

    def log_eval(self, step: int | None = None, /, **values: Any) -> None:
        """Record evaluation metrics at `step`."""
        self._publisher.enqueue(step, RecordKind.EVAL, values)

    def log_kind(self, kind: RecordKind, step: int | None = None, /, **values: Any) -> None:
        """Record values of any record kind (system, grad, quality, ...)."""
        self._publisher.enqueue(step, kind, values)

    def log_quality(self, step: int | None, stats: Deferred | dict[str, Any]) -> None:
        """Record sufficient statistics from `producers.quality_stats` (kind quality)."""
        self._publisher.enqueue(step, RecordKind.QUALITY, stats)

    def _sdk_error(self, part: str, exc: BaseException) -> None:
        """A part of the SDK failed on the training thread: count it
        (``stepstream/sdk_errors``) and log it with its traceback, once per part (the
        part turns itself off, or fails the same way again). Training goes on."""
        self._publisher.stats.sdk_errors += 1
        if part in self._failed_parts:
            return
        self._failed_parts.add(part)
        log.error(
            "stepstream: %s failed and is turned off; training goes on (report this with "
            "the traceback below)",
            part,
            exc_info=(type(exc), exc, exc.__traceback__),
        )

    def watch(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        every: int = 1,
        tokens_per_sample: int | None = None,
        update_ratio: bool = True,
        weights_every: int | None = None,
        timing: bool = True,
        mesh: Any = None,
        start_step: int = 0,
    ) -> Watch | NoWatch:
        """Hook `model` and `optimizer`: every `every` optimizer steps, publish global and
        per-layer gradient norms, weight norms, update/weight ratios, the first layer with a
        non-finite gradient (kind grad), learning rates, momentum, step time, data wait,
        compute time and samples/s, tokens/s (kind train). Weight norms and update ratios
        come every `weights_every` steps (default 10 x `every`): they need a copy of the
        weights; `update_ratio=False` skips that copy. Steps count optimizer steps from
        `start_step` (0; a job resumed from a checkpoint passes the step it resumes at, so
        its steps continue the run's instead of counting again from 0).
        `timing=False` leaves step time, data wait and throughput to the caller (a
        framework callback that times the step from its own hooks).

        Sharded models (FSDP2 ``fully_shard``, tensor parallel DTensors, pipeline stages)
        are read from each rank's local shards, with no collective: each rank reports its
        share of the squared norms and stage 2 adds them into the job's norms. The device
        mesh is found from the parameters, or given as `mesh` (or ``init(mesh=...)``; a
        pipeline's plain modules carry none); its coordinates travel with the heartbeats.

        Never raises into training: a hook that fails is counted
        (``stepstream/sdk_errors``), logged once with its traceback and turned off, and the
        rest goes on. Returns the hooks' handle (``.remove()``)."""
        from producers.watch import PART_GRADS, NoWatch, Watch

        try:
            topology = self._topology_for(mesh if mesh is not None else self.mesh, model)
            watch: Watch | NoWatch = Watch(
                self._publisher.enqueue,
                model,
                optimizer,
                every,
                tokens_per_sample,
                update_ratio,
                weights_every,
                self._phases,
                timing,
                on_error=self._sdk_error,
                world=self.identity.world,
                topology=topology,
                start_step=start_step,
            )
        except Exception as exc:  # a wrapper without torch's hook API, say
            self._sdk_error("watch", exc)
            return NoWatch()
        self._watches.append(watch)
        if not isinstance(watch, Watch):
            return watch
        try:
            # FSDP1 (FullyShardedDataParallel) slices are plain tensors, not DTensors: told
            # apart by FSDP's own attributes (see `producers.fsdp1`).
            from producers.fsdp1 import adapt_watch

            adapt_watch(watch, [model], self.identity.world)
        except Exception as exc:
            # Norms of slices read as replicas would be wrong, not merely missing: the
            # gradient norms stay off, the rest of watch() goes on.
            watch.disabled.add(PART_GRADS)
            self._sdk_error("watch.fsdp1", exc)
        return watch

    def _topology_for(self, mesh: Any, model: torch.nn.Module) -> Topology:
        """The rank's place in the device mesh (given, or found on the parameters), now
        sent with every heartbeat; an empty topology for a model every rank holds whole."""
        from producers.mesh import Topology, find_mesh, topology_of

        params = list(model.parameters())
        found = mesh if mesh is not None else find_mesh(params)
        if found is None:
            return Topology()
        topology = topology_of(found, params)
        self._ticker.extra_heartbeat = topology.heartbeat_values()
        # Now, not at the next tick: stage 2 groups peers by role from the first steps.
        self._ticker.heartbeat()
        return topology

    def phase(self, name: str) -> AbstractContextManager[None]:
        """``with monitor.phase("checkpoint"):`` declares what the training thread does in
        the body (``eval``, ``checkpoint``, or any of `stepstream.vocabulary.PHASES`), so a
        hang there is named as such; the phase before resumes after. Heartbeats carry the
        phase and the seconds in it. Call it on the training thread."""
        return self._phases.phase(name)

    def log_exception(self, exc: BaseException, fatal: bool = True) -> None:
        """Record an exception the training code caught (a framework's exception hook):
        its traceback as a log record (CRITICAL when `fatal`, else ERROR), and, when
        `fatal`, this rank as crashed. Uncaught exceptions need no call: the SDK's
        excepthook does the same."""
        self._on_crash(format_traceback(type(exc), exc, exc.__traceback__), fatal)

    def _status_now(self) -> str:
        if self._status is not None:
            return self._status
        return "starting" if self._step is None else "running"

    def _on_crash(self, text: str, fatal: bool) -> None:
        if fatal:
            self._status = "crashed"
        level = float(logging.CRITICAL if fatal else logging.ERROR)
        self._publisher.enqueue(self._step, RecordKind.LOG, {LOG_LEVEL: level}, text)
        if fatal:
            self._ticker.heartbeat()

    def _listener(self) -> ActionListener:
        if self._actions is None:
            self._actions = ActionListener(self.settings, self.identity.run, self.identity.rank)
        return self._actions

    def actions(self) -> list[ControlAction]:
        """Actions alert rules sent to this run and rank since the last call (stop,
        checkpoint, scale_lr). The first call starts listening; it never blocks. What to do
        with an action is the training loop's decision."""
        return self._listener().poll()

    def on_action(self, callback: Callable[[ControlAction], None]) -> None:
        """Call `callback(action)` (on a background thread) for every action that arrives."""
        self._listener().add_callback(callback)

    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver every record logged so far; True if Kafka acknowledged all of it within
        `timeout` (False while the broker is away: the records wait in the spool)."""
        return self._publisher.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to `timeout`, default `shutdown_timeout_s`) and stop publishing."""
        for watch in self._watches:
            watch.remove()
        self._watches.clear()
        if self._actions is not None:
            self._actions.close()
            self._actions = None
        if self._status != "crashed":
            self._status = "closing"
        self._phases.enter(PHASE_OUTSIDE)
        if not self._publisher.disabled:
            self._ticker.heartbeat()
        self._finalizer.detach()
        _shutdown(
            self._publisher,
            self._ticker,
            self._hooks,
            self._handler,
            self.settings.shutdown_timeout_s if timeout is None else timeout,
        )

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def init(
    run: str | None = None,
    *,
    rank: int | None = None,
    world: int | None = None,
    local_rank: int | None = None,
    node: str | None = None,
    settings: Settings | None = None,
    mesh: Any = None,
    **overrides: Any,
) -> Monitor:
    """Start a monitor for this process.

    Identity comes from the arguments, then torchrun / SLURM variables, then defaults; the
    node from `node`, then ``STEPSTREAM_NODE`` (`Settings.node`), then SLURMD_NODENAME, then
    the host name (torchrun names no host: its GROUP_RANK is a number, not a node).
    `mesh`: the job's `torch.distributed.DeviceMesh` when the model's parameters do not
    carry it (pipeline stages of plain modules); `watch()` finds it on DTensor parameters.
    `overrides` are Settings fields (``kafka_bootstrap=...``, ``spool_dir=...``); they beat
    ``STEPSTREAM_*`` variables, which beat the running local stack and the defaults. With
    `settings` given, `overrides` are applied on top of it. An unknown setting, a bad
    value or a producer configuration Kafka would refuse raises ConfigError here.
    """
    from stepstream.stack import load_settings

    if settings is None:
        resolved = load_settings(**overrides)
    else:
        resolved = settings.replace(**overrides)  # validated: a typo is a ConfigError
    identity = detect_identity(run, rank, world, local_rank, node or resolved.node)
    monitor = Monitor(identity, resolved)
    monitor.mesh = mesh
    return monitor
