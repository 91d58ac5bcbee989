"""One Redis subscription per server process, fanned out to every open page.

The sink publishes a small notice per flush on each run's updates channel, and every alert
transition on the run's alerts channel. The hub PSUBSCRIBEs to both patterns once and puts
each message into the queue of every page watching that run (or all runs), so 20 open tabs
cost Redis one subscriber, and each tab then fetches only what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stepstream.keys import RedisKeys

log = logging.getLogger(__name__)

QUEUE_SIZE = 256


@dataclass(eq=False)  # identity: each page's listener is its own
class Listener:
    """One page's queue of (event, data) pairs, for one run or every run (None)."""

    run: str | None
    queue: asyncio.Queue[tuple[str, str]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    overflowed: bool = False


def parse_message(keys: RedisKeys, channel: str, data: str) -> tuple[str, str, str] | None:
    """(event, run, data) of a pub/sub message: event ``update`` or ``alert``; None for a
    channel that is neither."""
    for event, pattern in (
        ("update", keys.updates_channel_pattern()),
        ("alert", keys.alerts_channel_pattern()),
    ):
        prefix = pattern[:-1]
        if channel.startswith(prefix):
            return event, channel[len(prefix) :], data
    return None


class UpdateHub:
    """Fans the runs' pub/sub messages out to listeners; `client_factory` makes an async
    redis client (one pub/sub connection is held while the hub runs)."""

    def __init__(self, client_factory: Callable[[], Any], keys: RedisKeys) -> None:
        self._factory = client_factory
        self._keys = keys
        self._listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self.messages = 0
        self.connected = asyncio.Event()

    def listen(self, run: str | None) -> Listener:
        """A new listener for `run` (None: every run)."""
        listener = Listener(run)
        self._listeners.add(listener)
        return listener

    def forget(self, listener: Listener) -> None:
        """Stop delivering to `listener`."""
        self._listeners.discard(listener)

    @property
    def listeners(self) -> int:
        """Pages listening now."""
        return len(self._listeners)

    def publish(self, event: str, run: str, data: str) -> None:
        """Deliver one message to every listener of `run`. A full queue (a stalled page)
        loses the message and is told to reload once it reads again."""
        self.messages += 1
        for listener in list(self._listeners):
            if listener.run is not None and listener.run != run:
                continue
            try:
                listener.queue.put_nowait((event, data))
            except asyncio.QueueFull:
                listener.overflowed = True

    async def start(self) -> None:
        """Subscribe in the background; reconnects with backoff when Redis goes away."""
        self._task = asyncio.create_task(self._pump(), name="dashboard-hub")

    async def stop(self) -> None:
        """Unsubscribe and tell every listener the server is going away."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for listener in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):
                listener.queue.put_nowait(("bye", "{}"))

    async def _pump(self) -> None:
        delay = 0.2
        patterns = (self._keys.updates_channel_pattern(), self._keys.alerts_channel_pattern())
        while True:
            client = self._factory()
            pubsub = client.pubsub()
            try:
                await pubsub.psubscribe(*patterns)
                self.connected.set()
                delay = 0.2
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                    if message is None or message.get("type") != "pmessage":
                        continue
                    channel, data = message["channel"], message["data"]
                    if isinstance(channel, bytes):
                        channel = channel.decode()
                    if isinstance(data, bytes):
                        data = data.decode()
                    parsed = parse_message(self._keys, channel, data)
                    if parsed is not None:
                        self.publish(*parsed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away or ACL refusal: say so, retry
                self.connected.clear()
                log.warning("dashboard live updates: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()


def sse_frame(event: str, data: str) -> bytes:
    """One server-sent event (data is one line of JSON)."""
    return f"event: {event}\ndata: {data}\n\n".encode()


def overflow_frame() -> bytes:
    """Tells a page it missed messages: it reloads what it shows."""
    return sse_frame("reload", json.dumps({"reason": "missed updates"}))
