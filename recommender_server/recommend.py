"""What the API answers, independent of HTTP: personalised, similar and popular items.

Everything is a coroutine: one worker's event loop overlaps many requests. In steady
state a recommendation costs one Redis ``GET`` (the user's hot state, written by the
worker for every applied batch before its MongoDB write: :mod:`common.hot_users`), no
MongoDB round trip (user documents, popular list, unavailable set and item metadata come
from the in-process caches of :mod:`recommender_server.caches`) and one FAISS round trip.
The user's state is the newer of the hot record and the MongoDB document (higher
``n_events``); without a hot record (expired, never written, Redis down) the document
answers as before.

A request never fails because a dependency is missing or down. Each lookup that can fail
is guarded by a :class:`~recommender_server.deps.Breaker`; the answer then comes from the
popular list and says so (``source: "popular"``, ``fallback_reason``). Reasons:

- ``unknown_user`` — no document in MongoDB ``users``
- ``no_vector`` — the document has no vector yet
- ``mongo_unavailable`` — MongoDB errored or timed out (or its breaker is open)
- ``faiss_unavailable`` — FAISS service refused, timed out, 5xx (or breaker open)
- ``index_not_ready`` — FAISS service has no index version loaded
- ``bad_query`` — FAISS rejected the user vector (e.g. dimension differs from the index)
- ``no_candidates`` — every candidate was seen or unavailable
- ``unknown_item`` — (similar items) the FAISS index does not hold the item, or (with
  ``source=cooc``) no co-occurring items are stored for it: not an error (a new item may
  not be indexed or clicked yet), so the answer is popular items, 200
- ``redis_unavailable`` — (similar items, ``source=cooc``) Redis errored (or its breaker
  is open)

Redis errors degrade the answer (``degraded`` lists them) instead of failing it: the last
popular list / unavailable set read stays in use, metadata is left out.

statsd names (prefix ``{statsd_prefix}.api``), counters aggregated in process and sent
at most every ``metrics_flush_s``: ``fallback.<reason>``,
``dependency_errors.<mongo|redis|faiss>``, ``source.<personalized|popular>``,
``user_state.<hot|stored|undecodable>``, ``user_cache.hit|miss``, ``query.<sparse|dense>``
(a hybrid model's query with or without a co-occurrence part), plus the per-request
``requests.<resource>.<method>.<status>`` / ``latency.<resource>.<method>`` from
:mod:`common.http_metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

import msgspec
import pymongo.errors
import redis

from common.errors import IndexNotReady, ServiceUnavailable, UnknownItem
from common.hot_users import newest
from common.session_query import StreamClock, served_query, served_sparse, sparse_sources
from common.stores import UserDoc
from faiss_server.protocol import FaissRequestError, Hit
from ranking.features import proposals
from recommender_server.attribute_index import AttributeIndex
from recommender_server.batching import SearchBatcher
from recommender_server.caches import Catalog
from recommender_server.config import ApiConfig
from recommender_server.deps import Breaker, Dependencies
from recommender_server.filters import AttributeFilter, PassRates, overfetch
from recommender_server.ports import Body, Metadata, Searcher
from recommender_server.ranking import Ranked, RankerHolder, rank

log = logging.getLogger(__name__)

V = TypeVar("V")

#: Where similar items come from: nearest item vectors in the FAISS index, or the
#: co-occurrence the worker counts from the stream (``RedisKeys.cooc``).
SIMILAR_SOURCES = ("embedding", "cooc")

MONGO_ERRORS = (pymongo.errors.PyMongoError,)
REDIS_ERRORS = (redis.RedisError, OSError, TimeoutError)


class RecommendationService:
    """The API's logic over :class:`Dependencies`; runs on one event loop.

    (Not a model: the model contract is :class:`models.base.Recommender`.)
    """

    def __init__(self, config: ApiConfig, deps: Dependencies) -> None:
        self.config = config
        self.deps = deps
        # MongoDB and FAISS are probed in the background while their breaker is open (a
        # ping, a health call): no request waits on a dependency known to be down.
        probes: dict[str, Callable[[], Awaitable[object]]] = {
            "mongo": deps.ping_mongo, "faiss": deps.faiss.health}
        self.breakers = {name: Breaker(config.breaker_cooldown_s, probe=probes.get(name))
                         for name in ("mongo", "redis", "faiss")}
        self.searcher: Searcher = deps.faiss
        if config.faiss_batch_inflight > 0:
            faiss_breaker = self.breakers["faiss"]
            self.searcher = SearchBatcher(deps.faiss, config.faiss_batch_max,
                                          config.faiss_batch_inflight,
                                          max_history=config.faiss_batch_max_history,
                                          down=lambda: faiss_breaker.is_open)
        self._counts: Counter[str] = Counter()
        self._pass_rates = PassRates(config.filter_overfetch)
        cat = deps.catalog
        self.attributes = AttributeIndex(cat.r, cat.keys,
                                         refresh_s=config.attribute_index_refresh_s,
                                         max_items=config.attribute_index_max_items)
        if config.attribute_index_preload and config.filter_pushdown_max_ids > 0:
            deps.background.append(self.attributes.warm)  # started with the app
        self.rankers = RankerHolder(cat.r, cat.keys, config.ranker_refresh_s)
        if config.ranking:
            deps.background.append(self.rankers.follow)
        self._timings: list[tuple[str, float]] = []
        self._flush_at = 0.0
        self._hits_sent = self._misses_sent = 0

    # --- metrics ----------------------------------------------------------------------
    def _incr(self, name: str, n: int = 1) -> None:
        self._counts[name] += n

    def flush_metrics(self, force: bool = False) -> None:
        """Send the aggregated counters (one UDP packet) if ``metrics_flush_s`` passed."""
        now = time.monotonic()
        if self.deps.statsd is None or (not force and now < self._flush_at):
            return
        self._flush_at = now + self.config.metrics_flush_s
        users = self.deps.users
        hits, misses = getattr(users, "hits", 0), getattr(users, "misses", 0)
        self._counts["user_cache.hit"] += hits - self._hits_sent
        self._counts["user_cache.miss"] += misses - self._misses_sent
        self._hits_sent, self._misses_sent = hits, misses
        pipe = self.deps.statsd.pipeline()
        for name, n in self._counts.items():
            if n:
                pipe.incr(name, n)
        rate = self.config.metrics_timing_rate
        for name, ms in self._timings:
            pipe.timing(name, ms, rate=rate)
        pipe.send()
        self._counts.clear()
        self._timings.clear()

    def _dep_error(self, dep: str, exc: BaseException) -> None:
        self.breakers[dep].failed()
        self._incr(f"dependency_errors.{dep}")
        log.warning("%s error: %s", dep, f"{type(exc).__name__}: {exc}"[:300])

    # --- guarded catalog reads ----------------------------------------------------------
    async def _catalog(self, degraded: list[str]) -> Catalog:
        """The catalog, refreshed if due; on a Redis error its last copy (``degraded``)."""
        cat = self.deps.catalog
        if not self.breakers["redis"].allow():
            degraded.append("redis")
            return cat
        try:
            await cat.fresh()
        except REDIS_ERRORS as exc:
            self._dep_error("redis", exc)
            degraded.append("redis")
        return cat

    async def _cached_lists(self, read: Callable[[list[str]], Awaitable[dict[str, V]]],
                            ids: list[str], degraded: list[str]) -> dict[str, V]:
        """``read(ids)`` (a :class:`Catalog` lookup) guarded by the Redis breaker: ``{}``
        for no ids, while the breaker is open, or on a Redis error (``degraded``)."""
        if not ids or not self.breakers["redis"].allow():
            return {}
        try:
            return await read(ids)
        except REDIS_ERRORS as exc:
            self._dep_error("redis", exc)
            degraded.append("redis")
            return {}

    async def _metadata(self, ids: list[str],
                        degraded: list[str]) -> dict[str, Metadata | None]:
        return await self._cached_lists(self.deps.catalog.metadata, ids, degraded)

    async def _popular_fill(self, cat: Catalog, n: int, skip: set[str],
                            flt: AttributeFilter, degraded: list[str]) -> list[Hit]:
        """The ``n`` most popular available items not in ``skip`` that pass ``flt``."""
        if n <= 0:
            return []
        gone = cat.unavailable
        pool = [(i, s) for i, s in cat.popular if i not in skip and i not in gone]
        if not flt:
            return pool[:n]
        out: list[tuple[str, float]] = []
        step = max(n, self.config.candidate_slack) * self.config.filter_overfetch
        for start in range(0, len(pool), step):  # metadata read in growing prefixes
            out.extend(await self._passing(pool[start:start + step], flt, degraded))
            if len(out) >= n:
                break
        return out[:n]

    async def _passing(self, hits: list[tuple[str, float]], flt: AttributeFilter,
                       degraded: list[str]) -> list[tuple[str, float]]:
        """The ``hits`` whose metadata passes ``flt`` (all of them without a filter); an
        item whose metadata cannot be read does not pass (``filter.dropped`` counts the
        rest)."""
        if not flt or not hits:
            return hits
        meta = await self._metadata([i for i, _ in hits], degraded)
        kept = [(i, s) for i, s in hits if flt.matches(meta.get(i))]
        self._incr("filter.dropped", len(hits) - len(kept))
        if meta:  # a failed read says nothing of the filter
            self._pass_rates.observe(flt, len(kept), len(hits))
        return kept

    def _wanted(self, k: int, flt: AttributeFilter) -> int:
        """Candidates to ask a source for: ``k`` + slack, over-fetched under a filter
        by what its observed pass rate needs (at most ``filter_overfetch`` times)."""
        c = self.config
        return overfetch(k, c.candidate_slack, self._pass_rates.factor(flt) if flt else 1,
                         c.filter_max_candidates)

    def _filtered(self, body: Body, k: int, flt: AttributeFilter) -> Body:
        """``body`` with the filter echoed and ``partial`` (fewer than ``k`` items passed)
        when a filter was asked; unchanged otherwise."""
        if not flt:
            return body
        items = body["items"]
        assert isinstance(items, list)
        partial = len(items) < k
        self._incr("filter.requests")
        if partial:
            self._incr("filter.partial")
        return {**body, "filters": flt.describe(), "partial": partial}

    async def _render(self, picked: Iterable[tuple[str, float, str]],
                      degraded: list[str]) -> list[Body]:
        picked = list(picked)
        meta = await self._metadata([i for i, _, _ in picked], degraded)
        return [{"id": i, "score": round(s, 6), "source": src, "metadata": meta.get(i)}
                for i, s, src in picked]

    # --- endpoints ----------------------------------------------------------------------
    async def recommend(self, user_id: str, k: int,
                        flt: AttributeFilter = AttributeFilter(),
                        explain: bool = False, order: str = "ranked") -> Body:
        """The user's top ``k`` (retrieval, then the seen/unavailable and request
        filters, then the ranking stage), filled with popular items that pass the same
        filters. ``explain``: each ranked item carries its features and ranker score."""
        degraded: list[str] = []
        model_version = index_version = None
        candidates: list[tuple[str, float]] = []
        boost: dict[str, float] | None = None
        ranked: Ranked | None = None
        doc, reason = await self._user(user_id, degraded)
        if doc is not None:
            model_version = doc.model_version or None
            if len(doc.vector) == 0:
                reason = "no_vector"
        seen = set(doc.history) if doc is not None else set()
        if reason is None:
            assert doc is not None
            # Both parts of the query as of one moment of the stream's clock. A session
            # model's document carries the query at the user's last event and the one with
            # the session gone; the dense query served is their blend by the session gate
            # (common.session_query), so a session fades while the user is away though
            # nothing is written; without a clock yet, the last query.
            clock = self.deps.hot.clock if self.deps.hot is not None else None
            now_ms = int(time.time() * 1000)
            boost = await self._boost(doc, clock, now_ms, degraded)
            only = await self._pushdown(flt)
            n = self.config.candidate_slack + k if only is not None else self._wanted(k, flt)
            if self.config.ranking:
                n = max(n, self.config.settings.rank_ann)
            # The catalog refresh (rare) overlaps the FAISS call.
            (reason, index_version, candidates), cat = await asyncio.gather(
                self._search(served_query(doc, clock, now_ms), doc.history, n, boost,
                             only),
                self._catalog(degraded))
        else:
            cat = await self._catalog(degraded)
        gone = cat.unavailable
        if reason is None and self.config.ranking:
            assert doc is not None
            ranked = await self._rank(doc, candidates, boost, cat, seen | gone, degraded,
                                      order, explain)
            passing = None if not flt else {
                i for i, _ in await self._passing(
                    [(i, 0.0) for i in ranked.cands.ids], flt, degraded)}
            top = ranked.top(k, passing)
            personal = [(ranked.cands.ids[j], float(ranked.scores[j])) for j in top]
        else:
            personal = [(i, s) for i, s in candidates if i not in gone and i not in seen]
            personal = (await self._passing(personal, flt, degraded))[:k]
        if reason is None and not personal:
            reason = "no_candidates"
        skip = seen | {i for i, _ in personal}
        fill = await self._popular_fill(cat, k - len(personal), skip, flt, degraded)
        source = "personalized" if personal else "popular"
        self._incr(f"source.{source}")
        if reason is not None:
            self._incr(f"fallback.{reason}")
        picked = [(i, s, "personalized") for i, s in personal] + \
                 [(i, s, "popular") for i, s in fill]
        items = await self._render(picked, degraded)
        if ranked is not None:
            self._describe(items, ranked, explain)
        body = self._filtered({
            "user_id": user_id, "k": k, "source": source, "fallback_reason": reason,
            "model_version": model_version, "index_version": index_version,
            "ranker_version": (ranked.ranker.version if ranked is not None
                               and ranked.ranker is not None else None),
            "items": items,
            **({"degraded": sorted(set(degraded))} if degraded else {}),
        }, k, flt)
        self.flush_metrics()
        return body

    async def _rank(self, doc: UserDoc, ann: list[tuple[str, float]],
                    boost: dict[str, float] | None, cat: Catalog, skip: set[str],
                    degraded: list[str], order: str = "ranked",
                    explain: bool = False) -> Ranked:
        """The ranking stage over every source's candidates (``skip``: seen and
        unavailable items), with the features read from the caches; a request filter
        is applied by the caller on the ranked list."""
        c = self.config
        props = proposals(ann, boost, cat.popular, c.settings.rank_cooc,
                          c.settings.rank_popular, skip)
        ranker = self.rankers.current if order == "ranked" else None
        meta: dict[str, Metadata | None] = {}
        neighbours: dict[str, list[tuple[str, float]] | None] = {}
        if ranker is not None or explain:  # what the features read
            recent = [item for item, _ in doc.recent]
            ids = list(dict.fromkeys([i for p in props.values() for i, _ in p] + recent))
            meta, neighbours = await asyncio.gather(self._metadata(ids, degraded),
                                                    self._neighbours(recent, degraded))
        ranked = rank(ranker, doc.recent, doc.n_events, props, neighbours, meta,
                      cat.popular, order, explain)
        for source, p in props.items():
            self._incr(f"rank.candidates.{source}", len(p))
        self._incr("rank.requests")
        if ranked.ranker is not None:
            self._incr("rank.learned")
        else:
            self._incr("rank.retrieval_order")
        if random.random() < c.metrics_timing_rate:
            self._timings.append(("rank.latency", ranked.seconds * 1000))
        return ranked

    async def _neighbours(self, recent: list[str], degraded: list[str]
                          ) -> dict[str, list[tuple[str, float]] | None]:
        """The stored co-occurrence lists of the user's recent items (none while Redis
        fails: the co-occurrence features are then unknown)."""
        return await self._cached_lists(self.deps.catalog.similar_many,
                                        list(dict.fromkeys(recent)), degraded)

    @staticmethod
    def _describe(items: list[Body], ranked: Ranked, explain: bool) -> None:
        """Add each ranked item's sources (and with ``explain`` its features)."""
        pos = {item: j for j, item in enumerate(ranked.cands.ids)}
        for item in items:
            j = pos.get(str(item["id"]))
            if j is None or item["source"] != "personalized":
                item["sources"] = [item["source"]]
                continue
            item["sources"] = ranked.cands.sources_of(j)
            if explain:
                item.update(ranked.explain(j))

    async def _boost(self, doc: UserDoc, clock: StreamClock | None, now_ms: int,
                     degraded: list[str]) -> dict[str, float] | None:
        """The sparse part of the user's query (a hybrid model: co-occurrence of their
        recent items, :func:`common.session_query.served_sparse`), or ``None`` when the
        model has none. Its lists come from Redis (cached ``cooc_cache_ttl_s``); while
        Redis fails the dense part answers alone (``degraded``)."""
        if clock is None or clock.sparse is None or not doc.recent:
            return None
        if not self.breakers["redis"].allow():
            degraded.append("redis")
            return None
        ids = sparse_sources(doc.recent, clock.sparse)
        if self.config.ranking and self.rankers.current is not None:
            # the ranker's features read every recent item's list: one MGET for both
            # (``_neighbours`` then finds them cached)
            ids = list(dict.fromkeys([*ids, *(item for item, _ in doc.recent)]))
        try:
            lists = await self.deps.catalog.similar_many(ids)
        except REDIS_ERRORS as exc:
            self._dep_error("redis", exc)
            degraded.append("redis")
            return None
        boost = served_sparse(doc, clock, lists, now_ms)
        part = "sparse" if boost else "dense"
        self._incr(f"query.{part}")
        return boost or None

    async def _user(self, user_id: str,
                    degraded: list[str]) -> tuple[UserDoc | None, str | None]:
        """``(user state or None, fallback reason or None)``: the newer of the hot state
        and the MongoDB document (see the module docstring)."""
        hot = await self._hot(user_id, degraded)
        doc, reason = await self._stored(user_id, degraded, read=hot is None)
        best = newest(hot, doc)
        if best is not None and best is hot:
            self._incr("user_state.hot")
            return hot, None
        if doc is not None:
            self._incr("user_state.stored")
        return doc, reason

    async def _hot(self, user_id: str, degraded: list[str]) -> UserDoc | None:
        """The user's hot record, or None (none, or Redis failing: ``degraded``)."""
        hot = self.deps.hot
        if hot is None:
            return None
        if not self.breakers["redis"].allow():
            degraded.append("redis")
            return None
        try:
            return await hot.get(user_id)
        except REDIS_ERRORS as exc:
            self._dep_error("redis", exc)
            degraded.append("redis")
            return None
        except msgspec.DecodeError as exc:  # not a record of this version: MongoDB answers
            self._incr("user_state.undecodable")
            log.warning("hot record of user %r does not decode: %s", user_id, exc)
            return None

    async def _stored(self, user_id: str, degraded: list[str],
                      read: bool = True) -> tuple[UserDoc | None, str | None]:
        """``(user document or None, fallback reason or None)``.

        With ``read`` False (a hot record was found) only a copy the cache holds is
        used: the worker writes the hot record before the document, so a document that
        only MongoDB holds is not newer, and reading it would only cost a round trip.

        While MongoDB fails (or its breaker is open) the last copy the cache holds, even
        one past its trust time, answers (``degraded: ["mongo"]``): a user seen a few
        seconds ago is better served from that copy than with popular items.
        """
        users = self.deps.users
        cached = users.cached(user_id) if hasattr(users, "cached") else None
        if cached is not None:  # trusted copy: MongoDB's health does not matter
            return cached[0], None if cached[0] is not None else "unknown_user"
        if not read:
            return None, None
        if self.breakers["mongo"].allow():
            try:
                doc = await users.get(user_id)
                self.breakers["mongo"].succeeded()
                return doc, None if doc is not None else "unknown_user"
            except MONGO_ERRORS as exc:
                self._dep_error("mongo", exc)
        last = users.last_known(user_id) if hasattr(users, "last_known") else None
        if last is None:
            return None, "mongo_unavailable"
        degraded.append("mongo")
        _, doc = last
        return doc, None if doc is not None else "unknown_user"

    async def _pushdown(self, flt: AttributeFilter) -> list[str] | None:
        """The ids ``flt`` lets through when they are few enough to search among exactly
        (``filter_pushdown_max_ids``); ``None``: over-fetch instead."""
        if not flt or self.config.filter_pushdown_max_ids <= 0:
            return None
        ids = await self.attributes.allowed(flt)
        if ids is None or len(ids) > self.config.filter_pushdown_max_ids:
            return None
        self._incr("filter.pushdown")
        return ids

    async def _search(self, vector: list[float], history: list[str], n: int,
                      boost: dict[str, float] | None = None, only: list[str] | None = None
                      ) -> tuple[str | None, str | None, list[tuple[str, float]]]:
        """``(fallback reason or None, index version, n candidates)``; ``boost``: the
        query's sparse part (see :meth:`_boost`); ``only``: search within these ids
        (a filter pushed down; ``[]``: nothing passes, FAISS is not asked)."""
        if only is not None and not only:
            return None, None, []
        if not self.breakers["faiss"].allow():
            return "faiss_unavailable", None, []
        exclude = history[-self.config.max_history_exclude:]
        try:
            res = await self.searcher.search(vector, n, exclude, boost, only or ())
        except IndexNotReady:
            self.breakers["faiss"].succeeded()
            return "index_not_ready", None, []
        except ServiceUnavailable as exc:
            self._dep_error("faiss", exc)
            return "faiss_unavailable", None, []
        except FaissRequestError as exc:
            self.breakers["faiss"].succeeded()
            log.warning("FAISS rejected a user vector: %s", exc)
            return "bad_query", None, []
        self.breakers["faiss"].succeeded()
        return None, res.version, res.results[0]

    async def similar(self, item_id: str, k: int, source: str = "embedding",
                      flt: AttributeFilter = AttributeFilter()) -> Body:
        """Items like ``item_id``, by item vectors (``embedding``: the FAISS index) or by
        co-occurrence (``cooc``), that pass the request filters; popular items
        (``unknown_item``) if the source knows nothing of the item."""
        degraded: list[str] = []
        if source == "cooc":
            reason, index_version, hits = await self._cooc_hits(item_id, degraded)
        else:
            reason, index_version, hits = await self._embedding_hits(
                item_id, self._wanted(k, flt))
        cat = await self._catalog(degraded)
        similar = [(i, s) for i, s in hits if i not in cat.unavailable]
        similar = (await self._passing(similar, flt, degraded))[:k]
        if reason is None and not similar:
            reason = "no_candidates"
        fill = [] if similar else await self._popular_fill(cat, k, {item_id}, flt, degraded)
        if reason is not None:
            self._incr(f"fallback.{reason}")
        self._incr(f"similar.{source}")
        picked = [(i, s, "similar") for i, s in similar] + [(i, s, "popular") for i, s in fill]
        items = await self._render(picked, degraded)
        body = self._filtered(
            {"item_id": item_id, "k": k, "source": "similar" if similar else "popular",
             "similar_source": source, "fallback_reason": reason,
             "index_version": index_version, "items": items,
             **({"degraded": sorted(set(degraded))} if degraded else {})}, k, flt)
        self.flush_metrics()
        return body

    async def _cooc_hits(self, item_id: str, degraded: list[str]
                         ) -> tuple[str | None, str | None, list[tuple[str, float]]]:
        """``(fallback reason, None, hits)`` from the stored co-occurrence lists."""
        if not self.breakers["redis"].allow():
            degraded.append("redis")
            return "redis_unavailable", None, []
        try:
            hits = await self.deps.catalog.similar(item_id)
        except REDIS_ERRORS as exc:
            self._dep_error("redis", exc)
            degraded.append("redis")
            return "redis_unavailable", None, []
        self.breakers["redis"].succeeded()
        return ("unknown_item" if hits is None else None), None, hits or []

    async def _embedding_hits(self, item_id: str, n: int
                              ) -> tuple[str | None, str | None, list[tuple[str, float]]]:
        """``(fallback reason, index version, n hits)`` from the FAISS index."""
        reason: str | None = None
        index_version = None
        hits: list[tuple[str, float]] = []
        if not self.breakers["faiss"].allow():
            reason = "faiss_unavailable"
        else:
            try:
                res = await self.deps.faiss.similar(item_id, n)
                self.breakers["faiss"].succeeded()
                index_version, hits = res.version, res.hits
            except UnknownItem:
                self.breakers["faiss"].succeeded()  # FAISS answered: it is up
                reason = "unknown_item"
            except IndexNotReady:
                reason = "index_not_ready"
            except ServiceUnavailable as exc:
                self._dep_error("faiss", exc)
                reason = "faiss_unavailable"
        return reason, index_version, hits

    async def popular(self, k: int, flt: AttributeFilter = AttributeFilter()) -> Body:
        """The popular items that pass the request filters (the last copy read if Redis
        fails now, marked ``degraded``); ``ServiceUnavailable`` (503) if Redis has never
        answered."""
        degraded: list[str] = []
        cat = await self._catalog(degraded)
        if not cat.loaded:
            raise ServiceUnavailable("Redis (popular items) is not answering")
        fill = await self._popular_fill(cat, k, set(), flt, degraded)
        body = self._filtered(
            {"k": k, "source": "popular",
             "items": await self._render([(i, s, "popular") for i, s in fill], degraded),
             **({"degraded": sorted(set(degraded))} if degraded else {})}, k, flt)
        self.flush_metrics()
        return body

    async def readiness(self) -> tuple[bool, dict[str, Mapping[str, object]]]:
        """Ask every dependency once (ignoring breakers); ``(all ok, details)``."""
        async def probe(name: str, fn: Callable[[], Awaitable[object]]
                        ) -> tuple[str, Mapping[str, object]]:
            try:
                out = await asyncio.wait_for(fn(), timeout=2.0)
            except Exception as exc:  # any failure is reported as not ready (503)
                return name, {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
            check: dict[str, object] = {"ok": True}
            if name == "faiss" and isinstance(out, Mapping):
                check.update(version=out.get("version"), size=out.get("size"))
            return name, check

        checks: dict[str, Mapping[str, object]] = dict(await asyncio.gather(
            probe("mongo", self.deps.ping_mongo), probe("redis", self.deps.ping_redis),
            probe("faiss", self.deps.faiss.health)))
        for name, part in (("user_cache", self.deps.users), ("catalog", self.deps.catalog),
                           ("faiss_batches", self.searcher),
                           ("attribute_index", self.attributes), ("ranker", self.rankers)):
            if hasattr(part, "stats"):
                checks[name] = part.stats()
        return all(c.get("ok", True) for c in checks.values()), checks
