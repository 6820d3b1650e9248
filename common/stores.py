"""The shared storage contract: what the worker writes and the API reads.

Redis (``settings.redis_prefix`` + key):
- ``item:{item_id}`` — JSON object of item metadata (attributes of the last upsert).
- ``items:unavailable`` — set of deleted item ids; never recommended.
- ``items:known`` — set of ids that ever had an upsert (the catalogue). Only these are
  served: clicks on an id never upserted (a "ghost") are learned from, but its
  popularity waits in ``popular:pending`` and it is not exported to the index.
- ``items:version`` — hash item_id → event time (ms) of the last applied upsert/delete:
  item events apply in event-time order, not arrival order.
- ``popular`` — sorted set item_id → time-decayed popularity score (catalogue items).
- ``popular:pending`` — the same for ghost items; moved into ``popular`` by their upsert.
- ``popular:meta`` — JSON ``{"ref_ms": ..., "half_life_s": ...}``: scores are decayed
  counts expressed at the reference time ``ref_ms`` (multiply by
  ``2 ** ((ref_ms - now_ms) / 1000 / half_life_s)`` for today's value; order is the same).
- ``popular:offsets`` — hash partition → anchor of the last applied event, JSON
  ``{"e": epoch, "o": offset, "fp": fingerprint}`` (exactly-once counting; see
  ``streams/epochs.py``; a bare integer is the older offset-only form).
- ``cooc:{item_id}`` — JSON ``[[item_id, cosine], ...]``, best first: the item's top
  co-occurring catalogue items, as the worker's model counts them from the stream
  (``models.cooc``); re-written every ``RECSYS_WORKER_COOC_EXPORT_INTERVAL_S`` for the
  items whose partners changed. What ``GET /v1/items/{id}/similar?source=cooc`` serves.
- ``user:{user_id}`` — the user's *hot state*: what the API needs to serve (query
  vector, recent events, version = event count), JSON encoded by
  :mod:`common.hot_users`, written by the worker for every applied batch before the
  durable MongoDB write, with a TTL (``RECSYS_WORKER_HOT_STATE_TTL_S``). The API reads
  it first; the MongoDB document answers when it is missing or older.

MongoDB collection ``users`` — one document per user::

    {_id: user_id, vector: [float], long_vector: [float], model_version: str,
     recent: {items: [item_id, ...newest last], events: [event type, ...]},
     n_events: int,
     updated_at: datetime, last_event_ms: int,
     watermark: {p: partition, o: offset, e: epoch},
     event_ids: [[event id, content digest], ...oldest first]}

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

import msgspec
import numpy as np
import numpy.typing as npt
import pymongo
import redis
from pymongo import ReplaceOne
from pymongo.collection import Collection
from pymongo.database import Database

from common.events import EVENT_TYPES

#: Adds popularity increments atomically with the catalogue check, so an item upserted
#: concurrently never leaves a count stranded in ``popular:pending``.
#: KEYS: popular, pending, known, offsets, meta. ARGV: meta, n_offsets, (partition,
#: anchor) * n_offsets, (item, increment) * rest.
_ADD_POPULARITY = """
local n = tonumber(ARGV[2])
for j = 0, n - 1 do redis.call('HSET', KEYS[4], ARGV[3 + 2 * j], ARGV[4 + 2 * j]) end
for j = 3 + 2 * n, #ARGV, 2 do
  if redis.call('SISMEMBER', KEYS[3], ARGV[j]) == 1 then
    redis.call('ZINCRBY', KEYS[1], ARGV[j + 1], ARGV[j])
  else
    redis.call('ZINCRBY', KEYS[2], ARGV[j + 1], ARGV[j])
  end
end
redis.call('SET', KEYS[5], ARGV[1])
return 1
"""

#: Marks items known and moves their waiting popularity into the served list.
#: KEYS: popular, pending, known. ARGV: item ids.
_ADMIT_ITEMS = """
for _, item in ipairs(ARGV) do
  redis.call('SADD', KEYS[3], item)
  local waiting = redis.call('ZSCORE', KEYS[2], item)
  if waiting then
    redis.call('ZINCRBY', KEYS[1], waiting, item)
    redis.call('ZREM', KEYS[2], item)
  end
end
return 1
"""


@dataclass(frozen=True)
class RedisKeys:
    """The Redis key layout (module docstring): the one place key names are spelled.

    Used by the writer (:class:`ItemCache`, including its scripts' ``KEYS``) and the
    API's reader (``recommender_server.caches.Catalog``).

    >>> keys = RedisKeys("recsys:")
    >>> keys.item("a/b"), keys.unavailable, keys.popular_meta
    ('recsys:item:a/b', 'recsys:items:unavailable', 'recsys:popular:meta')
    >>> keys.user_state("u1"), keys.cooc("i9")
    ('recsys:user:u1', 'recsys:cooc:i9')
    """

    prefix: str = "recsys:"

    def item(self, item_id: str) -> str:
        """Metadata JSON of one item."""
        return f"{self.prefix}item:{item_id}"

    def cooc(self, item_id: str) -> str:
        """Top co-occurring items of one item (JSON pairs, best first)."""
        return f"{self.prefix}cooc:{item_id}"

    @property
    def unavailable(self) -> str:
        return f"{self.prefix}items:unavailable"

    @property
    def known(self) -> str:
        return f"{self.prefix}items:known"

    @property
    def versions(self) -> str:
        return f"{self.prefix}items:version"

    @property
    def popular(self) -> str:
        return f"{self.prefix}popular"

    @property
    def popular_pending(self) -> str:
        return f"{self.prefix}popular:pending"

    @property
    def popular_offsets(self) -> str:
        return f"{self.prefix}popular:offsets"

    @property
    def popular_meta(self) -> str:
        return f"{self.prefix}popular:meta"

    def user_state(self, user_id: str) -> str:
        """Hot serving state of one user (:mod:`common.hot_users`)."""
        return f"{self.prefix}user:{user_id}"

    @property
    def ranker(self) -> str:
        """The published ranker (:meth:`ranking.ranker.Ranker.to_text`)."""
        return f"{self.prefix}ranker:model"

    @property
    def ranker_version(self) -> str:
        """The published ranker's version: read first, the model only when it changed."""
        return f"{self.prefix}ranker:version"

    @property
    def stream_clock(self) -> str:
        """The worker's stream clock (:class:`common.session_query.StreamClock`)."""
        return f"{self.prefix}stream:clock"

    @property
    def popular_tmp(self) -> str:
        """Scratch key :meth:`ItemCache.set_popular` fills before renaming it."""
        return f"{self.prefix}popular:tmp"


class ItemCache:
    """Item metadata, availability and the popular list in Redis."""

    def __init__(self, client: redis.Redis, prefix: str = "recsys:") -> None:
        self.r = client
        self.keys = RedisKeys(prefix)
        self._add_popularity = client.register_script(_ADD_POPULARITY)
        self._admit = client.register_script(_ADMIT_ITEMS)

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    def put_items(self, items: Mapping[str, Mapping[str, Any]],
                  versions: Mapping[str, int] | None = None) -> None:
        """Store metadata for many items, mark them available and part of the catalogue.

        ``versions`` (item → event time in ms) are recorded for event-time ordering.
        """
        if not items:
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.mset({self.keys.item(i): json.dumps(meta, separators=(",", ":"))
                   for i, meta in items.items()})
        pipe.srem(self.keys.unavailable, *items.keys())
        if versions:
            pipe.hset(self.keys.versions, mapping=_redis_mapping(versions))
        pipe.execute()
        self._admit(keys=[self.keys.popular, self.keys.popular_pending,
                          self.keys.known], args=list(items))

    def item_versions(self, item_ids: Sequence[str]) -> dict[str, int]:
        """Event time of the last applied event per item (items never seen left out)."""
        if not item_ids:
            return {}
        raw = self.r.hmget(self.keys.versions, list(item_ids))
        return {i: int(v) for i, v in zip(item_ids, raw, strict=True) if v is not None}

    def put_similar(self, lists: Mapping[str, tuple[Sequence[str], Sequence[float]]],
                    chunk: int = 1000) -> None:
        """Store co-occurring items per item (``RedisKeys.cooc``: ``{"ids": [...],
        "scores": [...]}``, best first), in chunked ``MSET``s on one pipeline."""
        if not lists:
            return
        pipe = self.r.pipeline(transaction=False)
        pairs = list(lists.items())
        for start in range(0, len(pairs), chunk):
            pipe.mset({self.keys.cooc(i): _similar_enc.encode(SimilarList(list(j), list(s)))
                       for i, (j, s) in pairs[start:start + chunk]})
        pipe.execute()

    def similar(self, item_id: str) -> list[tuple[str, float]] | None:
        """The stored co-occurring items of ``item_id`` (``None``: none stored)."""
        return decode_similar(self.r.get(self.keys.cooc(item_id)))

    def known_among(self, item_ids: Sequence[str], chunk: int = 10_000) -> set[str]:
        """The ids that belong to the catalogue (had an upsert)."""
        out: set[str] = set()
        for start in range(0, len(item_ids), chunk):
            part = list(item_ids[start:start + chunk])
            flags = self.r.smismember(self.keys.known, part)
            out.update(i for i, f in zip(part, flags, strict=True) if f)
        return out

    def get_items(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Metadata for the ids that have any (missing ids are left out)."""
        if not item_ids:
            return {}
        raw = self.r.mget([self.keys.item(i) for i in item_ids])
        return {i: json.loads(v) for i, v in zip(item_ids, raw, strict=True) if v is not None}

    def mark_unavailable(self, item_ids: Iterable[str],
                         versions: Mapping[str, int] | None = None) -> None:
        ids = list(item_ids)
        if not ids:
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.sadd(self.keys.unavailable, *ids)
        if versions:
            pipe.hset(self.keys.versions, mapping=_redis_mapping(versions))
        pipe.execute()

    def unavailable(self) -> set[str]:
        """Every deleted item id (small: deletions are rare relative to the catalogue)."""
        return cast(set[str], self.r.smembers(self.keys.unavailable))  # decoded replies

    def unavailable_among(self, item_ids: Sequence[str]) -> set[str]:
        if not item_ids:
            return set()
        flags = self.r.smismember(self.keys.unavailable, list(item_ids))
        return {i for i, f in zip(item_ids, flags, strict=True) if f}

    def set_popular(
        self, scores: Mapping[str, float], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Replace the popular list atomically (readers never see a half-written list)."""
        tmp = self.keys.popular_tmp
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(tmp)
        if scores:
            pipe.zadd(tmp, dict(scores))
            pipe.rename(tmp, self.keys.popular)
        else:
            pipe.delete(self.keys.popular)
        if meta is not None:
            pipe.set(self.keys.popular_meta, json.dumps(dict(meta)))
        pipe.execute()

    def add_popularity(self, increments: Mapping[str, float],
                       anchors: Mapping[int, str], meta: Mapping[str, Any]) -> None:
        """Add decayed-count increments and advance per-partition anchors atomically.

        Increments add up across workers (``ZINCRBY``), so workers sharing the topic's
        partitions build one list; the anchors (same script, so atomic) let a restarted
        worker skip redelivered events instead of counting them twice. Items outside
        the catalogue count in ``popular:pending`` until their upsert.
        """
        args: list[Any] = [json.dumps(dict(meta)), len(anchors)]
        for p, anchor in anchors.items():
            args += [str(p), anchor]
        for item, inc in increments.items():
            args += [item, repr(float(inc))]
        self._add_popularity(
            keys=[self.keys.popular, self.keys.popular_pending, self.keys.known,
                  self.keys.popular_offsets, self.keys.popular_meta], args=args)

    def rescale_popularity(self, factor: float, meta: Mapping[str, Any]) -> None:
        """Multiply every score by ``factor`` (moving the decay reference time)."""
        pending = self.keys.popular_pending
        pipe = self.r.pipeline(transaction=True)
        pipe.zunionstore(self.keys.popular, {self.keys.popular: factor})
        pipe.zunionstore(pending, {pending: factor})
        pipe.set(self.keys.popular_meta, json.dumps(dict(meta)))
        pipe.execute()

    def popularity_anchors(self) -> dict[int, str]:
        """Stored anchor (see ``streams/epochs.py``) per partition of `interactions`."""
        return {int(p): str(a) for p, a in
                self.r.hgetall(self.keys.popular_offsets).items()}

    def popular(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most popular item ids with their decayed scores, best first."""
        top = cast(list[tuple[str, float]],  # decoded replies, scores with withscores
                   self.r.zrevrange(self.keys.popular, 0, max(k, 1) - 1, withscores=True))
        return [(i, float(s)) for i, s in top]

    def popular_meta(self) -> dict[str, Any]:
        raw = self.r.get(self.keys.popular_meta)
        return json.loads(raw) if raw else {}


#: One event of a user's recent history: ``(item_id, event type)``.
RecentEvent = tuple[str, str]

#: The event type given to the items of a document written before ``recent`` existed
#: (it kept item ids only, as ``history``).
LEGACY_EVENT_TYPE = "click"

#: Decoded event types mapped to one shared string each: a cached document's 50 recent
#: events then hold 50 references instead of 50 copies (~2.7 KB per user in the API's
#: user cache).
_SHARED_TYPES = {t: t for t in EVENT_TYPES}


class SimilarList(msgspec.Struct):
    """A stored ``cooc:{item}`` value: partner ids and their cosines, best first."""

    ids: list[str]
    scores: list[float]


_similar_enc = msgspec.json.Encoder()
_similar_dec = msgspec.json.Decoder(SimilarList | list[tuple[str, float]])


def decode_similar(raw: str | bytes | None) -> list[tuple[str, float]] | None:
    """A stored ``cooc:{item}`` value as ``(item id, cosine)`` pairs (``None``: none);
    the list-of-pairs form written before 2026-11-30 decodes too.

    >>> decode_similar('{"ids":["i2","i3"],"scores":[0.5,0.25]}')
    [('i2', 0.5), ('i3', 0.25)]
    >>> decode_similar('[["i2",0.5]]'), decode_similar(None)
    ([('i2', 0.5)], None)
    """
    if raw is None:
        return None
    value = _similar_dec.decode(raw)
    if isinstance(value, SimilarList):
        return list(zip(value.ids, value.scores, strict=True))
    return value  # already (str, float) pairs: the decoder's type says so


def as_clicks(items: Iterable[str]) -> list[RecentEvent]:
    """Recent events of type click on ``items`` (tests, benchmarks, drills).

    >>> as_clicks(["a", "b"])
    [('a', 'click'), ('b', 'click')]
    """
    return [(str(i), "click") for i in items]


def distinct_items(recent: Sequence[RecentEvent]) -> list[str]:
    """The items of ``recent`` once each, newest last (where each last occurred).

    >>> distinct_items([("a", "view"), ("b", "click"), ("a", "purchase")])
    ['b', 'a']
    """
    return list(reversed(dict.fromkeys(item for item, _ in reversed(recent))))


#: A user's query vector: a list as read from a store; in the worker, the model's float32
#: row as exported, turned into a list only when the document is written (a user touched
#: by ten batches between two MongoDB flushes is converted once, not ten times).
Vector = list[float] | npt.NDArray[np.float32]


def as_floats(vector: Vector) -> list[float]:
    """``vector`` as a list of floats (what MongoDB stores).

    >>> as_floats(np.array([0.5, -1.0], dtype=np.float32)), as_floats([2.0])
    ([0.5, -1.0], [2.0])
    """
    return vector.tolist() if isinstance(vector, np.ndarray) else vector


@dataclass
class UserDoc:
    """One user's serving state, as stored in MongoDB.

    ``recent`` is the user's one history: the last events (item, type), newest last,
    owned by the worker (:class:`streams.state.UserState` appends to it). Everything else
    that needs a user's past derives from it: the API's seen/recent filter
    (:attr:`history`) and the model's recent-history ring, which the worker reloads from
    it whenever the two disagree (:meth:`models.base.Recommender.sync_histories`).
    """

    user_id: str
    vector: Vector
    model_version: str
    recent: list[RecentEvent] = field(default_factory=list)
    n_events: int = 0
    last_event_ms: int = 0
    updated_at: dt.datetime | None = None
    #: ``{"p": partition, "o": offset}`` of the last applied event: the worker skips
    #: redelivered events at or below it, so replays after a crash count once.
    watermark: dict[str, int] | None = None
    #: ``[event id, content digest]`` of the user's most recent events, oldest first:
    #: skips duplicates sent twice by a producer, dead-letters conflicting ones.
    event_ids: list[Any] = field(default_factory=list)
    #: The query with the session part gone (session-aware models; empty otherwise):
    #: ``vector`` is the query right at the last event, and the one served at time
    #: ``t`` is their blend by the session gate (:mod:`common.session_query`).
    long_vector: Vector = field(default_factory=list)

    @property
    def history(self) -> list[str]:
        """The recently seen items the API filters out: :attr:`recent`'s items, each
        once, newest last."""
        return distinct_items(self.recent)

    def to_mongo(self) -> dict[str, Any]:
        return {
            "vector": as_floats(self.vector), "long_vector": as_floats(self.long_vector),
            "model_version": self.model_version,
            # two parallel arrays, not an array of pairs: ~13% more documents/s on the
            # local MongoDB server (nested arrays cost per element)
            "recent": {"items": [i for i, _ in self.recent],
                       "events": [e for _, e in self.recent]},
            "n_events": self.n_events,
            "last_event_ms": self.last_event_ms,
            "updated_at": self.updated_at or dt.datetime.now(dt.UTC),
            "watermark": self.watermark, "event_ids": self.event_ids,
        }

    @classmethod
    def from_mongo(cls, doc: Mapping[str, Any]) -> UserDoc:
        """The document as stored; one written before ``recent`` existed keeps its
        ``history`` items, as events of type :data:`LEGACY_EVENT_TYPE`.

        >>> UserDoc.from_mongo({"_id": "u", "history": ["a", "b"]}).recent
        [('a', 'click'), ('b', 'click')]
        >>> doc = UserDoc("u", [], "", recent=[("a", "view"), ("b", "purchase")])
        >>> UserDoc.from_mongo({"_id": "u", **doc.to_mongo()}).recent == doc.recent
        True
        """
        raw = doc.get("recent")
        if raw is None:
            recent = [(str(i), LEGACY_EVENT_TYPE) for i in doc.get("history") or []]
        else:
            types = _SHARED_TYPES
            recent = [(str(i), types.get(e, e)) for i, e in
                      zip(raw.get("items") or [], raw.get("events") or [], strict=True)]
        return cls(
            user_id=str(doc["_id"]), vector=list(doc.get("vector") or []),
            long_vector=list(doc.get("long_vector") or []),
            model_version=str(doc.get("model_version", "")),
            recent=recent, n_events=int(doc.get("n_events", 0)),
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


def _redis_mapping(values: Mapping[str, int]) -> dict[Any, Any]:
    """``values`` typed as redis-py's ``hset(mapping=...)`` wants it (its key type is a
    union, and ``Mapping`` keys are invariant)."""
    return dict(values)


def _bounded(timeout_s: float | None) -> contextlib.AbstractContextManager[object]:
    """``pymongo.timeout(timeout_s)``, or no change when ``timeout_s`` is None."""
    return contextlib.nullcontext() if timeout_s is None else pymongo.timeout(timeout_s)
