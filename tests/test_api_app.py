"""Recommender API over HTTP through ``falcon.testing`` (ASGI), dependencies passed in as
fakes; plus the caches and the search batcher on their own."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
import numpy as np
import pymongo.errors
import pytest
import redis
from falcon import testing

from common import hot_users
from common.errors import IndexNotReady, ServiceUnavailable, UnknownItem
from common.session_query import SparseQuery, StreamClock
from common.settings import Settings
from common.stores import RedisKeys, UserDoc, as_clicks
from faiss_server.protocol import FaissRequestError, SearchResult, SimilarResult
from recommender_server.app import create_app
from recommender_server.batching import SearchBatcher
from recommender_server.caches import Catalog, UserCache
from recommender_server.config import ApiConfig
from recommender_server.deps import Breaker, Dependencies
from recommender_server.hot_users import HotUserReader

POPULAR = [(f"p{i}", 100.0 - i) for i in range(30)]


class FakeUsers:
    def __init__(self) -> None:
        self.docs = {"u1": UserDoc("u1", [1.0, 0.0], "m7", recent=as_clicks(["a", "seen"]))}
        self.fail: Exception | None = None
        self.calls = 0

    async def get(self, user_id: str) -> UserDoc | None:
        self.calls += 1
        if self.fail:
            raise self.fail
        return self.docs.get(user_id)


class FakeRedis:
    """The few ``redis.asyncio`` calls :class:`Catalog` makes."""

    def __init__(self) -> None:
        self.unavail = {"gone", "p1"}
        self.fail = False
        self.mgets = 0
        self.hot: dict[str, str] = {}  # hot user records by key

    def _check(self) -> None:
        if self.fail:
            raise redis.ConnectionError("down")

    def pipeline(self, transaction: bool = False) -> Any:
        outer = self

        class Pipe:
            def zrevrange(self, *a: Any, **kw: Any) -> None:
                pass

            def smembers(self, *a: Any) -> None:
                pass

            async def execute(self) -> list[Any]:
                outer._check()
                return [[(i, str(s)) for i, s in POPULAR], set(outer.unavail)]

        return Pipe()

    async def get(self, key: str) -> str | None:
        self._check()
        return self.hot.get(key)

    async def mget(self, keys: list[str]) -> list[str | None]:
        self._check()
        if keys and keys[0].startswith((RedisKeys("t:").user_state(""),  # hot record, clock
                                        RedisKeys("t:").cooc(""))):  # co-occurrence lists
            return [self.hot.get(k) for k in keys]
        self.mgets += 1
        ids = [k.rsplit(":", 1)[1] for k in keys]
        return [None if i.startswith("nometa") else f'{{"title": "{i.upper()}"}}' for i in ids]


class FakeFaiss:
    def __init__(self) -> None:
        self.fail: Exception | None = None
        self.searches: list[tuple[int, int, list[str]]] = []
        self.vectors: list[list[float]] = []
        self.boosts: list[dict[str, float]] = []  # the sparse part sent with each query
        self.only: list[list[str]] = []  # the ids each search was limited to ([]: none)

    def _hits(self, k: int) -> list[tuple[str, float]]:
        hits = [(f"c{i}", 1.0 - i / 100) for i in range(k)]
        hits[1] = ("gone", 0.98)
        if k > 3:
            hits[3] = ("seen", 0.96)
        return hits

    async def search(self, vector: Any, k: int, exclude: Any = (),
                     boost: Any = None, only: Any = ()) -> SearchResult:
        return await self.search_many([vector], k, exclude, [boost] if boost else (), only)

    async def search_many(self, vectors: Any, k: int, exclude: Any = (),
                          boosts: Any = (), only: Any = ()) -> SearchResult:
        await asyncio.sleep(0)
        if self.fail:
            raise self.fail
        self.searches.append((len(vectors), k, list(exclude)))
        self.only.append(list(only))
        self.vectors.extend([list(map(float, v)) for v in vectors])
        self.boosts.extend([dict(b) for b in boosts] if boosts else [{} for _ in vectors])
        if only:  # the same ranking, among those ids alone
            allowed = set(only) - set(exclude)
            hits = [h for h in self._hits(1000) if h[0] in allowed][:k]
            return SearchResult("idx-3", [hits for _ in vectors])
        return SearchResult("idx-3", [self._hits(k) for _ in vectors])

    async def similar(self, item_id: str, k: int, exclude: Any = ()) -> SimilarResult:
        if self.fail:
            raise self.fail
        if item_id == "unknown":
            raise UnknownItem(item_id)
        return SimilarResult("idx-3", [(f"s{i}", 0.5) for i in range(k)])

    async def health(self) -> dict[str, Any]:
        if self.fail:
            raise self.fail
        return {"version": "idx-3", "size": 9}


@pytest.fixture
def fakes() -> tuple[FakeUsers, FakeRedis, FakeFaiss]:
    return FakeUsers(), FakeRedis(), FakeFaiss()


def make_client(fakes: Any, hot: bool = False, **over: Any) -> testing.TestClient:
    """The API over ``fakes``; retrieval order unless ``ranking=True`` is passed (the
    ranking stage has its own tests: ``tests/test_ranking.py``)."""
    over = {"ranking": False, **over}
    users, r, faiss = fakes
    deps = Dependencies(users=users, catalog=Catalog(r, RedisKeys("t:"), refresh_s=0.0),
                        faiss=faiss, hot=HotUserReader(r, RedisKeys("t:")) if hot else None)
    config = ApiConfig.from_env(Settings.from_env(), **{"breaker_cooldown_s": 0.0, **over})
    return testing.TestClient(create_app(config, deps))


@pytest.fixture(params=["batched", "unbatched"])
def client(fakes, request) -> testing.TestClient:
    return make_client(fakes, faiss_batch_inflight=2 if request.param == "batched" else 0)


def rec(client: testing.TestClient, user: str = "u1", k: int = 5) -> dict[str, Any]:
    r = client.simulate_get("/v1/recommendations", params={"user_id": user, "k": k})
    assert r.status_code == 200, r.text
    return r.json


def test_personalised_items_skip_seen_and_unavailable_with_metadata(client, fakes) -> None:
    out = rec(client)
    assert out["source"] == "personalized" and out["fallback_reason"] is None
    assert (out["model_version"], out["index_version"]) == ("m7", "idx-3")
    ids = [i["id"] for i in out["items"]]
    assert ids == ["c0", "c2", "c4", "c5", "c6"]  # "gone" unavailable, "seen" in history
    assert out["items"][0] == {"id": "c0", "score": 1.0, "source": "personalized",
                               "metadata": {"title": "C0"}}
    _, k, exclude = fakes[2].searches[-1]
    # Alone, the history goes to FAISS as exclusions; batched, FAISS returns more instead.
    assert (k, exclude) in [(5 + 10, ["a", "seen"]), (5 + 10 + 2, [])]


@pytest.mark.parametrize("setup, reason", [
    (lambda u, r, f: None, "unknown_user"),
    (lambda u, r, f: setattr(u, "fail", pymongo.errors.ServerSelectionTimeoutError("x")),
     "mongo_unavailable"),
])
def test_unknown_user_or_mongo_down_gives_popular(client, fakes, setup, reason) -> None:
    setup(*fakes)
    out = rec(client, user="nobody" if reason == "unknown_user" else "u1")
    assert out["source"] == "popular" and out["fallback_reason"] == reason
    ids = [i["id"] for i in out["items"]]
    assert ids == ["p0", "p2", "p3", "p4", "p5"]  # p1 is unavailable


@pytest.mark.parametrize("error, reason", [
    (ServiceUnavailable("refused"), "faiss_unavailable"),
    (IndexNotReady("empty"), "index_not_ready"),
    (FaissRequestError(400, "Invalid request", "dimension"), "bad_query"),
])
def test_faiss_failures_give_popular_and_a_reason(client, fakes, error, reason) -> None:
    fakes[2].fail = error
    out = rec(client)
    assert out["source"] == "popular" and out["fallback_reason"] == reason
    assert "seen" not in {i["id"] for i in out["items"]} and len(out["items"]) == 5


def test_short_candidate_lists_are_filled_with_popular(client, fakes) -> None:
    fakes[1].unavail |= {f"c{i}" for i in range(2, 40)}
    out = rec(client, k=4)
    assert [i["source"] for i in out["items"]] == ["personalized", "popular", "popular",
                                                   "popular"]
    assert out["source"] == "personalized"


def test_redis_down_keeps_the_last_lists_and_says_degraded(fakes) -> None:
    client = make_client(fakes)
    assert rec(client)["items"][1]["id"] == "c2"  # the catalog is loaded once
    fakes[1].fail = True
    out = rec(client)
    assert out["source"] == "personalized" and out["degraded"] == ["redis"]
    assert "gone" not in {i["id"] for i in out["items"]}  # last unavailable set still used
    fakes[2].fail = ServiceUnavailable("x")
    out = rec(client)
    assert out["fallback_reason"] == "faiss_unavailable" and out["source"] == "popular"
    assert [i["id"] for i in out["items"]][:2] == ["p0", "p2"]  # last popular list


def test_redis_down_from_the_start_still_answers_200(fakes) -> None:
    fakes[1].fail = True
    out = rec(make_client(fakes))
    assert out["source"] == "personalized" and out["degraded"] == ["redis"]
    assert all(i["metadata"] is None for i in out["items"])


def test_breaker_skips_a_failed_dependency_until_cooldown() -> None:
    now = [0.0]
    b = Breaker(0.5, clock=lambda: now[0])
    assert b.allow()
    b.failed()
    assert not b.allow()
    now[0] = 0.6
    assert b.allow()


def test_similar_items_and_fallback(client, fakes) -> None:
    r = client.simulate_get("/v1/items/x/similar", params={"k": 3})
    assert r.status_code == 200 and r.json["source"] == "similar"
    assert [i["id"] for i in r.json["items"]] == ["s0", "s1", "s2"]
    r = client.simulate_get("/v1/items/unknown/similar")  # not indexed: popular, says so
    assert r.status_code == 200 and r.json["fallback_reason"] == "unknown_item"
    fakes[2].fail = ServiceUnavailable("x")
    r = client.simulate_get("/v1/items/x/similar", params={"k": 3})
    assert r.status_code == 200 and r.json["fallback_reason"] == "faiss_unavailable"


def test_similar_items_by_co_occurrence(client, fakes) -> None:
    """``?source=cooc`` serves the worker's stored list (minus unavailable items, best
    first), says when it knows nothing of the item, survives Redis failing, and refuses
    an unknown source with a 400 naming the choices; FAISS is not asked."""
    fakes[1].hot[RedisKeys("t:").cooc("x")] = json.dumps([["c1", 0.9], ["gone", 0.8],
                                                           ["c2", 0.5], ["c3", 0.1]])
    searches = len(fakes[2].searches)
    r = client.simulate_get("/v1/items/x/similar", params={"k": 2, "source": "cooc"})
    assert r.status_code == 200, r.text
    assert (r.json["source"], r.json["similar_source"], r.json["fallback_reason"]) == (
        "similar", "cooc", None)
    assert [(i["id"], i["score"]) for i in r.json["items"]] == [("c1", 0.9), ("c2", 0.5)]
    assert r.json["items"][0]["metadata"] == {"title": "C1"}
    assert len(fakes[2].searches) == searches
    r = client.simulate_get("/v1/items/never-clicked/similar", params={"source": "cooc"})
    assert (r.json["source"], r.json["fallback_reason"]) == ("popular", "unknown_item")
    r = client.simulate_get("/v1/items/x/similar", params={"source": "tags"})
    assert r.status_code == 400 and "embedding, cooc" in r.json["description"]
    fakes[1].fail = True
    r = client.simulate_get("/v1/items/x/similar", params={"source": "cooc"})
    assert r.status_code == 200 and r.json["fallback_reason"] == "redis_unavailable"
    assert r.json["degraded"] == ["redis"] and r.json["source"] == "popular"


def test_popular_and_its_redis_failure(fakes) -> None:
    fakes[1].fail = True
    client = make_client(fakes)
    r = client.simulate_get("/v1/popular", params={"k": 3})
    assert r.status_code == 503 and r.json["title"] == "Service unavailable"  # never loaded
    fakes[1].fail = False
    r = client.simulate_get("/v1/popular", params={"k": 3})
    assert [i["id"] for i in r.json["items"]] == ["p0", "p2", "p3"]
    fakes[1].fail = True
    r = client.simulate_get("/v1/popular", params={"k": 3})
    assert r.status_code == 200 and r.json["degraded"] == ["redis"]


@pytest.mark.parametrize("params", [{}, {"user_id": ""}, {"user_id": "u1", "k": 0},
                                    {"user_id": "u1", "k": 101}, {"user_id": "u1", "k": "x"},
                                    {"user_id": "x" * 300}])
def test_bad_parameters_are_400_json(client, params) -> None:
    r = client.simulate_get("/v1/recommendations", params=params)
    assert r.status_code == 400 and r.json["title"]


def test_health_ready_and_openapi(client, fakes) -> None:
    assert client.simulate_get("/health").json == {"status": "ok"}
    r = client.simulate_get("/ready")
    assert r.status_code == 200 and r.json["checks"]["faiss"]["version"] == "idx-3"
    fakes[2].fail = ServiceUnavailable("down")
    r = client.simulate_get("/ready")
    assert r.status_code == 503 and r.json["checks"]["faiss"]["ok"] is False
    paths = set(client.simulate_get("/openapi.json").json["paths"])
    assert paths == {"/v1/recommendations", "/v1/items/{item_id}/similar", "/v1/popular",
                     "/health", "/ready", "/openapi.json"}


# --- caches --------------------------------------------------------------------------------
class FakeCollection:
    """``find_one`` of an async collection; ``gate`` holds reads until released."""

    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def find_one(self, query: dict[str, Any], projection: Any = None) -> Any:
        self.reads += 1
        snapshot = self.docs.get(query["_id"])
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise self.fail
        return None if snapshot is None else {"_id": query["_id"], **snapshot}


def event(op: str, user: str, vector: list[float] | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {"operationType": op, "documentKey": {"_id": user}}
    if vector is not None:
        ev["fullDocument"] = {"_id": user, "vector": vector, "model_version": "m"}
    return ev


def test_user_cache_ttl_mode_serves_repeats_within_ttl_only() -> None:
    now = [0.0]
    col = FakeCollection({"u1": {"vector": [1.0]}})
    cache = UserCache(col, ttl_s=0.5, clock=lambda: now[0])

    async def run() -> None:
        await cache.get("u1"), await cache.get("u1"), await cache.get("x"), await cache.get("x")
        assert col.reads == 2 and cache.hits == 2
        now[0] = 0.51
        await cache.get("u1")
        assert col.reads == 3
        off = UserCache(col, ttl_s=0)
        await off.get("u1"), await off.get("u1")
        assert col.reads == 5

    asyncio.run(run())


def test_user_cache_stream_events_replace_entries_at_once() -> None:
    now = [0.0]
    col = FakeCollection({"u1": {"vector": [1.0]}})
    cache = UserCache(col, ttl_s=0.5, max_age_s=60, clock=lambda: now[0])
    cache.live = True

    async def run() -> None:
        assert (await cache.get("u1")).vector == [1.0]
        assert await cache.get("new") is None
        now[0] = 30.0  # far beyond the TTL: a live stream vouches for the entries
        cache.apply_event(event("replace", "u1", [2.0]))
        cache.apply_event(event("insert", "new", [3.0]))
        assert (await cache.get("u1")).vector == [2.0]
        assert (await cache.get("new")).vector == [3.0]
        assert col.reads == 2
        cache.apply_event(event("delete", "u1"))
        assert await cache.get("u1") is None and col.reads == 2
        cache._distrust()  # the stream broke: entries are trusted ttl_s more at most
        now[0] = 30.6
        await cache.get("new")
        assert col.reads == 3

    asyncio.run(run())


def test_user_cache_event_during_a_read_wins_and_misses_coalesce() -> None:
    col = FakeCollection({"u1": {"vector": [1.0]}})
    cache = UserCache(col, ttl_s=0.5)
    cache.live = True

    async def run() -> None:
        col.gate = asyncio.Event()
        readers = [asyncio.create_task(cache.get("u1")) for _ in range(3)]
        await asyncio.sleep(0)
        cache.apply_event(event("replace", "u1", [9.0]))  # newer than the read in flight
        col.gate.set()
        docs = await asyncio.gather(*readers)
        assert col.reads == 1
        assert (await cache.get("u1")).vector == [9.0]
        assert docs[0] is not None

    asyncio.run(run())


def test_user_cache_read_errors_reach_every_waiter() -> None:
    col = FakeCollection({})
    col.fail = pymongo.errors.ServerSelectionTimeoutError("down")
    cache = UserCache(col)

    async def run() -> None:
        col.gate = asyncio.Event()
        readers = [asyncio.create_task(cache.get("u1")) for _ in range(2)]
        await asyncio.sleep(0)
        col.gate.set()
        out = await asyncio.gather(*readers, return_exceptions=True)
        assert all(isinstance(o, pymongo.errors.ServerSelectionTimeoutError) for o in out)

    asyncio.run(run())


def test_catalog_refreshes_at_most_every_interval_and_caches_metadata() -> None:
    now = [0.0]
    r = FakeRedis()
    cat = Catalog(r, RedisKeys("t:"), refresh_s=1.0, meta_ttl_s=10.0, clock=lambda: now[0])

    async def run() -> None:
        await cat.fresh()
        assert "gone" in cat.unavailable and cat.popular[0] == ("p0", 100.0)
        r.unavail.add("p0")
        now[0] = 0.5
        await cat.fresh()
        assert "p0" not in cat.unavailable
        now[0] = 1.1
        await cat.fresh()
        assert "p0" in cat.unavailable
        meta = await cat.metadata(["a", "nometa1"])
        assert meta == {"a": {"title": "A"}, "nometa1": None}
        await cat.metadata(["a", "nometa1"])
        assert r.mgets == 1
        now[0] = 20.0
        await cat.metadata(["a"])
        assert r.mgets == 2

    asyncio.run(run())


# --- batching ------------------------------------------------------------------------------
def test_batcher_coalesces_concurrent_searches_and_drops_seen_items() -> None:
    faiss = FakeFaiss()
    batcher = SearchBatcher(faiss, max_batch=64, max_inflight=1)

    async def run() -> None:
        outs = await asyncio.gather(*[batcher.search([1.0], 3, ["c0"] if n == 0 else [])
                                      for n in range(5)])
        # the first goes alone, the four queued meanwhile go together
        assert [n for n, _, _ in faiss.searches] == [1, 4]
        assert all(exclude == [] for _, _, exclude in faiss.searches)
        assert [i for i, _ in outs[0].results[0]] == ["gone", "c2", "seen"]
        assert [i for i, _ in outs[1].results[0]] == ["c0", "gone", "c2"]
        assert batcher.stats()["queries"] == 5

    asyncio.run(run())


def test_batcher_separates_dimensions_and_propagates_errors() -> None:
    faiss = FakeFaiss()
    batcher = SearchBatcher(faiss, max_inflight=1, max_history=1)

    async def run() -> None:
        await asyncio.gather(batcher.search([1.0], 2), batcher.search([1.0], 2),
                             batcher.search([1.0, 2.0], 2))
        assert [n for n, _, _ in faiss.searches] == [1, 1, 1]
        await batcher.search([1.0], 2, ["a", "b"])  # long history: alone, with exclusions
        assert faiss.searches[-1] == (1, 2, ["a", "b"])
        faiss.fail = ServiceUnavailable("down")
        out = await asyncio.gather(batcher.search([1.0], 2), batcher.search([1.0], 2),
                                   return_exceptions=True)
        assert all(isinstance(o, ServiceUnavailable) for o in out)

    asyncio.run(run())


def test_user_cache_is_bounded_by_bytes_not_only_entries() -> None:
    """Huge documents (long histories of long ids) evict others instead of growing the
    process; the recent event ids a change event carries are not held at all."""
    from recommender_server.caches import entry_bytes

    cache = UserCache(FakeCollection({}), max_entries=1_000, max_bytes=200_000)
    small = {"vector": [0.5] * 64, "model_version": "m", "history": ["i1", "i2"]}
    huge = {"vector": [0.5] * 64, "model_version": "m",
            "history": [f"{'x' * 250}{j}" for j in range(200)],
            "event_ids": [[f"e{j}" * 100, "d"] for j in range(32)]}
    for j in range(20):
        cache.apply_event({"operationType": "insert", "documentKey": {"_id": f"s{j}"},
                           "fullDocument": {"_id": f"s{j}", **small}})
    assert len(cache) == 20 and cache.bytes <= cache.max_bytes
    for j in range(5):
        cache.apply_event({"operationType": "replace", "documentKey": {"_id": f"h{j}"},
                           "fullDocument": {"_id": f"h{j}", **huge}})
        assert cache.bytes <= cache.max_bytes
    assert 0 < len(cache) < 25  # the oldest were evicted to make room
    kept = cache.last_known("h4")
    assert kept is not None and kept[1] is not None and kept[1].event_ids == []
    assert cache.bytes == sum(entry_bytes(u, cache.last_known(u)[1])  # type: ignore[index]
                              for u in list(cache._entries))


# --- the worker's hot user state (Redis) against the MongoDB document ----------------------
class CachedUsers(FakeUsers):
    """Users whose documents the API's cache holds (no MongoDB read needed)."""

    def cached(self, user_id: str) -> tuple[UserDoc | None] | None:
        return (self.docs[user_id],) if user_id in self.docs else None


def put_hot(r: FakeRedis, doc: UserDoc) -> None:
    r.hot[RedisKeys("t:").user_state(doc.user_id)] = hot_users.encode(doc).decode()


def served(fakes: Any, out: dict[str, Any]) -> tuple[str, list[str]]:
    """(model version, history sent to FAISS as exclusions) of an unbatched answer."""
    return out["model_version"], fakes[2].searches[-1][2]


@pytest.mark.parametrize("hot_n, stored_n, winner", [
    (6, 5, "hot"), (5, 5, "hot"), (4, 5, "stored")])
def test_the_higher_version_of_hot_state_and_document_is_served(hot_n, stored_n,
                                                                winner) -> None:
    fakes = (CachedUsers(), FakeRedis(), FakeFaiss())
    fakes[0].docs["u1"] = UserDoc("u1", [1.0, 0.0], "m-stored", recent=as_clicks(["a", "seen"]),
                                  n_events=stored_n)
    put_hot(fakes[1], UserDoc("u1", [0.0, 1.0], "m-hot", recent=as_clicks(["a", "seen", "new"]),
                              n_events=hot_n))
    out = rec(make_client(fakes, hot=True, faiss_batch_inflight=0))
    assert out["source"] == "personalized" and out["fallback_reason"] is None
    expected = (("m-hot", ["a", "seen", "new"]) if winner == "hot"
                else ("m-stored", ["a", "seen"]))
    assert served(fakes, out) == expected


def test_a_click_of_a_user_mongodb_does_not_know_yet_is_served_from_the_hot_state(
        fakes) -> None:
    put_hot(fakes[1], UserDoc("fresh", [1.0, 0.0], "m-hot", recent=as_clicks(["c0"]), n_events=1))
    out = rec(make_client(fakes, hot=True, faiss_batch_inflight=0), user="fresh")
    assert out["source"] == "personalized" and out["fallback_reason"] is None
    assert "c0" not in {i["id"] for i in out["items"]}  # the click is in the seen filter
    assert fakes[0].calls == 0  # MongoDB not read: the hot record is never older


def test_mongodb_down_does_not_matter_to_a_user_with_hot_state(fakes) -> None:
    fakes[0].fail = pymongo.errors.ServerSelectionTimeoutError("x")
    put_hot(fakes[1], UserDoc("u1", [1.0, 0.0], "m-hot", recent=as_clicks(["a"]), n_events=3))
    out = rec(make_client(fakes, hot=True))
    assert out["source"] == "personalized" and "degraded" not in out


def test_redis_down_falls_back_to_the_document_and_says_degraded(fakes) -> None:
    put_hot(fakes[1], UserDoc("u1", [0.0, 1.0], "m-hot", recent=as_clicks(["x"]), n_events=9))
    fakes[1].fail = True
    out = rec(make_client(fakes, hot=True, faiss_batch_inflight=0))
    assert out["source"] == "personalized" and out["degraded"] == ["redis"]
    assert served(fakes, out) == ("m7", ["a", "seen"])


def test_a_hot_record_of_an_older_worker_is_ignored_and_the_document_served(fakes) -> None:
    """Records written before ``recent`` held (item, type) pairs held item ids only; until
    their TTL ends them the API serves the MongoDB document instead of failing."""
    old = msgspec.json.encode([9, 0, "m-old", "", ["x"], ""]).decode()
    fakes[1].hot[RedisKeys("t:").user_state("u1")] = old
    out = rec(make_client(fakes, hot=True, faiss_batch_inflight=0))
    assert out["source"] == "personalized" and "degraded" not in out
    assert served(fakes, out) == ("m7", ["a", "seen"])


@pytest.mark.parametrize("away_s, expected", [(0.0, [1.0, 0.0]), (1800.0, [0.5, 0.5]),
                                              (None, [1.0, 0.0])])
def test_a_session_aware_query_is_blended_by_the_stream_clock(fakes, away_s, expected) -> None:
    """The document holds the query at the last event ([1, 0]) and the long-term one
    ([0, 1]); the API serves their blend by the session gate at the worker's stream
    clock (30-minute half-life: half-way after 30 minutes), or the last query when no
    clock is known yet (``away_s`` None)."""
    put_hot(fakes[1], UserDoc("u1", [1.0, 0.0], "m-hot", recent=as_clicks(["a"]), n_events=3,
                              last_event_ms=1_000, long_vector=[0.0, 1.0]))
    if away_s is not None:
        clock = StreamClock(1_000 + int(away_s * 1000), int(time.time() * 1000), 1800.0)
        fakes[1].hot[RedisKeys("t:").stream_clock] = msgspec.json.encode(clock).decode()
    out = rec(make_client(fakes, hot=True, faiss_batch_inflight=0))
    assert out["source"] == "personalized"
    np.testing.assert_allclose(fakes[2].vectors[-1], expected, atol=1e-3)


@pytest.mark.parametrize("batched", [True, False])
def test_a_hybrid_query_sends_the_co_occurrence_of_the_recent_items(fakes, batched) -> None:
    """With a sparse part in the stream clock (a hybrid model), the API sends FAISS the
    co-occurrence of the user's recent items, weighted by recency, event type, the
    model's weight and the session gate (an hour away: ¼), as ``boosts``; the dense
    query goes as before. Without Redis the dense part answers alone."""
    keys = RedisKeys("t:")
    put_hot(fakes[1], UserDoc("u1", [1.0, 0.0], "m-hot", n_events=3, last_event_ms=1_000,
                              recent=[("old", "click"), ("a", "view"), ("b", "click")]))
    sparse = SparseQuery(weight=2.0, window=2, recency=0.5,
                         event_weights={"click": 1.0, "view": 0.5})
    clock = StreamClock(1_000 + 3_600_000, int(time.time() * 1000), 1800.0, sparse)
    fakes[1].hot[keys.stream_clock] = msgspec.json.encode(clock).decode()
    fakes[1].hot[keys.cooc("b")] = '[["x",0.4],["y",0.2]]'
    fakes[1].hot[keys.cooc("a")] = '[["x",0.8]]'
    fakes[1].hot[keys.cooc("old")] = '[["z",1.0]]'  # outside the window of 2
    client = make_client(fakes, hot=True, faiss_batch_inflight=2 if batched else 0)
    out = rec(client)
    assert out["source"] == "personalized"
    # b (age 0, click): 1 · 1; a (age 1, view): 0.5 · 0.5; × weight 2 × gate ¼
    # (the wall time since the clock was written ages the gate a little: rel 1e-4)
    assert fakes[2].boosts[-1] == pytest.approx({"x": 0.5 * (0.4 + 0.25 * 0.8),
                                                 "y": 0.5 * 0.2}, rel=1e-4)
    fakes[1].fail = True  # Redis down: no hot record either; MongoDB's document answers
    out = rec(make_client(fakes, hot=True, faiss_batch_inflight=0))
    assert out["source"] == "personalized" and "redis" in out["degraded"]
    assert fakes[2].boosts[-1] == {}
