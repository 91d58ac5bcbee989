"""The ticker: one daemon thread per monitor that enqueues heartbeats, the publisher's own
counters and system metrics at fixed intervals. It only enqueues; the publisher sends.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from producers.phase import PhaseClock, StackCapture
from producers.publisher import Publisher
from stepstream import vocabulary as vocab
from stepstream.contract import RecordKind

log = logging.getLogger(__name__)

HEARTBEAT_STEP = vocab.HEARTBEAT_STEP
HEARTBEAT_PID = vocab.HEARTBEAT_PID
HEARTBEAT_STATUS = vocab.HEARTBEAT_STATUS
STATUS_CODES = vocab.STATUS_CODES
"""Heartbeat status as a number (value ``heartbeat/status``); the name is the record text."""


class Sampler(Protocol):
    """What the ticker needs from a system sampler."""

    def sample(self) -> dict[str, float]:
        """One sample of named values."""
        ...

    def close(self) -> None:
        """Release what the sampler holds."""
        ...


def heartbeat_values(
    step: int | None,
    pid: int,
    status: str,
    phase: str | None = None,
    phase_s: float = 0.0,
) -> dict[str, float]:
    """The values of one heartbeat record (the node travels in the batch envelope); the
    phase and the seconds in it when the phase is known."""
    values = {
        HEARTBEAT_STEP: float(-1 if step is None else step),
        HEARTBEAT_PID: float(pid),
        HEARTBEAT_STATUS: STATUS_CODES.get(status, -1.0),
    }
    if phase is not None:
        values[vocab.HEARTBEAT_PHASE] = vocab.PHASE_CODES[phase]
        values[vocab.HEARTBEAT_PHASE_S] = phase_s
    return values


class Ticker:
    """Heartbeats every `heartbeat_s` (with the publisher counters), system samples every
    `system_s` (0: none). `step` and `status` are read at each tick, the phase from
    `phases`; with `stacks`, a heartbeat whose text is the training thread's stack is sent
    once per stuck phase (see `producers.phase`)."""

    def __init__(
        self,
        publisher: Publisher,
        step: Callable[[], int | None],
        status: Callable[[], str],
        heartbeat_s: float,
        system_s: float,
        sampler_factory: Callable[[], Sampler] | None = None,
        phases: PhaseClock | None = None,
        stacks: StackCapture | None = None,
    ) -> None:
        self._publisher = publisher
        self._phases = phases
        self._stacks = stacks
        self._step = step
        self._status = status
        self._heartbeat_s = heartbeat_s
        self._system_s = system_s
        self._sampler_factory = sampler_factory
        self._sampler: Sampler | None = None
        self._stop = threading.Event()
        self._pid = os.getpid()
        self.sample_cost_s: list[float] = []
        #: Values every heartbeat carries besides its own (the rank's mesh coordinates).
        self.extra_heartbeat: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="stepstream-ticker", daemon=True)

    def start(self) -> None:
        """Start the thread (never in a forked child: the publisher is disabled there)."""
        if not self._publisher.disabled:
            self._thread.start()

    def heartbeat(self) -> None:
        """Enqueue one heartbeat and one record of the publisher's counters now."""
        step = self._step()
        status = self._status()
        phase, phase_s = None, 0.0
        if self._phases is not None:
            phase, phase_s, _ = self._phases.read()
        values = heartbeat_values(step, self._pid, status, phase, phase_s)
        if self.extra_heartbeat:
            values.update(self.extra_heartbeat)
        pub = self._publisher
        pub.enqueue(step, RecordKind.HEARTBEAT, values, status)
        pub.enqueue(step, RecordKind.SYSTEM, pub.stats.values())
        if self._stacks is not None and self._stacks.due():
            stack = self._stacks.capture()
            if stack:
                values = {**values, vocab.HEARTBEAT_STACK: float(len(stack))}
                pub.enqueue(step, RecordKind.HEARTBEAT, values, stack)

    def sample_system(self) -> None:
        """Enqueue one system-metrics record now (creating the sampler on first use)."""
        if self._sampler is None:
            if self._sampler_factory is None:
                return
            self._sampler = self._sampler_factory()
        start = time.perf_counter()
        values = self._sampler.sample()
        self.sample_cost_s.append(time.perf_counter() - start)
        del self.sample_cost_s[:-100]
        self._publisher.enqueue(self._step(), RecordKind.SYSTEM, values)

    def _run(self) -> None:
        next_beat = time.monotonic()
        next_sample = next_beat if self._system_s > 0 else float("inf")
        while not self._stop.is_set() and not self._publisher.disabled:
            now = time.monotonic()
            try:
                if now >= next_beat:
                    self.heartbeat()
                    next_beat = max(next_beat + self._heartbeat_s, now)
                if now >= next_sample:
                    self.sample_system()
                    next_sample = max(next_sample + self._system_s, now)
            except Exception as exc:  # a failing probe must not stop the heartbeats
                log.warning("stepstream ticker failed: %s", exc, exc_info=True)
            self._stop.wait(max(0.0, min(next_beat, next_sample) - time.monotonic()))
        if self._sampler is not None:
            self._sampler.close()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
