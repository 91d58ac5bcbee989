"""Follow alerts as they arrive on the alerts topic, as a Python iterator.

Partitions are assigned, not joined through a consumer group: a follower starts at once
(no group join) and never moves offsets of the stages.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from kafka import KafkaConsumer, TopicPartition
from pydantic import ValidationError

from stepstream.admin import require_settings_broker
from stepstream.contract import Alert
from stepstream.settings import Settings
from stepstream.topics import Topics


class AlertFeed:
    """Iterates over alerts on the alerts topic, optionally of one run only.

    `from_beginning` replays what the topic still holds; otherwise only new alerts come.
    """

    def __init__(self, settings: Settings, run: str | None = None, from_beginning: bool = True):
        require_settings_broker(settings)
        self.run = run
        self._topic = Topics(settings.topic_prefix).alerts
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap.split(","),
            client_id="stepstream-alert-feed",
            enable_auto_commit=False,
            fetch_max_wait_ms=100,  # a person is watching: do not sit on new alerts
            **settings.kafka_client_config(),
        )
        partitions = [TopicPartition(self._topic, p) for p in range(settings.partitions)]
        self._consumer.assign(partitions)
        if from_beginning:
            self._consumer.seek_to_beginning()
        else:
            self._consumer.seek_to_end()
        self.skipped = 0

    def poll(self, timeout_s: float = 0.5) -> list[Alert]:
        """Alerts that arrived within `timeout_s` (possibly none)."""
        out: list[Alert] = []
        for messages in self._consumer.poll(int(timeout_s * 1000)).values():
            for message in messages:
                try:
                    alert = Alert.model_validate_json(message.value)
                except ValidationError:
                    self.skipped += 1
                    continue
                if self.run is None or alert.run == self.run:
                    out.append(alert)
        return out

    def follow(self, until: float | None = None) -> Iterator[Alert]:
        """Yield alerts as they arrive, until the monotonic deadline `until` (or forever)."""
        while until is None or time.monotonic() < until:
            yield from self.poll()

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()

    def __enter__(self) -> AlertFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
