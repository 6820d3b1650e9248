"""Typed Faust records for the two input topics (schemas in common/events.py)."""

from __future__ import annotations

from typing import Any

import faust


class Interaction(faust.Record, serializer="json"):
    """One user interaction, validated; ``event_id`` derived when the producer sent none."""

    user_id: str
    item_id: str
    event: str
    ts: int
    event_id: str
    value: float | None = None


class ItemEvent(faust.Record, serializer="json"):
    """One catalogue change: ``upsert`` with attributes, or ``delete``."""

    item_id: str
    op: str
    ts: int
    attributes: dict[str, Any] = {}  # noqa: RUF012 - faust copies record defaults
