"""The shared storage contract: what the worker writes and the API reads.

Redis (``settings.redis_prefix`` + key):
- ``item:{item_id}`` — JSON object of item metadata (attributes of the last upsert).
- ``items:unavailable`` — set of deleted item ids; never recommended.
- ``popular`` — sorted set item_id → time-decayed popularity score, replaced atomically.
- ``popular:meta`` — JSON ``{"ref_ms": ..., "half_life_s": ...}``: scores are decayed
  counts expressed at the reference time ``ref_ms`` (multiply by
  ``2 ** ((ref_ms - now_ms) / 1000 / half_life_s)`` for today's value; order is the same).
- ``popular:offsets`` — hash partition → last applied offset (exactly-once counting).

MongoDB collection ``users`` — one document per user::

    {_id: user_id, vector: [float], model_version: str, history: [item_id, ...newest last],
     n_events: int, updated_at: datetime, last_event_ms: int,
     watermark: {p: partition, o: offset}, event_ids: [recent event ids]}

Keeping the layout in one module means the writer (``streams``) and the reader
(``recommender_server``) cannot drift apart silently.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pymongo
import redis
from pymongo import ReplaceOne
from pymongo.collection import Collection
from pymongo.database import Database


class ItemCache:
    """Item metadata, availability and the popular list in Redis."""

    def __init__(self, client: redis.Redis, prefix: str = "recsys:") -> None:
        self.r = client
        self.prefix = prefix

    def _item_key(self, item_id: str) -> str:
        return f"{self.prefix}item:{item_id}"

    @property
    def _unavailable_key(self) -> str:
        return f"{self.prefix}items:unavailable"

    @property
    def _popular_key(self) -> str:
        return f"{self.prefix}popular"

    def put_items(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        """Store metadata for many items and mark them available again."""
        if not items:
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.mset({self._item_key(i): json.dumps(meta, separators=(",", ":"))
                   for i, meta in items.items()})
        pipe.srem(self._unavailable_key, *items.keys())
        pipe.execute()

    def get_items(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Metadata for the ids that have any (missing ids are left out)."""
        if not item_ids:
            return {}
        raw = self.r.mget([self._item_key(i) for i in item_ids])
        return {i: json.loads(v) for i, v in zip(item_ids, raw, strict=True) if v is not None}

    def mark_unavailable(self, item_ids: Iterable[str]) -> None:
        ids = list(item_ids)
        if ids:
            self.r.sadd(self._unavailable_key, *ids)

    def unavailable(self) -> set[str]:
        """Every deleted item id (small: deletions are rare relative to the catalogue)."""
        return cast(set[str], self.r.smembers(self._unavailable_key))  # decoded replies

    def unavailable_among(self, item_ids: Sequence[str]) -> set[str]:
        if not item_ids:
            return set()
        flags = self.r.smismember(self._unavailable_key, list(item_ids))
        return {i for i, f in zip(item_ids, flags, strict=True) if f}

    def set_popular(
        self, scores: Mapping[str, float], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Replace the popular list atomically (readers never see a half-written list)."""
        tmp = f"{self._popular_key}:tmp"
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(tmp)
        if scores:
            pipe.zadd(tmp, dict(scores))
            pipe.rename(tmp, self._popular_key)
        else:
            pipe.delete(self._popular_key)
        if meta is not None:
            pipe.set(f"{self._popular_key}:meta", json.dumps(dict(meta)))
        pipe.execute()

    def add_popularity(self, increments: Mapping[str, float],
                       offsets: Mapping[int, int], meta: Mapping[str, Any]) -> None:
        """Add decayed-count increments and advance per-partition offsets atomically.

        Increments add up across workers (``ZINCRBY``), so workers sharing the topic's
        partitions build one list; the offsets (same transaction) let a restarted worker
        skip redelivered events instead of counting them twice.
        """
        pipe = self.r.pipeline(transaction=True)
        for item, inc in increments.items():
            pipe.zincrby(self._popular_key, inc, item)
        if offsets:
            pipe.hset(f"{self._popular_key}:offsets",
                      mapping={str(p): o for p, o in offsets.items()})
        pipe.set(f"{self._popular_key}:meta", json.dumps(dict(meta)))
        pipe.execute()

    def rescale_popularity(self, factor: float, meta: Mapping[str, Any]) -> None:
        """Multiply every score by ``factor`` (moving the decay reference time)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zunionstore(self._popular_key, {self._popular_key: factor})
        pipe.set(f"{self._popular_key}:meta", json.dumps(dict(meta)))
        pipe.execute()

    def popularity_offsets(self) -> dict[int, int]:
        """Last applied offset per partition of the interactions topic."""
        return {int(p): int(o) for p, o in
                self.r.hgetall(f"{self._popular_key}:offsets").items()}

    def popular(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most popular item ids with their decayed scores, best first."""
        top = cast(list[tuple[str, float]],  # decoded replies, scores with withscores
                   self.r.zrevrange(self._popular_key, 0, max(k, 1) - 1, withscores=True))
        return [(i, float(s)) for i, s in top]

    def popular_meta(self) -> dict[str, Any]:
        raw = self.r.get(f"{self._popular_key}:meta")
        return json.loads(raw) if raw else {}


@dataclass
class UserDoc:
    """One user's serving state, as stored in MongoDB."""

    user_id: str
    vector: list[float]
    model_version: str
    history: list[str] = field(default_factory=list)
    n_events: int = 0
    last_event_ms: int = 0
    updated_at: dt.datetime | None = None
    #: ``{"p": partition, "o": offset}`` of the last applied event: the worker skips
    #: redelivered events at or below it, so replays after a crash count once.
    watermark: dict[str, int] | None = None
    #: Ids of the user's most recent events (skips duplicates sent twice by a producer).
    event_ids: list[str] = field(default_factory=list)

    def to_mongo(self) -> dict[str, Any]:
        return {
            "vector": self.vector, "model_version": self.model_version,
            "history": self.history, "n_events": self.n_events,
            "last_event_ms": self.last_event_ms,
            "updated_at": self.updated_at or dt.datetime.now(dt.UTC),
            "watermark": self.watermark, "event_ids": self.event_ids,
        }

    @classmethod
    def from_mongo(cls, doc: Mapping[str, Any]) -> UserDoc:
        return cls(
            user_id=str(doc["_id"]), vector=list(doc.get("vector") or []),
            model_version=str(doc.get("model_version", "")),
            history=list(doc.get("history") or []), n_events=int(doc.get("n_events", 0)),
            last_event_ms=int(doc.get("last_event_ms", 0)), updated_at=doc.get("updated_at"),
            watermark=doc.get("watermark"), event_ids=list(doc.get("event_ids") or []),
        )


class UserStore:
    """User vectors and histories in MongoDB's ``users`` collection."""

    def __init__(self, db: Database, collection: str = "users") -> None:
        self.col: Collection = db[collection]

    def upsert_many(self, docs: Sequence[UserDoc], timeout_s: float | None = None) -> int:
        """Write many users in one round trip (SecantusDB does ~650 single upserts/s).

        Whole-document replaces: the worker owns every field, and a replace of a small
        document measured twice as fast as a ``$set`` upsert on the local server; being
        idempotent, a replace can be sent again when a timeout leaves it in doubt.
        ``timeout_s`` bounds the write on both sides (``pymongo.timeout``: socket wait,
        and ``maxTimeMS`` sent to the server); ``streams.user_writes`` sets it.
        """
        if not docs:
            return 0
        ops = [ReplaceOne({"_id": d.user_id}, d.to_mongo(), upsert=True) for d in docs]
        with _bounded(timeout_s):
            result = self.col.bulk_write(ops, ordered=False)
        return result.upserted_count + result.modified_count

    def landed(self, docs: Sequence[UserDoc], timeout_s: float | None = None) -> set[str]:
        """Ids of ``docs`` stored with exactly their version (watermark and event count).

        The cheap read that settles a write left in doubt by a timeout: only documents
        not found here need sending again. Bounded like :meth:`upsert_many`.
        """
        if not docs:
            return set()
        want = {d.user_id: (d.watermark, d.n_events) for d in docs}
        with _bounded(timeout_s):
            rows = list(self.col.find({"_id": {"$in": list(want)}},
                                      {"watermark": 1, "n_events": 1}))
        return {str(r["_id"]) for r in rows
                if (r.get("watermark"), int(r.get("n_events", 0))) == want.get(str(r["_id"]))}

    def get(self, user_id: str) -> UserDoc | None:
        doc = self.col.find_one({"_id": user_id})
        return UserDoc.from_mongo(doc) if doc else None

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserDoc]:
        return {str(d["_id"]): UserDoc.from_mongo(d)
                for d in self.col.find({"_id": {"$in": list(user_ids)}})}


def _bounded(timeout_s: float | None) -> contextlib.AbstractContextManager[object]:
    """``pymongo.timeout(timeout_s)``, or no change when ``timeout_s`` is None."""
    return contextlib.nullcontext() if timeout_s is None else pymongo.timeout(timeout_s)
