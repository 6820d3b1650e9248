"""Generators of malformed events, for tests and fault drills (``python -m scripts.drill``).

Each kind breaks one rule of the `interactions` schema; the worker must route every one
to the dead-letter topic with a reason, and keep going.
"""

from __future__ import annotations

import json
import random

KINDS = ("bad_json", "not_object", "missing_user", "int_user", "unknown_event",
         "ts_seconds", "ts_future", "ts_string", "nan_value", "oversize", "empty", "binary")


def malformed_interaction(kind: str, rng: random.Random, max_bytes: int = 65536) -> bytes:
    """One invalid `interactions` value of the given kind."""
    u, i = f"u{rng.randrange(10_000)}", f"i{rng.randrange(10_000)}"
    ok = {"user_id": u, "item_id": i, "event": "click", "ts": 1_700_000_000_000}
    if kind == "bad_json":
        return b'{"user_id": "' + u.encode() + b'", "item_id": '
    if kind == "not_object":
        return json.dumps([u, i]).encode()
    if kind == "missing_user":
        return json.dumps({k: v for k, v in ok.items() if k != "user_id"}).encode()
    if kind == "int_user":
        return json.dumps({**ok, "user_id": rng.randrange(100)}).encode()
    if kind == "unknown_event":
        return json.dumps({**ok, "event": "like"}).encode()
    if kind == "ts_seconds":
        return json.dumps({**ok, "ts": 1_700_000_000}).encode()
    if kind == "ts_future":
        return json.dumps({**ok, "ts": 4_102_444_800_000}).encode()  # year 2100
    if kind == "ts_string":
        return json.dumps({**ok, "ts": "yesterday"}).encode()
    if kind == "nan_value":
        return json.dumps({**ok, "value": float("nan")}).encode()  # NaN is not JSON
    if kind == "oversize":
        return json.dumps({**ok, "pad": "x" * (max_bytes + 1)}).encode()
    if kind == "empty":
        return b""
    if kind == "binary":
        return bytes(rng.randrange(256) for _ in range(32))
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def malformed_interactions(n: int, seed: int = 0, max_bytes: int = 65536) -> list[bytes]:
    """``n`` invalid values cycling through every kind (deterministic for a seed)."""
    rng = random.Random(seed)
    return [malformed_interaction(KINDS[j % len(KINDS)], rng, max_bytes) for j in range(n)]
