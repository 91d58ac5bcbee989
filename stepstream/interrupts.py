"""SIGTERM as Ctrl-C for commands that start processes, so their cleanup runs.

Python's default SIGTERM ends the process at once, skipping `finally` blocks: a command
killed while it starts the stack would leave the broker and Redis running. Inside
`sigterm_interrupts()` SIGTERM raises KeyboardInterrupt instead.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only; elsewhere a
    no-op, since only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
