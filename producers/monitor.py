"""The user-facing handle a training script holds: `init()` once, `log()` every step."""

from __future__ import annotations

import atexit
import weakref
from typing import Any

from producers.identity import Identity, detect_identity
from producers.publisher import Publisher, PublisherStats
from stepstream.contract import RecordKind
from stepstream.settings import Settings


class Monitor:
    """Publishes one rank's telemetry. `log()` only enqueues; sending happens elsewhere.

    Use as a context manager, or call `close()`; an interpreter exit flushes too.
    """

    def __init__(self, identity: Identity, settings: Settings) -> None:
        self.identity = identity
        self.settings = settings
        self._publisher = Publisher(identity, settings)
        self._finalizer = weakref.finalize(self, self._publisher.close, 5.0)
        atexit.register(self._finalizer)

    @property
    def run(self) -> str:
        """The run id every record of this monitor belongs to."""
        return self.identity.run

    @property
    def stats(self) -> PublisherStats:
        """Counters: enqueued, dropped, sent records and messages, send errors."""
        return self._publisher.stats

    def log(self, step: int | None = None, /, **values: Any) -> None:
        """Record training metrics at `step`: numbers or 0-d tensors, converted off-thread."""
        self._publisher.enqueue(step, RecordKind.TRAIN, values)

    def log_eval(self, step: int | None = None, /, **values: Any) -> None:
        """Record evaluation metrics at `step`."""
        self._publisher.enqueue(step, RecordKind.EVAL, values)

    def log_kind(self, kind: RecordKind, step: int | None = None, /, **values: Any) -> None:
        """Record values of any record kind (system, grad, quality, ...)."""
        self._publisher.enqueue(step, kind, values)

    def flush(self, timeout: float = 10.0) -> bool:
        """Hand every record logged so far to Kafka; True if done within `timeout`."""
        return self._publisher.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush and stop publishing."""
        self._publisher.close(timeout)
        self._finalizer.detach()

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
    **overrides: Any,
) -> Monitor:
    """Start a monitor for this process.

    Identity comes from the arguments, then torchrun / SLURM variables, then defaults.
    `overrides` are Settings fields (``kafka_bootstrap=...``); they beat ``STEPSTREAM_*``
    variables, which beat the running local stack and the defaults.
    """
    from stepstream.stack import load_settings

    resolved = settings or load_settings(**overrides)
    identity = detect_identity(run, rank, world, local_rank, node)
    return Monitor(identity, resolved)
