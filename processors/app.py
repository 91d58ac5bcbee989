"""The stage-1 faust app: telemetry batches in; window stats, alerts and dead letters out."""

from __future__ import annotations

import faust

from processors.series_stage import SeriesStage
from stepstream.contract import decode_batch, run_key
from stepstream.errors import ContractError
from stepstream.settings import Settings
from stepstream.streaming import dead_letter_of, make_app
from stepstream.topics import Topics


def create_processor_app(settings: Settings) -> faust.App:
    """Build the processor app; nothing connects until a worker starts it."""
    topics = Topics(settings.topic_prefix)
    app = make_app(settings, topics.group("processor"))
    raw = {"key_serializer": "raw", "value_serializer": "raw", "partitions": settings.partitions}
    telemetry = app.topic(topics.telemetry, **raw)
    windows = app.topic(topics.windows, **raw)
    alerts = app.topic(topics.alerts, **raw)
    deadletters = app.topic(topics.deadletter, **raw)
    stage = SeriesStage(settings.window_steps, settings.window_seconds)

    @app.agent(telemetry, name="series-stage")
    async def series_stage(stream: faust.StreamT) -> None:
        async for event in stream.events():
            value: bytes = event.value
            try:
                batch = decode_batch(value)
            except ContractError as err:
                await deadletters.send(
                    key=event.key,
                    value=dead_letter_of(event, topics.telemetry, err.reason, err.detail),
                )
                continue
            result = stage.process(batch)
            if result.update is not None:
                await windows.send(key=batch.key, value=result.update.to_bytes())
            for alert in result.alerts:
                await alerts.send(key=run_key(alert.run), value=alert.to_bytes())

    return app
