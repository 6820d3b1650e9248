"""Turn raw Kafka values into typed records, or say exactly why not.

Every rule raises :class:`~common.errors.BadEvent` with a human-readable reason; the
worker sends the original bytes and that reason to the dead-letter topic and carries on.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

from common.errors import BadEvent
from common.events import EVENT_TYPES, ITEM_OPS
from streams.records import Interaction, ItemEvent

MIN_TS_MS = 631_152_000_000  # 1990-01-01: earlier "ms" timestamps are seconds or garbage
MAX_FUTURE_MS = 24 * 3600 * 1000  # a day of clock skew at most
MAX_ID_LEN = 256


def _load(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise BadEvent("empty message (no value)")
    if len(raw) > max_bytes:
        raise BadEvent(f"payload of {len(raw)} bytes exceeds the {max_bytes}-byte limit")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadEvent(f"not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadEvent(f"expected a JSON object, got {type(body).__name__}")
    return body


def _id(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise BadEvent(f"missing field {name!r}")
    if not isinstance(value, str):
        raise BadEvent(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value or len(value) > MAX_ID_LEN or not value.isprintable():
        raise BadEvent(f"field {name!r} must be 1-{MAX_ID_LEN} printable characters")
    return value


def _ts(body: dict[str, Any], now_ms: int | None) -> int:
    ts = body.get("ts")
    if ts is None:
        raise BadEvent("missing field 'ts'")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise BadEvent(f"field 'ts' must be epoch milliseconds (a number), got {ts!r}")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if ts < MIN_TS_MS or ts > now_ms + MAX_FUTURE_MS:
        raise BadEvent(f"timestamp {ts} is out of range (epoch milliseconds between 1990 "
                       "and tomorrow expected)")
    return int(ts)


def parse_interaction(raw: bytes | None, max_bytes: int = 65536,
                      now_ms: int | None = None) -> Interaction:
    """Validate one ``interactions`` value.

    >>> parse_interaction(b'{"user_id":"u1","item_id":"i1","event":"click","ts":1700000000000}').event
    'click'
    >>> parse_interaction(b'{"user_id":"u1","item_id":"i1","event":"like","ts":1700000000000}')
    Traceback (most recent call last):
    ...
    common.errors.BadEvent: unknown event type 'like'; expected one of view, click, add_to_cart, purchase, rating
    """
    body = _load(raw, max_bytes)
    user_id, item_id = _id(body, "user_id"), _id(body, "item_id")
    event = body.get("event")
    if not isinstance(event, str):
        raise BadEvent("missing or non-string field 'event'")
    if event not in EVENT_TYPES:
        raise BadEvent(f"unknown event type {event!r}; expected one of {', '.join(EVENT_TYPES)}")
    ts = _ts(body, now_ms)
    value = body.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not math.isfinite(value)):
        raise BadEvent(f"field 'value' must be a finite number, got {value!r}")
    event_id = body.get("event_id")
    if event_id is not None and (not isinstance(event_id, str) or not event_id):
        raise BadEvent("field 'event_id' must be a non-empty string")
    if event_id is None:
        event_id = derive_event_id(user_id, item_id, event, ts)
    return Interaction(user_id=user_id, item_id=item_id, event=event, ts=ts,
                       event_id=event_id, value=None if value is None else float(value))


def derive_event_id(user_id: str, item_id: str, event: str, ts: int) -> str:
    """A stable id for an event that came without one (same content → same id)."""
    digest = hashlib.blake2b(f"{user_id}\x1f{item_id}\x1f{event}\x1f{ts}".encode(),
                             digest_size=12)
    return digest.hexdigest()


def parse_item(raw: bytes | None, max_bytes: int = 65536, now_ms: int | None = None) -> ItemEvent:
    """Validate one ``items`` value."""
    body = _load(raw, max_bytes)
    item_id = _id(body, "item_id")
    op = body.get("op")
    if op not in ITEM_OPS:
        raise BadEvent(f"field 'op' must be one of {', '.join(ITEM_OPS)}, got {op!r}")
    attributes = body.get("attributes", {})
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict):
        raise BadEvent(f"field 'attributes' must be an object, got {type(attributes).__name__}")
    return ItemEvent(item_id=item_id, op=op, ts=_ts(body, now_ms), attributes=attributes)
