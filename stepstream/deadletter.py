"""Building dead letters: bounded in size and safe to encode whatever the message held.

Pure: no Kafka, faust or Redis. A dead letter keeps an excerpt of the original value (UTF-8
text when it is printable text, else base64), the value's size and SHA-256, where it was
read (topic, partition, offset), the stage that refused it and why. However large or odd
the message, the dead letter stays a few KiB, so sending it cannot fail on its size.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Literal

from stepstream.contract import DeadLetter

#: Most bytes of the original value a dead letter carries.
EXCERPT_BYTES = 2048
#: Most characters of a detail or key excerpt.
DETAIL_CHARS = 1024
KEY_CHARS = 256

Encoding = Literal["utf-8", "base64"]

# C0 controls other than tab, newline and carriage return, DEL and C1 controls: a payload
# with any of these is carried as base64, so its JSON escaping cannot blow up its size.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def excerpt(value: bytes, limit: int = EXCERPT_BYTES) -> tuple[str, Encoding, bool]:
    """(text, encoding, truncated): the first `limit` bytes of `value` as UTF-8 text when
    they are printable text (a multi-byte character cut at the end is dropped), else as
    base64 of the first `limit` bytes."""
    head = value[:limit]
    truncated = len(value) > limit
    for cut in range(4 if truncated else 1):
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not _CONTROL.search(text):
            return text, "utf-8", truncated or cut > 0
        break
    return base64.b64encode(head).decode("ascii"), "base64", truncated


def bounded_text(text: str, limit: int) -> str:
    """`text` with control characters escaped, cut to `limit` characters (marked with …)."""
    safe = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text[: limit * 4])
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


def dead_letter(
    *,
    stage: str,
    reason: str,
    detail: str,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    partition: int | None,
    offset: int | None,
    now: float,
) -> DeadLetter:
    """The dead letter of the message (`key`, `value`) read at (topic, partition, offset)."""
    raw = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None
    payload, encoding, truncated = excerpt(raw) if raw else ("", "utf-8", False)
    encoding_: Encoding = encoding
    key_text = None
    if isinstance(key, bytes | bytearray | memoryview) and key:
        key_text = bounded_text(bytes(key[: KEY_CHARS * 4]).decode("utf-8", "replace"), KEY_CHARS)
    return DeadLetter(
        stage=stage,
        reason=bounded_text(reason, 64),
        detail=bounded_text(detail, DETAIL_CHARS),
        topic=topic,
        partition=partition,
        offset=offset,
        key=key_text,
        size=None if raw is None else len(raw),
        sha256=None if raw is None else hashlib.sha256(raw).hexdigest(),
        payload=payload,
        payload_encoding=encoding_,
        truncated=truncated,
        t=now,
    )
