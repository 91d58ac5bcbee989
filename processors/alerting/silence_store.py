"""Silences kept in Redis: written by the CLI, read by the alerting stage."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import replace
from typing import Any

from processors.alerting.silences import Silence
from stepstream.keys import RedisKeys


def silence_to_json(silence: Silence) -> str:
    """The stored form of a silence."""
    return json.dumps(
        {
            "id": silence.id,
            "matchers": silence.matchers,
            "starts_at": silence.starts_at,
            "ends_at": silence.ends_at,
            "created_by": silence.created_by,
            "comment": silence.comment,
        }
    )


def silence_from_json(raw: bytes | str) -> Silence:
    """A stored silence."""
    doc: dict[str, Any] = json.loads(raw)
    return Silence(**doc)


def new_silence(
    matchers: dict[str, str],
    duration_s: float,
    created_by: str,
    comment: str,
    now: float | None = None,
) -> Silence:
    """A silence starting now for `duration_s`."""
    start = time.time() if now is None else now
    return Silence(
        id=secrets.token_hex(4),
        matchers=matchers,
        starts_at=start,
        ends_at=start + duration_s,
        created_by=created_by,
        comment=comment,
    )


class SilenceStore:
    """Sync access for the CLI (redis-py client injected)."""

    def __init__(self, client: Any, keys: RedisKeys) -> None:
        self._client = client
        self._key = keys.silences()

    def add(self, silence: Silence) -> None:
        """Store a silence."""
        self._client.hset(self._key, silence.id, silence_to_json(silence))

    def list(self, now: float | None = None, include_expired: bool = False) -> list[Silence]:
        """Silences, active ones only unless `include_expired`."""
        at = time.time() if now is None else now
        found = [silence_from_json(v) for v in self._client.hvals(self._key)]
        if not include_expired:
            found = [s for s in found if s.ends_at > at]
        return sorted(found, key=lambda s: s.starts_at)

    def expire(self, silence_id: str, now: float | None = None) -> bool:
        """End a silence now; False when no silence has that id."""
        raw = self._client.hget(self._key, silence_id)
        if raw is None:
            return False
        silence = silence_from_json(raw)
        self.add(replace(silence, ends_at=time.time() if now is None else now))
        return True


async def load_silences(client: Any, keys: RedisKeys) -> list[Silence]:
    """Every stored silence, for the alerting stage (async redis client)."""
    values = await client.hvals(keys.silences())
    return [silence_from_json(v) for v in values]
