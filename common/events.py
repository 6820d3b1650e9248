"""Event schemas on the wire (JSON values on Kafka), shared by producers and the worker.

``interactions`` (key = user_id)::

    {"user_id": str, "item_id": str, "event": "view"|"click"|"add_to_cart"|"purchase"|"rating",
     "value": number (optional), "ts": epoch milliseconds}

``items`` (key = item_id)::

    {"item_id": str, "op": "upsert"|"delete", "attributes": {...}, "ts": epoch milliseconds}
"""

from __future__ import annotations

import json
from typing import Any

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")
ITEM_OPS = ("upsert", "delete")

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
