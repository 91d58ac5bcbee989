"""The one seam between stepstream and faust/aiokafka: every use of their internals.

Apps (`processors.app`, `processors.serving_app`, `sinks.app`) declare their agents as
(topic, handler) pairs (`Agent`); this module runs them: the batching loop
(faust's `take_events`), the offset-jump rule (a partition whose offsets jumped came
back from another worker), the guard (no exception escapes into faust), dead letters,
rebalance hooks. It also owns every change made to faust or aiokafka: the retrying
producer, the short fetch wait, the rewind of a restarted log. No other module imports
aiokafka or touches a private attribute of either library (`tests/unit/test_layout.py`).

The internals reached into are listed once, in `INTERNALS`; `check_internals` runs at
worker start, so an upgrade that renames one fails there with `FaustInternalsError`
instead of silently dropping records.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import faust
from faust.types.auth import CredentialsT

from stepstream.deadletter import dead_letter
from stepstream.errors import FaustInternalsError
from stepstream.messages import Message
from stepstream.positions import PartitionOffsets, ReadProgress, restarted_logs
from stepstream.settings import Settings
from stepstream.streaming import ready_file, tune_gc, worker_data_dir

log = logging.getLogger(__name__)


def faust_broker_url(bootstrap: str) -> str:
    """faust's broker URL for comma-separated bootstrap servers."""
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap.split(","))


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


def read_uncommitted_from_start() -> None:
    """Make a partition assigned without a committed offset be read from its start.

    faust suspends its flow while partitions are assigned, then seeks each to its
    committed offset ("Seek stream partitions to committed offsets") and drops what was
    fetched meanwhile. aiokafka seeks only where an offset was committed: a partition
    without one (its last reader died before its first commit, a few seconds after
    getting it) kept the position that aiokafka's background fetch had reached in the
    meantime, and the records fetched before it were dropped unread: a survivor of a
    processor kill skipped the 20 steps published during the rebalance (7 runs in about
    70 of test_scale_out under load). Such partitions are now reset to their start, as
    ``auto_offset_reset="earliest"`` says. What the dead worker had read of them is read
    again, as after any failover before a commit (the sink's writes are idempotent).
    Called once in a worker process, before the worker starts.
    """
    import aiokafka

    base = aiokafka.AIOKafkaConsumer
    if getattr(base, "_stepstream_uncommitted_from_start", False):
        return

    class UncommittedFromStartConsumer(base):  # type: ignore[misc, valid-type]
        _stepstream_uncommitted_from_start = True

        async def seek_to_committed(self, *partitions: Any) -> dict[Any, int | None]:
            committed: dict[Any, int | None] = await super().seek_to_committed(*partitions)
            # aiokafka seeks only where `offset and offset > 0` (see above).
            unset = [tp for tp, offset in committed.items() if offset is None or offset <= 0]
            # A local seek, not seek_to_beginning: that waits for the broker (up to the
            # request timeout) inside faust's rebalance, and after a broker restart, when
            # no partition has a commit, it held the rebalance past the session timeout
            # and the worker never got its partitions back (test_faults' broker kill, 1
            # run in 3 under load). A log that no longer starts at 0 (retention) answers
            # out of range, and auto_offset_reset="earliest" moves to its start.
            for tp in unset:
                self.seek(tp, 0)
            return committed

    aiokafka.AIOKafkaConsumer = UncommittedFromStartConsumer


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
    """Run `app` in this process until SIGTERM or Ctrl-C (faust handles both).

    FaustInternalsError, before anything connects, if the installed faust or aiokafka
    lacks an internal this module changes or reads (`INTERNALS`).
    """
    check_internals()
    shorten_fetch_wait()
    read_uncommitted_from_start()
    retry_failed_produces()
    worker = faust.Worker(app, loglevel=log_level, quiet=True, redirect_stdouts=False)
    # faust's start-up spinner sets the root logger to DEBUG (so that every record spins
    # it) and leaves it there: every debug call of faust and aiokafka then built a log
    # record, 1-8 % of a worker's CPU, and the spinner wrote terminal escapes to the logs.
    worker.spinner = None
    tune_gc()
    worker.execute_from_commandline()


# --- the internals of faust and aiokafka this module relies on ---------------------------


@dataclass(frozen=True)
class Internal:
    """One faust or aiokafka internal this module reads, replaces or passes.

    `owner` is ``module`` or ``module:Qualified.name``; `kind` says how `name` must
    exist there: ``attribute`` (on the object), ``declared`` (an instance attribute the
    class declares in its annotations, set in ``__init__``), ``parameter`` (of the
    callable `owner`). `use` says what stepstream does with it, for the error message.
    """

    owner: str
    name: str
    kind: str
    use: str

    def where(self) -> str:
        """`owner`.`name` as the error message names it."""
        return f"{self.owner}.{self.name}"


_RESTARTED_LOG = "forgotten when a restarted log is read again from offset 0"

#: Every internal of faust-streaming and aiokafka stepstream's workers depend on; checked
#: at worker start (`check_internals`) and pinned by tests/unit/test_faust_seam.py.
INTERNALS: tuple[Internal, ...] = (
    Internal("faust.transport.consumer:Consumer", "_read_offset", "declared", _RESTARTED_LOG),
    Internal("faust.transport.consumer:Consumer", "_committed_offset", "declared", _RESTARTED_LOG),
    Internal("faust.transport.consumer:Consumer", "_acked", "declared", _RESTARTED_LOG),
    Internal("faust.transport.consumer:Consumer", "_acked_index", "declared", _RESTARTED_LOG),
    Internal("faust.transport.consumer:Consumer", "_gap", "declared", _RESTARTED_LOG),
    Internal(
        "faust.transport.drivers.aiokafka",
        "aiokafka",
        "attribute",
        "the module whose consumer and producer classes faust's driver builds",
    ),
    Internal(
        "aiokafka", "AIOKafkaConsumer", "attribute", "replaced by one with a 50 ms fetch wait"
    ),
    Internal(
        "aiokafka:AIOKafkaConsumer.__init__",
        "fetch_max_wait_ms",
        "parameter",
        "set to 50 ms (faust hard-codes 1500)",
    ),
    Internal(
        "aiokafka:AIOKafkaConsumer",
        "seek_to_committed",
        "attribute",
        "extended: a partition without a committed offset is read from its start",
    ),
    Internal(
        "aiokafka:AIOKafkaConsumer",
        "seek",
        "attribute",
        "how a partition without a committed offset is set to its start",
    ),
    Internal(
        "aiokafka", "AIOKafkaProducer", "attribute", "replaced by one that resends failed sends"
    ),
    *(
        Internal("aiokafka:AIOKafkaProducer.send", name, "parameter", "passed on by resends")
        for name in ("topic", "value", "key", "partition", "timestamp_ms", "headers")
    ),
    Internal("aiokafka", "errors", "attribute", "tells permanent send errors"),
    Internal("faust:Stream", "take_events", "attribute", "the batching loop of every agent"),
    Internal("faust:Stream", "noack", "attribute", "manual acks of the webhook agent"),
    Internal(
        "faust:Worker", "spinner", "declared", "turned off (it left the root logger at DEBUG)"
    ),
)

#: The versions `INTERNALS` was checked against; the error message tells users to pin them.
TESTED_WITH: dict[str, str] = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


def _resolve(owner: str) -> Any:
    module, _, qualname = owner.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split(".") if qualname else ():
        obj = getattr(obj, part)
    return obj


def _declared(cls: Any, name: str) -> bool:
    return hasattr(cls, name) or any(
        name in getattr(klass, "__annotations__", {}) for klass in getattr(cls, "__mro__", ())
    )


def _present(internal: Internal) -> bool:
    try:
        obj = _resolve(internal.owner)
    except (ImportError, AttributeError):
        return False
    if internal.kind == "attribute":
        return hasattr(obj, internal.name)
    if internal.kind == "declared":
        return _declared(obj, internal.name)
    if internal.kind == "parameter":
        try:
            return internal.name in inspect.signature(obj).parameters
        except (TypeError, ValueError):
            return False
    raise ValueError(f"unknown kind {internal.kind!r} of {internal.where()}")


def _installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def missing_internals(internals: Iterable[Internal] | None = None) -> list[Internal]:
    """The `internals` (default: `INTERNALS`) the installed faust-streaming and aiokafka
    lack."""
    wanted = INTERNALS if internals is None else internals
    return [internal for internal in wanted if not _present(internal)]


def check_internals(internals: Iterable[Internal] | None = None) -> None:
    """Raise FaustInternalsError, naming each missing one and the versions to pin, if the
    installed faust-streaming or aiokafka lacks one of `internals` (default:
    `INTERNALS`)."""
    missing = missing_internals(internals)
    if not missing:
        return
    found = ", ".join(f"{package} {_installed(package)}" for package in TESTED_WITH)
    pins = " ".join(f"'{package}=={wanted}'" for package, wanted in TESTED_WITH.items())
    lines = "; ".join(f"{internal.where()} ({internal.use})" for internal in missing)
    raise FaustInternalsError(
        f"the installed {found} lack what stepstream's workers rely on: {lines}. "
        f"Pin the versions stepstream is tested with (pip install {pins}), or port "
        "stepstream/faust_seam.py to the new versions and update its INTERNALS."
    )


# --- topics, dead letters, the guard and the agents --------------------------------------


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """`app`'s topic `name` with raw bytes keys and values, in the configured partitions."""
    return app.topic(
        name,
        key_serializer="raw",
        value_serializer="raw",
        partitions=app.conf.topic_partitions,
    )


def _message(event: faust.EventT) -> Message:
    place = event.message
    key = event.key
    value = event.value
    return Message(
        place.topic,
        place.partition,
        place.offset,
        key if isinstance(key, bytes) else None,
        value if isinstance(value, bytes) else None,
    )


class DeadLetters:
    """Where a stage sends the messages it cannot use, each with its reason.

    `counts`, when given, counts every dead letter asked for, by reason.
    """

    def __init__(self, topic: Any, counts: Counter[str] | None = None) -> None:
        self.topic = topic
        self.counts = counts

    @classmethod
    def of(cls, app: faust.App, name: str, counts: Counter[str] | None = None) -> DeadLetters:
        """The dead letters sent to `app`'s topic `name`."""
        return cls(raw_topic(app, name), counts)

    async def send(self, message: Message, *, stage: str, reason: str, detail: str) -> bool:
        """Dead-letter `message`; True if it was sent.

        Never raises (but for cancellation): a dead letter that cannot be sent is logged
        with where the message was, and the stage goes on with the next message.
        """
        if self.counts is not None:
            self.counts[reason] += 1
        return await send_dead_letter(
            self.topic,
            message,
            stage=stage,
            reason=reason,
            detail=detail,
        )


async def send_dead_letter(
    deadletters: Any, message: Message, *, stage: str, reason: str, detail: str
) -> bool:
    """Dead-letter `message` to the `deadletters` topic; True if it was sent.

    Never raises (but for cancellation): a dead letter that cannot be sent is logged with
    where the message was, and the stage goes on with the next message.
    """
    try:
        letter = dead_letter(
            stage=stage,
            reason=reason,
            detail=detail,
            topic=message.topic,
            key=message.key,
            value=message.value,
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
            message.topic,
            message.partition,
            message.offset,
            reason,
            detail[:200],
        )
        return False


Handler = Callable[[list[Message]], Awaitable[None]]
"""A stage's handler: takes one batch of messages of its topic, in read order."""

Reject = Callable[[Message, str, str, str], Awaitable[object]]
"""Dead-letters (message, stage, reason, detail); never raises."""


async def guarded(messages: list[Message], handle: Handler, reject: Reject, stage: str) -> None:
    """Run `handle(messages)` so that no exception escapes into faust (which would restart
    the agent and skip what it had taken). If the batch fails, each message is handled
    alone, and one that fails alone is dead-lettered with reason ``internal_error``: a
    message that trips a bug costs itself, never the messages after it. Stages must
    tolerate seeing a message twice here (stage 1 dedups by seq; sinks write
    idempotently)."""
    try:
        await handle(messages)
        return
    except Exception as exc:
        if len(messages) == 1:
            log.exception("%s: a message failed; dead-lettering it", stage)
            await reject(messages[0], stage, "internal_error", f"{type(exc).__name__}: {exc}")
            return
        log.exception("%s: a batch of %d failed; retrying one by one", stage, len(messages))
    for message in messages:
        try:
            await handle([message])
        except Exception as exc:
            log.exception("%s: a message failed; dead-lettering it", stage)
            await reject(message, stage, "internal_error", f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class Agent:
    """One (topic, handler) pair an app declares; `add_agents` runs it.

    The agent named `name` reads `topic` in batches of up to `batch` messages, waiting at
    most `linger_s` to fill one, and hands each to `handle` under the guard: a message
    that fails alone is dead-lettered as `stage` with reason ``internal_error``. Offsets
    are committed once the handler returned for the batch. With `returned`, the agent
    calls it (before the handler) with the partitions whose offsets jumped: another
    worker read them meanwhile, so the state this worker holds for them is stale.
    """

    name: str
    topic: str
    stage: str
    handle: Handler
    batch: int
    linger_s: float
    returned: Callable[[set[int]], None] | None = None
    #: Where the agent notes the offset it last handled in each partition, once the
    #: handler returned for it (see read_as_of): what it sent for them is on its way.
    positions: PartitionOffsets | None = None


def add_agents(app: faust.App, dead_letters: DeadLetters, agents: Iterable[Agent]) -> None:
    """Add a faust agent to `app` for each of `agents`, dead-lettering to `dead_letters`."""
    for spec in agents:
        _add_agent(app, dead_letters, spec)


def _add_agent(app: faust.App, dead_letters: DeadLetters, spec: Agent) -> None:
    offsets = PartitionOffsets() if spec.returned is not None else None

    async def reject(message: Message, stage: str, reason: str, detail: str) -> bool:
        return await dead_letters.send(message, stage=stage, reason=reason, detail=detail)

    def came_back(messages: list[Message]) -> None:
        assert offsets is not None and spec.returned is not None
        stale = offsets.jumps([(m.partition, m.offset) for m in messages])
        if not stale:
            return
        try:
            spec.returned(stale)
        except Exception:  # the batch is still handled; its series may restart late
            log.exception("%s: dropping the state of partitions %s failed", spec.stage, stale)

    async def run(stream: faust.StreamT) -> None:
        # faust's StreamT does not declare take_events (faust.Stream has it).
        batches = stream.take_events(spec.batch, within=spec.linger_s)  # type: ignore[attr-defined]
        async for events in batches:
            messages = [_message(event) for event in events]
            if offsets is not None:
                came_back(messages)
            await guarded(messages, spec.handle, reject, spec.stage)
            if spec.positions is not None:
                # After the handler: a read mark never claims what was read but not yet
                # handled (its findings and summaries not yet sent ahead of the mark).
                spec.positions.handled(messages)

    app.agent(raw_topic(app, spec.topic), name=spec.name)(run)


RebalanceHook = Callable[[int], Awaitable[None]]
"""Called with the number of partitions revoked or assigned."""


def on_partitions_revoked(app: faust.App, hook: RebalanceHook) -> None:
    """Call `hook(number revoked)` when a rebalance begins (0 at the first assignment)."""

    async def receiver(sender: object, revoked: Any = None, **kwargs: Any) -> None:
        await hook(len(revoked or ()))

    app.on_partitions_revoked.connect(receiver)  # type: ignore[arg-type]


def on_partitions_assigned(app: faust.App, hook: RebalanceHook) -> None:
    """Call `hook(number assigned)` when a rebalance assigned this worker's partitions."""

    async def receiver(sender: object, assigned: Any = None, **kwargs: Any) -> None:
        await hook(len(assigned or ()))

    app.on_partitions_assigned.connect(receiver)  # type: ignore[arg-type]


def on_shutdown(app: faust.App, hook: Callable[[], Awaitable[None]]) -> None:
    """Call `hook()` before the worker shuts down."""

    async def receiver(sender: object, **kwargs: Any) -> None:
        await hook()

    app.on_before_shutdown.connect(receiver)  # type: ignore[arg-type]


def assigned_partitions(app: faust.App) -> list[tuple[str, int]]:
    """(topic, partition) of each partition this worker holds; [] mid-rebalance."""
    try:
        return [(tp.topic, tp.partition) for tp in app.consumer.assignment()]
    except Exception:
        return []


async def read_as_of(
    app: faust.App, topic: str, read: PartitionOffsets, progress: ReadProgress, now: float
) -> dict[int, float]:
    """For each partition of `topic` this worker holds, the newest moment (up to `now`)
    as of which it has read everything the broker held (`read`: the offsets its agent
    read, see Agent.positions; `progress`: the log ends sampled at earlier calls); {}
    mid-rebalance. A partition nothing was read from since it was assigned is read as of
    now when the consumer's position is at its end: the previous owner read it all.
    """
    consumer = app.consumer
    out: dict[int, float] = {}
    try:
        held = [tp for tp in consumer.assignment() if tp.topic == topic]
        for tp in held:
            end = consumer.highwater(tp)
            if end is None:
                continue  # no fetch answered yet: nothing known
            progress.sample(tp.partition, now, end)
            last = read.last.get(tp.partition)
            if last is None:
                position = await consumer.position(tp)
                if position is not None and position >= end:
                    out[tp.partition] = now
                continue
            as_of = progress.read_as_of(tp.partition, last)
            if as_of is not None:
                out[tp.partition] = as_of
        progress.drop(set(progress.samples) - {tp.partition for tp in held})
    except Exception as exc:  # mid-rebalance, or the consumer not started: no claim
        log.debug("read positions of %s unknown: %s", topic, exc)
        return {}
    return dict(sorted(out.items()))


def add_acking_agent(
    app: faust.App, name: str, topic: str, handle: Callable[[Message, Callable[[], object]], None]
) -> None:
    """Add agent `name` on `topic` that hands each message, one at a time, to `handle`
    with its ack: the message's offset is committed only once ack was called (faust's
    manual acks), so `handle` may finish its work after it returned."""

    async def run(stream: faust.StreamT) -> None:
        # faust's StreamT does not declare noack() or events() (faust.Stream has both).
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            handle(_message(event), event.ack)

    app.agent(raw_topic(app, topic), name=name)(run)
