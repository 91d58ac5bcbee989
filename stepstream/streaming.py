"""The faust app shape shared by the processor and sink stages, and the worker runner."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
from faust.types.auth import CredentialsT

from stepstream.deadletter import dead_letter
from stepstream.settings import Settings

log = logging.getLogger(__name__)


def faust_broker_url(bootstrap: str) -> str:
    """faust's broker URL for comma-separated bootstrap servers."""
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap.split(","))


def worker_data_dir(settings: Settings, app_id: str) -> Path:
    """faust's data folder of a worker: under the state dir, never the current directory."""
    return (settings.state_dir / "workers" / app_id).absolute()


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """faust's `broker_credentials` for the Kafka security settings (None: PLAINTEXT)."""
    from stepstream.kafka_security import SASL_PROTOCOLS, ssl_context

    context = ssl_context(settings)
    if settings.kafka_security_protocol in SASL_PROTOCOLS:
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def ready_file(settings: Settings, app_id: str) -> Path:
    """The file a worker writes once it has joined its group and holds partitions."""
    return settings.state_dir / "ready" / app_id


def make_app(settings: Settings, app_id: str) -> faust.App:
    """A faust app with stepstream's settings: memory store, no web server, short sessions,
    the Kafka security settings, its data folder under the state dir.

    The session timeout is short because a group join on tansu takes about half of it;
    the heartbeat interval must stay well below it.
    """
    session_s = settings.session_timeout_s
    datadir = worker_data_dir(settings, app_id)
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    app = faust.App(
        app_id,
        broker=faust_broker_url(settings.kafka_bootstrap),
        broker_credentials=broker_credentials(settings),
        datadir=str(datadir),
        topic_replication_factor=settings.replication_factor,
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.partitions,
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.2, session_s / 6),
        broker_rebalance_timeout=max(session_s * 2, 10.0),
        consumer_auto_offset_reset="earliest",
        producer_linger=0.005,
        stream_buffer_maxsize=4096,
        # Room for a message of STEPSTREAM_MAX_MESSAGE_BYTES plus Kafka's record overhead
        # (stage 1 forwards accepted telemetry in messages up to 90% of that size).
        producer_max_request_size=max(1_048_576, settings.max_message_bytes + 65_536),
    )
    marker = ready_file(settings, app_id)

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def _mark_ready(sender: faust.App, **kwargs: Any) -> None:
        # The local stack waits for this file: data sent after it is read at once.
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))

    return app


FETCH_MAX_WAIT_MS = 50


def shorten_fetch_wait(max_wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
    """Make faust's consumers wait at most `max_wait_ms` for a fetch.

    faust hard-codes fetch_max_wait_ms=1500 for its consumer, and tansu holds a fetch for
    the whole wait even when data is ready for another partition: every hop then costs up
    to 1.5 s. Called once in a worker process, before the worker starts (it changes the
    aiokafka consumer class faust's driver builds, in this process only).
    """
    import aiokafka
    from faust.transport.drivers import aiokafka as driver

    base = aiokafka.AIOKafkaConsumer
    if getattr(base, "_stepstream_short_wait", False):
        return

    class ShortWaitConsumer(base):  # type: ignore[misc, valid-type]
        _stepstream_short_wait = True

        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["fetch_max_wait_ms"] = max_wait_ms
            super().__init__(*args, **kwargs)

    driver.aiokafka.AIOKafkaConsumer = ShortWaitConsumer


def run_worker(app: faust.App, log_level: str) -> None:
    """Run `app` in this process until SIGTERM or Ctrl-C (faust handles both)."""
    shorten_fetch_wait()
    worker = faust.Worker(app, loglevel=log_level, quiet=True, redirect_stdouts=False)
    # faust's start-up spinner sets the root logger to DEBUG (so that every record spins
    # it) and leaves it there: every debug call of faust and aiokafka then built a log
    # record, 1-8 % of a worker's CPU, and the spinner wrote terminal escapes to the logs.
    worker.spinner = None
    tune_gc()
    worker.execute_from_commandline()


#: Allocations between young-generation collections in a worker (Python's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a long-running stream worker.

    A worker allocates short-lived objects for every message (decoded models, dicts,
    floats) while holding a large, long-lived state. With Python's defaults a young
    collection ran every 700 allocations, and the collections took a quarter of stage 1's
    CPU (in-process replay of the processor bench: 243k values per CPU second with the
    defaults, 307k with this threshold, 364k with no collector at all). Everything
    loaded by start-up (modules, classes, faust's app) is moved out of the collector's
    sight with `gc.freeze`, so the rare full collections do not walk it again. Cycles are
    still collected, only in larger batches.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


async def send_dead_letter(
    deadletters: faust.TopicT,
    event: faust.EventT,
    *,
    stage: str,
    topic: str,
    reason: str,
    detail: str,
) -> bool:
    """Dead-letter the faust `event` read from `topic`; True if it was sent.

    Never raises (but for cancellation): a dead letter that cannot be sent is logged with
    where the message was, and the stage goes on with the next message.
    """
    message = event.message
    try:
        letter = dead_letter(
            stage=stage,
            reason=reason,
            detail=detail,
            topic=topic,
            key=event.key if isinstance(event.key, bytes) else None,
            value=event.value if isinstance(event.value, bytes) else None,
            partition=message.partition,
            offset=message.offset,
            now=time.time(),
        )
        key = letter.key.encode() if letter.key is not None else None
        await deadletters.send(key=key, value=letter.to_bytes())
        return True
    except Exception:
        log.exception(
            "%s: could not dead-letter %s[%s]@%s (%s: %s); going on",
            stage,
            topic,
            message.partition,
            message.offset,
            reason,
            detail[:200],
        )
        return False


Reject = Callable[[faust.EventT, str, str, str, str], Awaitable[None]]
"""Dead-letters (event, stage, topic, reason, detail); never raises."""


async def guarded(
    events: list[faust.EventT],
    handle: Callable[[list[faust.EventT]], Awaitable[None]],
    reject: Reject,
    stage: str,
    topic: str,
) -> None:
    """Run `handle(events)` so that no exception escapes into faust (which would restart
    the agent and skip what it had taken). If the batch fails, each message is handled
    alone, and one that fails alone is dead-lettered with reason ``internal_error``: a
    message that trips a bug costs itself, never the messages after it. Stages must
    tolerate seeing a message twice here (stage 1 dedups by seq; sinks write
    idempotently)."""
    try:
        await handle(events)
        return
    except Exception as exc:
        if len(events) == 1:
            log.exception("%s: a message failed; dead-lettering it", stage)
            await reject(events[0], stage, topic, "internal_error", f"{type(exc).__name__}: {exc}")
            return
        log.exception("%s: a batch of %d failed; retrying one by one", stage, len(events))
    for event in events:
        try:
            await handle([event])
        except Exception as exc:
            log.exception("%s: a message failed; dead-lettering it", stage)
            await reject(event, stage, topic, "internal_error", f"{type(exc).__name__}: {exc}")
