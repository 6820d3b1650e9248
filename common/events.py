"""Event schemas on the wire (JSON values on Kafka): the one place they are spelled.

Producers encode with :func:`interaction_json` / :func:`item_json`; the worker decodes
into the :class:`Interaction` / :class:`ItemEvent` structs (``msgspec``: decoding raw
bytes straight into a typed struct validates presence and types in C, about a
microsecond per event against ~70 µs for json + ``faust.Record``); the models take
their event types from :data:`EVENT_TYPES`.

``interactions`` (key = user_id)::

    {"user_id": str, "item_id": str, "event": "view"|"click"|"add_to_cart"|"purchase"|"rating",
     "value": number (optional), "ts": epoch milliseconds, "event_id": str (optional)}

``items`` (key = item_id)::

    {"item_id": str, "op": "upsert"|"delete", "attributes": {...}, "ts": epoch milliseconds}
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

import msgspec

EventType = Literal["view", "click", "add_to_cart", "purchase", "rating"]
ItemOp = Literal["upsert", "delete"]
#: Event types, weakest signal first.
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
ITEM_OPS: tuple[str, ...] = get_args(ItemOp)


class Interaction(msgspec.Struct, frozen=True):
    """One user interaction; ``event_id`` is derived when the producer sent none."""

    user_id: str
    item_id: str
    event: EventType
    ts: int | float
    value: int | float | None = None
    event_id: str | None = None


class ItemEvent(msgspec.Struct, frozen=True):
    """One catalogue change: ``upsert`` with attributes, or ``delete``."""

    item_id: str
    op: ItemOp
    ts: int | float
    attributes: dict[str, Any] | None = None

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def interaction_json(user_id: str, item_id: str, event: str, ts_ms: int,
                     value: float | None = None, event_id: str | None = None) -> bytes:
    """Encode one interaction event.

    >>> interaction_json("u1", "i9", "click", 1700000000000)
    b'{"user_id":"u1","item_id":"i9","event":"click","ts":1700000000000}'
    """
    body: dict[str, Any] = {"user_id": user_id, "item_id": item_id, "event": event}
    if value is not None:
        body["value"] = value
    body["ts"] = int(ts_ms)
    if event_id is not None:
        body["event_id"] = event_id
    return _dumps(body).encode()


def item_json(item_id: str, op: str, attributes: dict[str, Any], ts_ms: int) -> bytes:
    """Encode one item event."""
    return _dumps({"item_id": item_id, "op": op, "attributes": attributes,
                   "ts": int(ts_ms)}).encode()
