"""Topic names. One definition; every producer, processor and sink imports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    """The names of stepstream's topics under one prefix (``STEPSTREAM_TOPIC_PREFIX``)."""

    prefix: str = "stepstream"

    @property
    def telemetry(self) -> str:
        """Raw record batches from training ranks, keyed ``run:rank``."""
        return f"{self.prefix}.telemetry"

    @property
    def validated(self) -> str:
        """Telemetry batches that passed stage 1's checks, keyed ``run:rank``: what the sink
        stores as raw series (internal; producers write to `telemetry`)."""
        return f"{self.prefix}.telemetry.validated"

    @property
    def summaries(self) -> str:
        """Compact per-rank, per-step summaries for cross-rank analysis, keyed by run."""
        return f"{self.prefix}.summaries"

    @property
    def crossrank(self) -> str:
        """Per-step stats of each run across its ranks (stage 2), keyed by run."""
        return f"{self.prefix}.crossrank"

    @property
    def windows(self) -> str:
        """Rolling window stats, one message per rank per processed batch, keyed by run."""
        return f"{self.prefix}.windows"

    @property
    def alerts(self) -> str:
        """Alert transitions, keyed by run. Subscribe here for alerts."""
        return f"{self.prefix}.alerts"

    @property
    def deadletter(self) -> str:
        """Messages a stage could not use, with the reason."""
        return f"{self.prefix}.deadletter"

    @property
    def control(self) -> str:
        """Actions for training jobs (stop, checkpoint, scale LR), keyed by run."""
        return f"{self.prefix}.control"

    @property
    def serving(self) -> str:
        """Predictions, outcomes and references of served models, keyed by prediction id
        (predictions and their outcomes meet in one partition)."""
        return f"{self.prefix}.serving"

    def all(self) -> list[str]:
        """Every topic stepstream creates at start-up."""
        return [
            self.telemetry,
            self.validated,
            self.summaries,
            self.crossrank,
            self.windows,
            self.alerts,
            self.deadletter,
            self.control,
            self.serving,
        ]

    def group(self, stage: str) -> str:
        """Consumer group (faust app id) of a stage under this prefix."""
        return f"{self.prefix}-{stage}"
