"""The faust app shape shared by the processor and sink stages, and the worker runner."""

from __future__ import annotations

import asyncio
import ctypes
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
from stepstream.positions import restarted_logs
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


#: The workers' producer batch size (per partition, before compression).
WORKER_BATCH_BYTES = 1_048_576


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
        # A window update is tens of KB of JSON: aiokafka's default 16 KB batch holds one,
        # and a full batch makes the next send to its partition wait for the broker's
        # answer. Uncompressed: users' alert-topic consumers need no codec library.
        producer_max_batch_size=WORKER_BATCH_BYTES,
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

    @app.timer(LOG_RESET_CHECK_S)
    async def _reread_restarted_logs() -> None:
        await reread_restarted_logs(app.consumer)

    return app


#: How often a worker compares its positions with the ends of the logs it reads. A
#: restarted in-memory log is told only until it grows past the old position again
#: (about 2 s of a two-rank job replaying its spool; far longer at production offsets).
LOG_RESET_CHECK_S = 0.25


async def reread_restarted_logs(consumer: Any) -> list[Any]:
    """Rewind faust's `consumer` to the start of every assigned log that started over
    (see `stepstream.positions`), so the records the new log holds are read, not dropped
    as already seen; returns those partitions.

    faust keeps, per partition, the position read (and drops every record below it), the
    offsets acked and the offset committed. They belong to the old log: they are
    forgotten as on a revocation, then the partition is read from offset 0.
    """
    try:
        assigned = consumer.assignment()
        highwaters = {tp: consumer.highwater(tp) for tp in assigned}
    except Exception:  # mid-rebalance (a partition no longer assigned): next tick
        return []
    restarted = restarted_logs(highwaters, consumer._read_offset)
    for tp in restarted:
        log.warning(
            "the log of %s ends at offset %s, below the position read in it (%s): the "
            "broker lost it (an in-memory broker restarted?); reading the new "
            "log from its start",
            tp,
            highwaters[tp],
            consumer._read_offset.get(tp),
        )
        for state in (
            consumer._gap,
            consumer._acked,
            consumer._acked_index,
            consumer._read_offset,
            consumer._committed_offset,
        ):
            state.pop(tp, None)
        await consumer.seek(tp, 0)
    return restarted


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


#: Errors no second send can mend (the record itself, the topic or our rights).
_PERMANENT_PRODUCE_ERRORS = (
    "MessageSizeTooLargeError",
    "RecordListTooLargeError",
    "RecordTooLargeError",
    "InvalidTopicError",
    "TopicAuthorizationFailedError",
    "ClusterAuthorizationFailedError",
    "UnsupportedVersionError",
    "UnsupportedForMessageFormatError",
    "InvalidRequiredAcksError",
    "InvalidTimestampError",
    "CorruptRecordException",
    "ProducerClosed",
    "IllegalOperation",
)

#: Sends of one record a worker makes before its failure is final (faust then logs it).
PRODUCE_ATTEMPTS = 8

#: Resends waiting for their turn (only failed deliveries ever get here).
_RESENDS: set[asyncio.Task[None]] = set()


def retrying(
    first: asyncio.Future[Any],
    resend: Callable[[], Awaitable[asyncio.Future[Any]]],
    *,
    attempts: int = PRODUCE_ATTEMPTS,
    permanent: tuple[type[BaseException], ...] = (),
    topic: str = "?",
    backoff_s: float = 0.1,
) -> asyncio.Future[Any]:
    """The delivery of a record whose send failed is sent again: a future that is done
    when one of up to `attempts` sends of it is delivered, or with the last error.

    `first` is the delivery future of the first send; `resend` sends the record again
    and returns the next one. An error of a `permanent` type is final at once. Waits
    between sends double from `backoff_s`, up to 2 s (about 7 s for 8 attempts).
    """
    loop = asyncio.get_running_loop()
    outer: asyncio.Future[Any] = loop.create_future()
    sent = 1

    def settle(fut: asyncio.Future[Any]) -> None:
        nonlocal sent
        if outer.done():
            return
        if fut.cancelled():
            outer.cancel()
            return
        exc = fut.exception()
        if exc is None:
            outer.set_result(fut.result())
            return
        if isinstance(exc, permanent) or sent >= attempts:
            outer.set_exception(exc)
            return
        delay = min(2.0, backoff_s * 2 ** (sent - 1))
        sent += 1
        log.warning(
            "sending a record to %s failed (%s: %s); sending it again in %.1f s (attempt %d of %d)",
            topic,
            type(exc).__name__,
            exc,
            delay,
            sent,
            attempts,
        )

        async def again() -> None:
            await asyncio.sleep(delay)
            try:
                inner = await resend()
            except Exception as exc:  # the producer stopped, ...: the send is lost
                if not outer.done():
                    outer.set_exception(exc)
                return
            inner.add_done_callback(settle)

        task = loop.create_task(again())
        _RESENDS.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(_RESENDS.discard)

    first.add_done_callback(settle)
    return outer


def retry_failed_produces(attempts: int = PRODUCE_ATTEMPTS) -> None:
    """Make faust's producers send a record again when its delivery failed.

    faust sends a stage's output without waiting for it and acknowledges the input
    record at once; a failed delivery is logged and the record is gone. A broker that
    was just restarted failed some of the first sends (tansu answered an unknown error
    while two batches raced for its new log: one stage-1 message held three seconds of a
    rank's telemetry). aiokafka retries only the errors it deems transient. Called once
    in a worker process, before the worker starts (it changes the aiokafka producer class
    faust's driver builds, in this process only). A record sent again may arrive after
    later ones of its key: every stage downstream takes records idempotently and in any
    order within a window.
    """
    import aiokafka
    from aiokafka import errors

    base = aiokafka.AIOKafkaProducer
    if getattr(base, "_stepstream_retrying", False):
        return
    permanent = tuple(
        getattr(errors, name) for name in _PERMANENT_PRODUCE_ERRORS if hasattr(errors, name)
    )

    class RetryingProducer(base):  # type: ignore[misc, valid-type]
        _stepstream_retrying = True

        async def send(
            self,
            topic: str,
            value: Any = None,
            key: Any = None,
            partition: int | None = None,
            timestamp_ms: int | None = None,
            headers: Any = None,
        ) -> asyncio.Future[Any]:
            send = super().send
            args = (topic, value, key, partition, timestamp_ms, headers)
            first = await send(*args)
            return retrying(
                first,
                lambda: send(*args),
                attempts=attempts,
                permanent=permanent,
                topic=topic,
            )

    aiokafka.AIOKafkaProducer = RetryingProducer


def run_worker(app: faust.App, log_level: str) -> None:
    """Run `app` in this process until SIGTERM or Ctrl-C (faust handles both)."""
    shorten_fetch_wait()
    retry_failed_produces()
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


def release_memory() -> bool:
    """Hand memory the process freed back to the operating system (glibc ``malloc_trim``):
    True if some was. A no-op where the C library has no such call (musl, macOS).

    A worker that forgot idle runs has freed their windows and detector state, but the
    allocator keeps the pages for reuse. In `bench/soak.py` (2,000 runs of 4 ranks) the
    processor's RSS stayed at the high-water mark of the busiest minute with nothing held
    (155 -> 157 MiB); trimmed after each forget it went back from 154 to 147 MiB. The
    rest is Python's own arenas, which free only when wholly empty. Trimming costs a walk
    over the heap's free lists, not over live objects.
    """
    global _malloc_trim
    # Cycles among the freed state wait for a full collection, which `tune_gc` makes
    # rare: collect them first, or their blocks keep Python's arenas from emptying.
    gc.collect()
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim is False:
        return False
    return bool(_malloc_trim(0))


#: glibc's malloc_trim once looked up; False where there is none.
_malloc_trim: Any = None


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
