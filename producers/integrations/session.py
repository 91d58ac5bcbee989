"""The monitor a framework callback opens for its rank (shared by the callbacks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from producers.fsdp1 import adapt_watch
from producers.identity import detect_identity
from producers.monitor import Monitor, init
from producers.watch import PART_GRADS, NoWatch

if TYPE_CHECKING:
    from producers.watch import Watch


def open_monitor(
    run: str | None,
    rank: int,
    world: int,
    local_rank: int,
    node: str | None,
    agree: Callable[[str], str],
    init_kwargs: dict[str, Any],
) -> Monitor:
    """A monitor for this rank with the framework's own rank, world and local rank.

    Without an explicit `run`, every rank must still publish under one run id: the id rank
    0 resolves (``STEPSTREAM_RUN``, torchrun's, SLURM's, else the time) is agreed through
    `agree` (the framework's broadcast from rank 0), since a framework that launches its
    own processes (Lightning's ddp) sets none of those variables and each rank would name
    the run after its own clock.
    """
    if run is None:
        resolved = detect_identity(rank=rank, world=world, local_rank=local_rank).run
        run = agree(resolved) if world > 1 else resolved
    return init(run, rank=rank, world=world, local_rank=local_rank, node=node, **init_kwargs)


class MonitorSession:
    """What a framework callback holds for its rank: the monitor it opens at the
    framework's set-up (or the one it was given, never closed here) and the `watch()`
    hooks, with the options of the callback's constructor (see the callbacks). A mixin: the
    callback's constructor calls `_init_session` (the framework's base class keeps its own
    ``__init__``)."""

    run: str | None
    monitor: Monitor | None

    def _init_session(
        self,
        run: str | None,
        *,
        monitor: Monitor | None,
        watch: bool,
        every: int,
        weights_every: int | None,
        node: str | None,
        init_kwargs: dict[str, Any],
    ) -> None:
        """Keep the callback's options; nothing opens before the framework's set-up."""
        self.run = run
        self.monitor = monitor
        self._owned = False
        self._watch_on = watch
        self._every = every
        self._weights_every = weights_every
        self._node = node
        self._init_kwargs = init_kwargs
        self._watch: Watch | NoWatch | None = None

    def _open(self, rank: int, world: int, local_rank: int, agree: Callable[[str], str]) -> None:
        """Open this rank's monitor unless one is open or was given."""
        if self.monitor is None:
            self.monitor = open_monitor(
                self.run, rank, world, local_rank, self._node, agree, self._init_kwargs
            )
            self._owned = True

    def _start_watch(
        self,
        model: Any,
        optimizer: Any,
        step: int,
        *,
        timing: bool = True,
        wrappers: Sequence[Any] = (),
    ) -> None:
        """Hook `model` and `optimizer` once (when watching is on); steps count on from
        `step`, so a resumed job goes on counting from its global step. `wrappers`: the
        modules the framework built around `model` (Lightning's FSDP root), where an FSDP1
        model's flat parameters are found."""
        monitor = self.monitor
        if monitor is None or not self._watch_on or self._watch is not None:
            return
        watch = monitor.watch(
            model, optimizer, every=self._every, weights_every=self._weights_every, timing=timing
        )
        watch.step = step
        self._watch = watch
        if isinstance(watch, NoWatch):
            return
        try:
            # FSDP1 slices are plain tensors: without this, each rank's slice norm would go
            # out as the job's gradient norm (see producers.fsdp1).
            adapt_watch(watch, [model, *wrappers], monitor.identity.world)
        except Exception as exc:
            # Never into training. Norms of slices read as replicas would be wrong, not
            # merely missing: the gradient norms stay off, the rest of watch() goes on.
            watch.disabled.add(PART_GRADS)
            monitor._sdk_error("watch.fsdp1", exc)

    def _end(self) -> None:
        """Take the hooks off and close the monitor this session opened."""
        if self._watch is not None:
            self._watch.remove()
            self._watch = None
        if self._owned and self.monitor is not None:
            self.monitor.close()
            self.monitor = None
            self._owned = False
