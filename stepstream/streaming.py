"""The faust app shape shared by the processor and sink stages, and the worker runner."""

from __future__ import annotations

import time

import faust

from stepstream.contract import DeadLetter
from stepstream.settings import Settings


def faust_broker_url(bootstrap: str) -> str:
    """faust's broker URL for comma-separated bootstrap servers."""
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap.split(","))


def make_app(settings: Settings, app_id: str) -> faust.App:
    """A faust app with stepstream's settings: memory store, no web server, short sessions.

    The session timeout is short because a group join on tansu takes about half of it;
    the heartbeat interval must stay well below it.
    """
    session_s = settings.session_timeout_s
    return faust.App(
        app_id,
        broker=faust_broker_url(settings.kafka_bootstrap),
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.partitions,
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.2, session_s / 6),
        broker_rebalance_timeout=max(session_s * 2, 10.0),
        consumer_auto_offset_reset="earliest",
        producer_linger=0.005,
        stream_buffer_maxsize=4096,
    )


def run_worker(app: faust.App, log_level: str) -> None:
    """Run `app` in this process until SIGTERM or Ctrl-C (faust handles both)."""
    worker = faust.Worker(app, loglevel=log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def dead_letter_of(event: faust.EventT, topic: str, reason: str, detail: str) -> bytes:
    """The dead-letter message, as bytes, of a faust event that could not be used."""
    message = event.message
    return DeadLetter.of(
        reason=reason,
        detail=detail,
        topic=topic,
        key=event.key if isinstance(event.key, bytes) else None,
        value=event.value if isinstance(event.value, bytes) else None,
        partition=message.partition,
        offset=message.offset,
        now=time.time(),
    ).to_bytes()
