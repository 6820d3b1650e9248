"""In-process caches that keep MongoDB and Redis off the API's hot path.

At ≥ 1,000 requests/s on 2 shared cores the whole stack has well under 2 ms of CPU per
request, and SecantusDB answers only ~2,000 finds/s: a request must normally be served
from memory. Each API worker process (one event loop) holds:

:class:`UserCache` — user documents, kept fresh by a MongoDB **change stream** on
``users`` (the worker's ``ReplaceOne`` upserts arrive as ``insert``/``replace`` events with
the full document, a few ms after the write), read-through on a miss.

- While the stream is live, an entry is trusted for ``max_age_s`` (a safety net only:
  every write reaches the cache through the stream, measured ~10-40 ms after the write).
- While it is not live (starting, MongoDB down, cursor lost) entries fetched meanwhile
  are trusted for ``ttl_s`` only (the old TTL behaviour, bounded staleness), and when
  the stream fails every entry's trust is cut to ``ttl_s``. The stream resumes from its
  last resume token, so events written during a short outage are replayed, not lost.
- Misses of the same user are coalesced into one read; a change event that arrives
  while a read is in flight wins over the read's (possibly older) answer.
- Unknown users are cached too (an ``insert`` event replaces the negative entry).
- Memory: at most ``max_entries`` documents **and** ``max_bytes`` (estimated Python
  memory of the cached documents), oldest inserted evicted first. A 96-float session
  user (two vectors) with 50 recent events takes ~13 KB here; a count bound alone let
  a few huge documents (long ids, long histories) grow a worker without limit. Only the
  fields the API reads are kept (the change stream projects out the worker's
  bookkeeping, and a read-through document's event ids are dropped).

:class:`Catalog` — the popular list and the unavailable (deleted) item set, re-read from
Redis in one pipelined round trip at most every ``refresh_s`` (stale-while-revalidate:
one request per interval does the read, the others use the previous copy), and item
metadata cached per item for ``meta_ttl_s`` (misses of a request fetched with one MGET).
A deleted item therefore stops being recommended within ``refresh_s``; changed metadata
shows within ``meta_ttl_s``. The unavailable set is read whole (``SMEMBERS``): the
contract keeps it small (deletions are rare next to the catalogue). The co-occurrence
lists a hybrid query reads (:meth:`Catalog.similar_many`) are cached the same way for
``cooc_ttl_s``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar, cast

from common.stores import RedisKeys, UserDoc, decode_similar
from recommender_server.ports import AsyncRedis, Document, Metadata, UsersCollection

V = TypeVar("V")

log = logging.getLogger(__name__)

#: Fields the API needs from a user document (reads fetch only these; ``n_events`` is
#: the version compared with the hot state's; ``long_vector`` and ``last_event_ms`` blend
#: a session-aware query; ``history`` is the item list of documents written before
#: ``recent`` existed).
USER_FIELDS = {"vector": 1, "long_vector": 1, "last_event_ms": 1, "model_version": 1,
               "recent": 1, "history": 1, "n_events": 1}
#: The change stream leaves out what the API never reads of a written document: the
#: worker's exactly-once bookkeeping (32 recent event ids with digests, the watermark),
#: about a third of a session user's document, decoded by every API worker for every
#: write otherwise.
STREAM_PIPELINE = [{"$project": {"fullDocument.event_ids": 0, "fullDocument.watermark": 0}}]
#: How many popular items are kept in process (enough to fill k after exclusions).
POPULAR_DEPTH = 1000


def entry_bytes(user_id: str, doc: UserDoc | None) -> int:
    """Estimated memory of one cached entry (CPython objects, not the BSON size).

    >>> entry_bytes("u1", None) < entry_bytes("u1", UserDoc("u1", [0.0] * 64, "v"))
    True
    """
    size = 120 + len(user_id)  # key, tuple, trust time
    if doc is not None:
        size += 400 + len(doc.model_version)  # the dataclass and its small fields
        size += 112 + 32 * (len(doc.vector) + len(doc.long_vector))  # lists of floats
        # list of (item, type) tuples: an item str each, types shared (common.stores)
        size += 56 + sum(64 + 57 + len(i) for i, _ in doc.recent)
    return size


class UserCache:
    """User documents by id over an async ``users`` collection (see module docstring)."""

    def __init__(self, collection: UsersCollection, ttl_s: float = 0.5,
                 max_age_s: float = 60.0, max_entries: int = 200_000,
                 stream_collection: UsersCollection | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 max_bytes: int = 256 * 1024 * 1024) -> None:
        self.col = collection
        #: The change stream's handle (its client may have a longer socket timeout than
        #: the hot path's reads); defaults to ``collection``.
        self.stream_col = stream_collection if stream_collection is not None else collection
        self.ttl_s, self.max_age_s = ttl_s, max_age_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: dict[str, tuple[float, UserDoc | None]] = {}
        self._sizes: dict[str, int] = {}
        self.bytes = 0
        self._inflight: dict[str, asyncio.Future[UserDoc | None]] = {}
        self._overtaken: set[str] = set()
        self.live = False
        self.resume_token: Mapping[str, object] | None = None
        self.hits = self.misses = self.events = self.stream_restarts = 0
        #: Monotonic time of the last applied change event (for /ready).
        self.last_event_at: float | None = None

    def __len__(self) -> int:
        return len(self._entries)

    # --- reads ----------------------------------------------------------------------------
    async def get(self, user_id: str) -> UserDoc | None:
        entry = self._entries.get(user_id)
        if entry is not None and entry[0] > self.clock():
            self.hits += 1
            return entry[1]
        self.misses += 1
        pending = self._inflight.get(user_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[UserDoc | None] = asyncio.get_running_loop().create_future()
        self._inflight[user_id] = fut
        live_at_start = self.live
        try:
            raw = await self.col.find_one({"_id": user_id}, USER_FIELDS)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            self._inflight.pop(user_id, None)
        doc = UserDoc.from_mongo(raw) if raw else None
        if user_id in self._overtaken:  # a change event arrived meanwhile: it is newer
            self._overtaken.discard(user_id)
            entry = self._entries.get(user_id)
            doc = entry[1] if entry is not None else doc
        elif self.ttl_s > 0 or (live_at_start and self.live):
            trust = self.max_age_s if (live_at_start and self.live) else self.ttl_s
            self._put(user_id, doc, trust)
        fut.set_result(doc)
        return doc

    def cached(self, user_id: str) -> tuple[UserDoc | None] | None:
        """``(document or None if known unknown,)`` if the cache holds a trusted entry
        (counted as a hit), else ``None``; never reads MongoDB."""
        entry = self._entries.get(user_id)
        if entry is not None and entry[0] > self.clock():
            self.hits += 1
            return (entry[1],)
        return None

    def last_known(self, user_id: str) -> tuple[bool, UserDoc | None] | None:
        """``(True, document or None if known unknown)`` from the cache whatever its trust
        time, or ``None`` if the cache holds nothing for ``user_id`` (MongoDB outages)."""
        entry = self._entries.get(user_id)
        return None if entry is None else (True, entry[1])

    def _put(self, user_id: str, doc: UserDoc | None, trust_s: float) -> None:
        if doc is not None and doc.event_ids:  # not read by the API: do not hold it
            doc.event_ids = []
        size = entry_bytes(user_id, doc)
        self._drop(user_id)
        while self._entries and (len(self._entries) >= self.max_entries
                                 or self.bytes + size > self.max_bytes):
            self._drop(next(iter(self._entries)))
        self._entries[user_id] = (self.clock() + trust_s, doc)
        self._sizes[user_id] = size
        self.bytes += size

    def _drop(self, user_id: str) -> None:
        self._entries.pop(user_id, None)
        self.bytes -= self._sizes.pop(user_id, 0)

    # --- change stream ----------------------------------------------------------------------
    def apply_event(self, event: Document) -> None:
        """Apply one change event of ``users`` (insert / replace / update / delete)."""
        op = event.get("operationType")
        document_key = event.get("documentKey")
        key = document_key.get("_id") if isinstance(document_key, Mapping) else None
        if op in ("insert", "replace", "update") and key is not None:
            full = event.get("fullDocument")
            if not isinstance(full, Mapping):  # updated then deleted before the lookup:
                self._drop(str(key))  # re-read on demand
            else:
                self._put(str(key), UserDoc.from_mongo(full), self.max_age_s)
        elif op == "delete" and key is not None:
            self._put(str(key), None, self.max_age_s)
        elif op in ("drop", "dropDatabase", "rename", "invalidate"):
            self._entries.clear()
            self._sizes.clear()
            self.bytes = 0
            self.resume_token = None
        else:
            return
        if key is not None and str(key) in self._inflight:
            self._overtaken.add(str(key))
        self.events += 1
        self.last_event_at = self.clock()

    def _distrust(self) -> None:
        """The stream stopped: trust every entry ``ttl_s`` at most from now."""
        self.live = False
        until = self.clock() + self.ttl_s
        for key, (exp, doc) in list(self._entries.items()):
            if exp > until:
                self._entries[key] = (until, doc)

    async def follow(self, retry_s: float = 0.5, idle_s: float = 0.05,
                     on_live: Callable[[], Awaitable[None]] | None = None) -> None:
        """Follow the change stream until cancelled, reconnecting after errors.

        After an empty ``getMore`` wait ``idle_s`` before the next (SecantusDB answers an
        empty one after ~30 ms instead of ``maxAwaitTimeMS``): ≤ 20 polls/s per worker,
        at most ``idle_s`` added to the freshness delay.
        """
        while True:
            try:
                async with await self.stream_col.watch(
                        STREAM_PIPELINE, full_document="updateLookup",
                        resume_after=self.resume_token, max_await_time_ms=200) as stream:
                    self.live = True
                    log.info("user change stream live (resumed: %s)", self.resume_token is not None)
                    if on_live is not None:
                        await on_live()
                        on_live = None
                    while True:
                        event = await stream.try_next()
                        if event is not None:
                            self.apply_event(event)
                        self.resume_token = stream.resume_token
                        if not stream.alive:
                            break
                        if event is None:
                            await asyncio.sleep(idle_s)
            except asyncio.CancelledError:
                self.live = False
                raise
            except Exception as exc:  # any stream failure: degrade to TTL and retry
                log.warning("user change stream failed (%s); TTL mode until it resumes",
                            f"{type(exc).__name__}: {exc}"[:300])
                if "resume" in str(exc).lower() or "ChangeStreamHistoryLost" in str(exc):
                    self.resume_token = None
            self._distrust()
            self.stream_restarts += 1
            await asyncio.sleep(retry_s)

    async def preload(self, limit: int) -> int:
        """Warm the cache with up to ``limit`` documents (call once the stream is live:
        an event that lands first is newer and is kept)."""
        if limit <= 0:
            return 0
        n = 0
        async for raw in self.stream_col.find({}, USER_FIELDS, batch_size=500).limit(limit):
            key = str(raw["_id"])
            if key not in self._entries and self.live:
                self._put(key, UserDoc.from_mongo(raw), self.max_age_s)
                n += 1
        return n

    def stats(self) -> dict[str, int | bool]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._entries),
                "stream_live": self.live, "events": self.events,
                "stream_restarts": self.stream_restarts}


class Catalog:
    """Popular list, unavailable set and item metadata from Redis (see module docstring).

    ``redis`` is a ``redis.asyncio.Redis`` with ``decode_responses=True``. Redis errors
    propagate from :meth:`refresh` / :meth:`metadata`; the caller decides the fallback
    (the previous copy stays in use).
    """

    def __init__(self, redis: AsyncRedis, keys: RedisKeys = RedisKeys(),
                 refresh_s: float = 1.0,
                 meta_ttl_s: float = 30.0, meta_max: int = 500_000,
                 cooc_ttl_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.r, self.keys = redis, keys
        self.refresh_s, self.meta_ttl_s, self.meta_max = refresh_s, meta_ttl_s, meta_max
        self.cooc_ttl_s = cooc_ttl_s
        self.clock = clock
        self.popular: list[tuple[str, float]] = []
        self.unavailable: frozenset[str] = frozenset()
        self.loaded = False
        self._expires = 0.0
        self._refreshing: asyncio.Future[None] | None = None
        self._meta: dict[str, tuple[float, Metadata | None]] = {}
        self._cooc: dict[str, tuple[float, list[tuple[str, float]] | None]] = {}

    async def fresh(self) -> None:
        """Re-read popular + unavailable if older than ``refresh_s`` (one request waits)."""
        if self.clock() < self._expires:
            return
        if self._refreshing is not None:
            if not self.loaded:
                await asyncio.shield(self._refreshing)
            return
        self._refreshing = asyncio.get_running_loop().create_future()
        try:
            await self.refresh()
            self._refreshing.set_result(None)
        except BaseException as exc:
            self._refreshing.set_exception(exc)
            self._refreshing.exception()
            raise
        finally:
            self._refreshing = None

    async def refresh(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.zrevrange(self.keys.popular, 0, POPULAR_DEPTH - 1, withscores=True)
        pipe.smembers(self.keys.unavailable)
        popular, unavailable = await pipe.execute()
        # decoded replies: (member, score) pairs and a set of members
        self.popular = [(i, float(s)) for i, s in cast(list[tuple[str, str]], popular)]
        self.unavailable = frozenset(cast(set[str], unavailable))
        self.loaded = True
        self._expires = self.clock() + self.refresh_s

    async def similar(self, item_id: str) -> list[tuple[str, float]] | None:
        """The item's co-occurring items as the worker stored them (``RedisKeys.cooc``;
        ``None``: none stored). Not cached: one ``GET``, and always the latest."""
        return decode_similar(await self.r.get(self.keys.cooc(item_id)))

    async def similar_many(self, ids: Sequence[str]
                           ) -> dict[str, list[tuple[str, float]] | None]:
        """:meth:`similar` of several items, cached ``cooc_ttl_s`` per item (the lists
        of a hybrid query's recent items: popular items are in many users' histories,
        and the worker rewrites a list at most every export interval anyway)."""
        return await self._cached_mget(ids, self._cooc, self.keys.cooc, decode_similar,
                                       self.cooc_ttl_s)

    async def metadata(self, ids: Sequence[str]) -> dict[str, Metadata | None]:
        """Metadata of ``ids`` (missing ones map to ``None``); one MGET for the misses."""
        return await self._cached_mget(ids, self._meta, self.keys.item, _decode_meta,
                                       self.meta_ttl_s)

    async def _cached_mget(self, ids: Sequence[str], cache: dict[str, tuple[float, V]],
                           key: Callable[[str], str],
                           decode: Callable[[str | bytes | None], V],
                           ttl_s: float) -> dict[str, V]:
        """Values of ``ids`` from ``cache`` while fresh, else one MGET of ``key(id)`` for
        the misses (decoded, kept ``ttl_s``); the cache is emptied past ``meta_max``."""
        now = self.clock()
        out: dict[str, V] = {}
        missing: list[str] = []
        for i in ids:
            entry = cache.get(i)
            if entry is not None and entry[0] > now:
                out[i] = entry[1]
            else:
                missing.append(i)
        if missing:
            raw = await self.r.mget([key(i) for i in missing])
            if len(cache) + len(missing) > self.meta_max:
                cache.clear()
            until = self.clock() + ttl_s
            for i, v in zip(missing, raw, strict=True):
                value = decode(v)
                cache[i] = (until, value)
                out[i] = value
        return out

    def stats(self) -> dict[str, int | bool]:
        return {"loaded": self.loaded, "popular": len(self.popular),
                "unavailable": len(self.unavailable), "metadata_cached": len(self._meta),
                "cooc_cached": len(self._cooc)}


def _decode_meta(raw: str | bytes | None) -> Metadata | None:
    return json.loads(raw) if raw is not None else None
