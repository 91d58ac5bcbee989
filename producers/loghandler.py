"""A logging.Handler that ships WARNING+ records of the training process as log records."""

from __future__ import annotations

import logging
from collections.abc import Callable

from producers.publisher import Publisher
from stepstream import vocabulary as vocab
from stepstream.contract import MAX_TEXT_CHARS, RecordKind

LOG_LEVEL = vocab.LOG_LEVEL.name
"""Value of a log record: the logging level number (30 warning, 40 error, 50 critical)."""

# kafka-python warns on every reconnect and we log our own trouble: shipping those would
# feed the publisher its own failures while the broker is away.
_IGNORED = ("kafka", "producers", "stepstream")


class ShippingHandler(logging.Handler):
    """Enqueues each record (message and traceback in `text`, level in the values)."""

    def __init__(
        self,
        publisher: Publisher,
        step: Callable[[], int | None],
        level: int = logging.WARNING,
    ) -> None:
        super().__init__(level)
        self._publisher = publisher
        self._step = step
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Enqueue the formatted record; never raises into the caller."""
        if record.name.split(".", 1)[0] in _IGNORED:
            return
        try:
            text = self.format(record)
            if len(text) > MAX_TEXT_CHARS:  # the contract's bound; keep the end (the error)
                text = "…" + text[-(MAX_TEXT_CHARS - 1) :]
            self._publisher.enqueue(
                self._step(), RecordKind.LOG, {LOG_LEVEL: float(record.levelno)}, text
            )
        except Exception:
            self.handleError(record)
