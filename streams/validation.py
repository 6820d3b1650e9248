"""Turn raw Kafka values into typed records, or say exactly why not.

Shape and types are checked by ``msgspec`` while decoding (its messages name the field,
e.g. ``Expected `str`, got `int` - at `$.user_id```); the rules JSON types cannot
express (timestamp range, id length, finite numbers, payload size) are checked here.
Every failure raises :class:`~common.errors.BadEvent` with a human-readable reason; the
worker sends the original bytes and that reason to the dead-letter topic and carries on.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

import msgspec

from common.errors import BadEvent
from common.events import Interaction, ItemEvent
from common.ids import MAX_ID_LEN

MIN_TS_MS = 631_152_000_000  # 1990-01-01: earlier "ms" timestamps are seconds or garbage
MAX_FUTURE_MS = 24 * 3600 * 1000  # a day of clock skew at most
MAX_DEPTH = 32  # objects/arrays nested deeper than this are not events
_INTERACTION_FIELDS = tuple(f'"{name}"'.encode() for name in Interaction.__struct_fields__)

_interaction_decoder = msgspec.json.Decoder(Interaction)
_item_decoder = msgspec.json.Decoder(ItemEvent)


def _decode(decoder: msgspec.json.Decoder, raw: bytes | None, max_bytes: int,
            key_check: bool) -> object:
    """Decode after the cheap byte-level checks, so a malformed record fails alone.

    Invalid UTF-8 and deep nesting made the decoder raise exceptions other than its
    own (``UnicodeDecodeError``, ``RecursionError``); they escaped as processing errors
    and sent the whole micro-batch down the slow one-by-one path. Duplicate keys were
    silently resolved by the last one winning. All three are rejected here first.
    """
    if not raw:
        raise BadEvent("empty message (no value)")
    if len(raw) > max_bytes:
        raise BadEvent(f"payload of {len(raw)} bytes exceeds the {max_bytes}-byte limit")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEvent(f"not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH:
        _check_depth(raw)
    if key_check:
        _check_duplicate_keys(raw)
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadEvent(f"invalid event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadEvent(f"not valid JSON: {exc}") from None
    except (RecursionError, UnicodeError, ValueError) as exc:  # defensive: never a crash
        raise BadEvent(f"not valid JSON: {type(exc).__name__}: {exc}") from None


def _check_depth(raw: bytes) -> None:
    """Reject nesting deeper than :data:`MAX_DEPTH` (brackets inside strings ignored).

    >>> _check_depth(b'{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')
    >>> _check_depth(b'{"a":' + b'[' * 40 + b']' * 40 + b'}')
    Traceback (most recent call last):
    ...
    common.errors.BadEvent: JSON nested deeper than 32 levels
    """
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):  # { [
            depth += 1
            if depth > MAX_DEPTH:
                raise BadEvent(f"JSON nested deeper than {MAX_DEPTH} levels")
        elif byte in (0x7D, 0x5D):
            depth -= 1


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise BadEvent(f"duplicate JSON key {key[:64]!r}")
        seen.add(key)
    return dict(pairs)


def _check_duplicate_keys(raw: bytes) -> None:
    """Reject an object with a repeated key, at any depth."""
    try:
        json.loads(raw, object_pairs_hook=_reject_duplicates)
    except (json.JSONDecodeError, RecursionError):
        return  # not JSON: the decoder names the error precisely


def _interaction_needs_key_check(raw: bytes) -> bool:
    """Cheap test: could a top-level field be repeated? (Escapes may hide a name.)"""
    return b"\\u" in raw or max(map(raw.count, _INTERACTION_FIELDS)) > 1


def _check_id(value: str, name: str) -> None:
    """The shared id rule (:mod:`common.ids`), plus printable: ingest also refuses
    control characters (NUL, ESC) that would end up in logs, documents and headers."""
    if not value or len(value) > MAX_ID_LEN or not value.isprintable():
        raise BadEvent(f"field {name!r} must be 1-{MAX_ID_LEN} printable characters")


def _check_ts(ts: int | float, now_ms: int | None) -> int:
    if not math.isfinite(ts):
        raise BadEvent(f"field 'ts' must be finite epoch milliseconds, got {ts!r}")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if ts < MIN_TS_MS or ts > now_ms + MAX_FUTURE_MS:
        raise BadEvent(f"timestamp {ts} is out of range (epoch milliseconds between 1990 "
                       "and tomorrow expected)")
    return int(ts)


def parse_interaction(raw: bytes | None, max_bytes: int = 65536,
                      now_ms: int | None = None) -> Interaction:
    """Validate one ``interactions`` value; the result always has an ``event_id``.

    >>> parse_interaction(b'{"user_id":"u1","item_id":"i1","event":"click","ts":1.7e12}').ts
    1700000000000
    >>> parse_interaction(b'{"user_id":"u1","item_id":"i1","event":"like","ts":1.7e12}')
    Traceback (most recent call last):
    ...
    common.errors.BadEvent: invalid event: Invalid enum value 'like' - at `$.event`
    """
    ev = _decode(_interaction_decoder, raw, max_bytes,
                 key_check=raw is not None and _interaction_needs_key_check(raw))
    assert isinstance(ev, Interaction)
    _check_id(ev.user_id, "user_id")
    _check_id(ev.item_id, "item_id")
    ts = _check_ts(ev.ts, now_ms)
    value = ev.value
    if value is not None and not math.isfinite(value):
        raise BadEvent(f"field 'value' must be a finite number, got {value!r}")
    event_id = ev.event_id
    if event_id is not None:
        _check_id(event_id, "event_id")
    return msgspec.structs.replace(
        ev, ts=ts, value=None if value is None else float(value),
        event_id=event_id or derive_event_id(ev.user_id, ev.item_id, ev.event, ts))


def derive_event_id(user_id: str, item_id: str, event: str, ts: int) -> str:
    """A stable id for an event that came without one (same content → same id)."""
    digest = hashlib.blake2b(f"{user_id}\x1f{item_id}\x1f{event}\x1f{ts}".encode(),
                             digest_size=8)
    return digest.hexdigest()


def parse_item(raw: bytes | None, max_bytes: int = 65536,
               now_ms: int | None = None) -> ItemEvent:
    """Validate one ``items`` value (attributes default to ``{}``)."""
    ev = _decode(_item_decoder, raw, max_bytes, key_check=True)  # attributes: any keys
    assert isinstance(ev, ItemEvent)
    _check_id(ev.item_id, "item_id")
    return msgspec.structs.replace(ev, ts=_check_ts(ev.ts, now_ms),
                                   attributes=ev.attributes or {})
