"""Actions from the alerting stage to the training loop (stop, checkpoint, scale the LR).

Opt-in: the consumer starts the first time a training script asks for actions. Partitions
of the control topic are assigned (no group join, so it starts at once) from their end,
and actions are kept for this run and this rank (or for every rank). The training loop
polls or registers a callback; it decides what to do — nothing is forced.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable

from pydantic import ValidationError

from stepstream.contract import ControlAction
from stepstream.settings import Settings
from stepstream.topics import Topics

log = logging.getLogger(__name__)

ActionCallback = Callable[[ControlAction], None]


class ActionListener:
    """Collects control actions for (run, rank) on a daemon thread."""

    def __init__(self, settings: Settings, run: str, rank: int, max_pending: int = 1000) -> None:
        self.settings = settings
        self.run = run
        self.rank = rank
        self._pending: deque[ControlAction] = deque(maxlen=max_pending)
        self._callbacks: list[ActionCallback] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._disabled = False
        self._thread = threading.Thread(target=self._run, name="stepstream-control", daemon=True)
        os.register_at_fork(after_in_child=self._after_fork)
        self._thread.start()

    def _after_fork(self) -> None:
        self._disabled = True

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """True once the consumer reads the topic (actions sent after this are seen)."""
        return self._ready.wait(timeout)

    def add_callback(self, callback: ActionCallback) -> None:
        """Call `callback(action)` on the listener thread for every action that arrives."""
        self._callbacks.append(callback)

    def poll(self) -> list[ControlAction]:
        """Actions that arrived since the last poll, oldest first (never blocks)."""
        out = []
        while self._pending:
            out.append(self._pending.popleft())
        return out

    def _mine(self, action: ControlAction) -> bool:
        return action.run == self.run and action.rank in (None, self.rank)

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        topic = Topics(self.settings.topic_prefix).control
        consumer = None
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap.split(","),
                client_id="stepstream-control",
                enable_auto_commit=False,
                **self.settings.kafka_client_config(),
            )
            partitions = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
            consumer.assign(partitions)
            consumer.seek_to_end()
            for tp in partitions:
                consumer.position(tp)  # resolve the end offsets now, so nothing is skipped
            self._ready.set()
            while not self._stop.is_set():
                for messages in consumer.poll(timeout_ms=200).values():
                    for message in messages:
                        self._deliver(message.value)
        except Exception as exc:  # the broker may be away: training must go on regardless
            log.warning("stepstream control listener stopped: %s", exc)
        finally:
            if consumer is not None:
                consumer.close()

    def _deliver(self, raw: bytes) -> None:
        try:
            action = ControlAction.model_validate_json(raw)
        except ValidationError:
            return
        if self._disabled or not self._mine(action):
            return
        self._pending.append(action)
        for callback in self._callbacks:
            try:
                callback(action)
            except Exception:
                log.exception("stepstream action callback failed")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the listener thread."""
        self._stop.set()
        self._thread.join(timeout)
