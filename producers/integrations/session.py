"""The monitor a framework callback opens for its rank (shared by the callbacks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from producers.identity import detect_identity
from producers.monitor import Monitor, init


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
