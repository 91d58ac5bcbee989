"""The training thread's phase, and its stack when it is stuck.

`PhaseClock` holds what the training thread is doing (`stepstream.vocabulary.PHASES`) and
since when: `watch()`'s hooks set it (forward pre-hook: forward; the wrapped module's
forward end: backward, which includes the gradient all-reduce; optimizer step pre-hook:
optimizer; post-hook: data, the wait for the next batch), and user code declares its own
with ``with monitor.phase("checkpoint"):``. A change of phase is one tuple store on the
training thread (about 0.1 µs); the heartbeat thread reads it.

`StackCapture` runs on the heartbeat thread: when the phase has lasted longer than
`factor` x the rank's recent median step time and at least `floor_s`, it takes the training
thread's Python stack with ``sys._current_frames()`` (no OS signal, the training thread is not
interrupted), keeps the innermost frames within `max_bytes`, and returns it once per stuck
phase. Its cost is paid only then (about 0.1-1 ms for a deep stack).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from stepstream import vocabulary as vocab


class PhaseClock:
    """The phase of the thread that created it (the training thread) and since when."""

    __slots__ = ("current", "declared", "step_times", "thread_id")

    def __init__(self) -> None:
        #: (phase, perf_counter at its start); phase None until something tells us.
        self.current: tuple[str | None, float] = (None, time.perf_counter())
        #: Recent step times in seconds (appended by `watch()` after each optimizer step).
        self.step_times: deque[float] = deque(maxlen=32)
        self.thread_id = threading.get_ident()
        #: Seconds spent in declared phases (eval, checkpoint) since `take_declared`: the
        #: step that contains them reports them, so readers can tell a step made long by
        #: declared work from a slow one (job slowdown, goodput, fail-slow data wait).
        self.declared: dict[str, float] = {}

    def enter(self, phase: str) -> None:
        """The training thread starts `phase` now."""
        self.current = (phase, time.perf_counter())

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Declare `name` for the body (eval, checkpoint, ...); the phase before it resumes
        after (its clock restarts)."""
        if name not in vocab.PHASE_CODES:
            raise ValueError(f"unknown phase {name!r}: one of {', '.join(vocab.PHASES)}")
        before = self.current[0]
        self.enter(name)
        started = self.current[1]
        try:
            yield
        finally:
            # A declared phase inside another (a checkpoint inside eval) is already in the
            # outer one's seconds.
            if name in vocab.DECLARED_PHASES and before not in vocab.DECLARED_PHASES:
                spent = time.perf_counter() - started
                self.declared[name] = self.declared.get(name, 0.0) + spent
            self.enter(before or vocab.PHASE_OUTSIDE)

    def take_declared(self) -> dict[str, float]:
        """The seconds spent per declared phase since the last call (and reset them)."""
        declared, self.declared = self.declared, {}
        return declared

    def read(self) -> tuple[str | None, float, float]:
        """(phase, seconds in it, its start) now."""
        phase, since = self.current
        return phase, time.perf_counter() - since, since

    def step_time(self) -> float | None:
        """The median of the recent step times (None before any)."""
        times = sorted(self.step_times)
        return times[len(times) // 2] if times else None


class StackCapture:
    """Decides when the training thread is stuck and captures its stack (see the module
    docstring). 10 x and 2 s: half of stage 2's hang rule (20 x, 5 s), so the stack is
    there before the hang is judged."""

    def __init__(
        self,
        clock: PhaseClock,
        factor: float = 10.0,
        floor_s: float = 2.0,
        max_bytes: int = 4096,
    ) -> None:
        self.clock = clock
        self.factor = factor
        self.floor_s = floor_s
        self.max_bytes = max_bytes
        self._captured: float | None = None  # start of the phase last captured

    def due(self) -> bool:
        """True once per phase that has lasted past the threshold."""
        phase, seconds, since = self.clock.read()
        if phase is None or since == self._captured:
            return False
        step = self.clock.step_time()
        threshold = max(self.floor_s, self.factor * step if step is not None else 0.0)
        if seconds < threshold:
            return False
        self._captured = since
        return True

    def capture(self) -> str | None:
        """The training thread's stack, innermost frames last, within `max_bytes`."""
        frame = sys._current_frames().get(self.clock.thread_id)
        if frame is None:
            return None
        return bounded_stack(traceback.format_stack(frame), self.max_bytes)


def bounded_stack(frames: list[str], max_bytes: int) -> str:
    """The innermost `frames` (outermost first, as `traceback.format_stack` lists them)
    that fit in `max_bytes` of UTF-8, with a line saying how many outer ones were left."""
    kept: list[str] = []
    size = 0
    for text in reversed(frames):
        n = len(text.encode())
        if size + n > max_bytes - 64:  # room for the note
            break
        kept.append(text)
        size += n
    kept.reverse()
    dropped = len(frames) - len(kept)
    note = f"  ... {dropped} outer frame(s) left out\n" if dropped else ""
    if not kept and frames:  # one frame bigger than the bound: its innermost part
        return note + frames[-1].encode()[-(max_bytes - 64) :].decode(errors="replace")
    return note + "".join(kept)
