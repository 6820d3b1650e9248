"""Request filters on catalogue attributes, on the three listing endpoints, through
``falcon.testing`` with the same fakes as ``test_api_app`` (item metadata made varied)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from common.stores import RedisKeys
from recommender_server.attribute_index import AttributeIndex
from recommender_server.filters import MAX_FILTERS, AttributeFilter, parse_filters
from tests.test_api_app import FakeFaiss, FakeRedis, FakeUsers, make_client

GENRES = ["Comedy", "Drama", "Horror", "Western"]


def attributes(item: str) -> dict[str, Any] | None:
    """Deterministic varied metadata per item id; ``nometa*`` items have none."""
    if item.startswith("nometa"):
        return None
    rnd = random.Random(item)
    return {"title": item.upper(), "genres": rnd.sample(GENRES, rnd.randint(1, 2)),
            "year": rnd.randint(1970, 2000)}


#: The catalogue (``items:known``): what the fakes can return as candidates.
KNOWN = ({f"c{i}" for i in range(1000)} | {f"p{i}" for i in range(30)}
         | {f"s{i}" for i in range(1000)} | {"nometa6", "gone", "seen"})


class AttrRedis(FakeRedis):
    async def smembers(self, key: str) -> set[str]:
        self._check()
        assert key == RedisKeys("t:").known
        return set(KNOWN)

    async def scard(self, key: str) -> int:
        self._check()
        assert key == RedisKeys("t:").known
        return len(KNOWN)

    async def mget(self, keys: list[str]) -> list[str | None]:
        self._check()
        if keys and keys[0].startswith((RedisKeys("t:").user_state(""),
                                        RedisKeys("t:").cooc(""))):
            return [self.hot.get(k) for k in keys]
        self.mgets += 1
        out = []
        for k in keys:
            meta = attributes(k.rsplit(":", 1)[1])
            out.append(None if meta is None else json.dumps(meta))
        return out


class ManyFaiss(FakeFaiss):
    """Candidates c0..c{k-1} (as the base fake) and similar items s0..s{k-1}, with a few
    items that have no metadata among them."""

    def _hits(self, k: int) -> list[tuple[str, float]]:
        hits = super()._hits(k)
        if k > 6:
            hits[6] = ("nometa6", 0.94)
        return hits


@pytest.fixture
def fakes() -> tuple[FakeUsers, AttrRedis, ManyFaiss]:
    return FakeUsers(), AttrRedis(), ManyFaiss()


@pytest.fixture(params=["batched", "unbatched"])
def batching(request) -> int:
    return 2 if request.param == "batched" else 0


@pytest.fixture(params=["over-fetch", "pushdown"])
def pushdown(request) -> bool:
    return request.param == "pushdown"


@pytest.fixture(params=["retrieval", "ranked"])
def ranking(request) -> bool:
    return request.param == "ranked"


@pytest.fixture
def client(fakes, batching, pushdown, ranking):
    return make_client(fakes, faiss_batch_inflight=batching,
                       filter_pushdown_max_ids=5000 if pushdown else 0, ranking=ranking)


def passes(item: str, genres: set[str], lo: int, hi: int) -> bool:
    """The test's own reading of ``genre=..&year_min=lo&year_max=hi`` (not the module's)."""
    meta = attributes(item)
    return meta is not None and bool(genres & set(meta["genres"])) and lo <= meta["year"] <= hi


def query(genres: set[str], lo: int, hi: int) -> dict[str, Any]:
    return {"genre": sorted(genres), "year_min": str(lo), "year_max": str(hi)}


CASES = [({"Comedy"}, 1970, 2000), ({"Western"}, 1990, 1999), ({"Drama", "Horror"}, 1985, 1995),
         ({"Horror"}, 1999, 2000), ({"Comedy"}, 1600, 1650)]


@pytest.mark.parametrize("genres, lo, hi", CASES)
@pytest.mark.parametrize("k", [1, 5, 20])
def test_no_endpoint_returns_an_item_that_fails_the_filter(client, fakes, pushdown, ranking,
                                                           genres, lo, hi, k) -> None:
    """Every item of every answer passes; ``partial`` is exactly "fewer than k"; and
    (retrieval order) the items are the first passing ones of each source, in its order;
    (ranked) the personalised items are the best ranked passing candidates."""
    params = query(genres, lo, hi)
    answers = {"recommendations": client.simulate_get(
        "/v1/recommendations", params={"user_id": "u1", "k": k, **params})}
    passing = sorted(i for i in KNOWN if passes(i, genres, lo, hi))
    if not passing and pushdown:  # nothing passes: FAISS is not even asked
        assert fakes[2].searches == []
        asked = 0
    elif pushdown:  # searched within exactly the ids that pass, k + slack of them
        assert sorted(fakes[2].only[-1]) == passing
        asked = fakes[2].searches[-1][1]
        assert asked == (100 if ranking else k + 10)
    else:
        assert fakes[2].only[-1] == []
        asked = fakes[2].searches[-1][1]  # (k + slack) × 10, + the history when batched
        want = max((k + 10) * 10, 100) if ranking else (k + 10) * 10
        assert asked in (want, want + 2)
    answers |= {
        "similar": client.simulate_get("/v1/items/x/similar", params={"k": k, **params}),
        "popular": client.simulate_get("/v1/popular", params={"k": k, **params}),
    }
    for name, r in answers.items():
        assert r.status_code == 200, (name, r.text)
        ids = [i["id"] for i in r.json["items"]]
        assert all(passes(i, genres, lo, hi) for i in ids), (name, ids)
        assert r.json["partial"] is (len(ids) < k), name
        assert len(ids) == len(set(ids)) <= k
        assert r.json["filters"] == {"genre": sorted(genres), "year_min": float(lo),
                                     "year_max": float(hi)}
    popular = [f"p{i}" for i in range(30) if i != 1]  # p1 is unavailable
    assert [i["id"] for i in answers["popular"].json["items"]] == \
        [p for p in popular if passes(p, genres, lo, hi)][:k]
    personal = [i["id"] for i in answers["recommendations"].json["items"]
                if i["source"] == "personalized"]
    ranked = 1000 if pushdown else asked  # pushdown: the ranking among all that pass
    candidates = [f"c{i}" for i in range(ranked) if i not in (1, 3, 6)]
    if not ranking:
        assert personal == [c for c in candidates if passes(c, genres, lo, hi)][:k]
    else:  # no ranker published: FAISS order first, then the popular candidates
        popular_passing = [p for p in popular if passes(p, genres, lo, hi)]
        order = [c for c in candidates[:ranked] if passes(c, genres, lo, hi)]
        assert personal == (order + [p for p in popular_passing if p not in order])[:k]


def test_items_without_metadata_never_pass_and_redis_down_leaks_nothing(fakes) -> None:
    client = make_client(fakes)
    r = client.simulate_get("/v1/recommendations",
                            params={"user_id": "u1", "k": 30, "year_min": "0"})
    assert "nometa6" not in {i["id"] for i in r.json["items"]}
    unfiltered = client.simulate_get("/v1/recommendations", params={"user_id": "u1", "k": 30})
    assert "nometa6" in {i["id"] for i in unfiltered.json["items"]}
    assert "partial" not in unfiltered.json and "filters" not in unfiltered.json
    fresh = make_client((FakeUsers(), fakes[1], fakes[2]))
    assert fresh.simulate_get("/v1/popular", params={"k": 1}).status_code == 200
    fakes[1].fail = True  # the popular list is kept (last copy), metadata can't be read
    genre = attributes("p0")["genres"][0]
    for path, extra in [("/v1/recommendations", {"user_id": "u1"}), ("/v1/popular", {}),
                        ("/v1/items/x/similar", {})]:
        r = fresh.simulate_get(path, params={"k": 5, "genre": genre, **extra})
        assert r.status_code == 200, r.text
        # a metadata read that fails drops the whole batch, cached entries included
        assert r.json["items"] == [] and r.json["partial"] is True, path
        assert r.json["degraded"] == ["redis"]


def test_a_filter_asks_the_index_for_more_candidates(fakes, batching) -> None:
    client = make_client(fakes, faiss_batch_inflight=batching, filter_pushdown_max_ids=0)
    client.simulate_get("/v1/recommendations", params={"user_id": "u1", "k": 5})
    plain = fakes[2].searches[-1][1]
    client.simulate_get("/v1/recommendations",
                        params={"user_id": "u1", "k": 5, "genre": "Drama"})
    filtered = fakes[2].searches[-1][1]
    assert plain in (15, 17) and filtered - (plain - 15) == 150  # (5 + 10) × 10


@pytest.mark.parametrize("params, message", [
    ({"year_min": "old"}, "year_min must be a finite number"),
    ({"year_min": "nan"}, "year_min must be a finite number"),
    ({"year_min": "2000", "year_max": "1990"}, "year_min (2000) is above year_max (1990)"),
    ({"year_min": ["1990", "1991"]}, "year_min may be given once"),
    ({"bad name!": "x"}, "filter names are 1-64 characters"),
    ({"genre": "x" * 201}, "values are at most 200 characters"),
    ({f"a{i}": "x" for i in range(MAX_FILTERS + 1)}, f"at most {MAX_FILTERS} filter"),
])
@pytest.mark.parametrize("path", ["/v1/recommendations", "/v1/popular", "/v1/items/x/similar"])
def test_unreadable_filters_are_400_naming_the_parameter(client, params, message, path) -> None:
    r = client.simulate_get(path, params={"user_id": "u1", **params})
    assert r.status_code == 400, r.text
    assert message in r.json["description"]


def test_filter_matching_rules() -> None:
    """Singular names read plural lists, repeated values are "any of", numbers compare
    as numbers, text exactly; a missing attribute fails."""
    f = parse_filters({"genre": ["Comedy", "Drama"], "year": "1995"}, set())
    assert f.matches({"genres": ["Drama"], "year": 1995.0})
    assert f.matches({"genre": "Comedy", "year": 1995})
    assert not f.matches({"genres": ["comedy"], "year": 1995})  # case-sensitive
    assert not f.matches({"genres": ["Drama"]})  # no year
    assert not f.matches({"genres": ["Drama"], "year": "1995x"})
    rng = parse_filters({"price_max": "9.5"}, set())
    assert rng.matches({"price": 9.5}) and not rng.matches({"price": 9.51})
    assert not rng.matches({"price": True}) and not rng.matches({"price": "9"})
    assert not AttributeFilter() and AttributeFilter().matches(None)
    assert not parse_filters({"k": "3", "user_id": "u"}, {"k", "user_id"})


def test_the_openapi_document_describes_the_filters(client) -> None:
    doc = client.simulate_get("/openapi.json").json
    for path in ("/v1/recommendations", "/v1/items/{item_id}/similar", "/v1/popular"):
        params = {p["name"]: p for p in doc["paths"][path]["get"]["parameters"]}
        assert params["filters"]["style"] == "form" and params["filters"]["explode"]
        assert "genre=Comedy&year_min=1990" in params["filters"]["description"]
    for schema in ("Recommendations", "Similar", "Popular"):
        props = doc["components"]["schemas"][schema]["properties"]
        assert props["partial"]["type"] == "boolean" and "filters" in props


def test_over_fetch_follows_the_filters_observed_pass_rate(fakes) -> None:
    """A filter most candidates pass soon asks for ~2 / pass rate × (k + slack), not the
    worst case; one nothing passes stays at the worst case (10×)."""
    client = make_client(fakes, filter_pushdown_max_ids=0)
    mild = {"year_min": "1970"}  # every item with metadata passes
    asked = []
    for _ in range(10):
        r = client.simulate_get("/v1/recommendations", params={"user_id": "u1", "k": 5, **mild})
        assert r.status_code == 200 and r.json["partial"] is False
        asked.append(fakes[2].searches[-1][1])
    extra = asked[0] - 150  # batched searches also ask for the history's 2 items
    assert extra in (0, 2) and asked[-1] - extra < 45 and min(asked) - extra >= 15
    for _ in range(5):
        client.simulate_get("/v1/recommendations",
                            params={"user_id": "u1", "k": 5, "year_min": "3000"})
        assert fakes[2].searches[-1][1] - extra == 150


def test_pushdown_sends_the_passing_ids_and_falls_back_when_it_cannot(fakes) -> None:
    """A filter few items pass is searched within exactly those ids; one too many pass
    (over ``filter_pushdown_max_ids``), or with the attributes unreadable, is over-fetched;
    the answer never holds an item that fails."""
    client = make_client(fakes, filter_pushdown_max_ids=300, faiss_batch_inflight=0)
    params = {"user_id": "u1", "k": 5, "genre": "Western", "year_max": "1975"}
    r = client.simulate_get("/v1/recommendations", params=params)
    assert r.status_code == 200, r.text
    want = {i for i in KNOWN if passes(i, {"Western"}, 0, 1975)}
    assert 0 < len(want) <= 300 and set(fakes[2].only[-1]) == want
    assert {i["id"] for i in r.json["items"]} <= want
    wide = {"user_id": "u1", "k": 5, "year_min": "1900"}  # every item with metadata
    client.simulate_get("/v1/recommendations", params=wide)
    assert fakes[2].only[-1] == [] and fakes[2].searches[-1][1] == 150
    broken = AttrRedis()
    broken.fail = True
    down = make_client((FakeUsers(), broken, fakes[2]), faiss_batch_inflight=0)
    r = down.simulate_get("/v1/recommendations", params=params)
    assert r.status_code == 200 and r.json["items"] == [] and r.json["partial"] is True
    assert fakes[2].only[-1] == []  # the index could not load: over-fetched instead


def test_the_attribute_index_reloads_after_its_interval_and_skips_when_too_large() -> None:
    """Loaded once; re-read in the background when the catalogue's size changes (checked
    every ``check_s``: a new item shows within seconds) and after ``refresh_s``; filter
    scans cached until a reload; a catalogue over ``max_items``, or an empty one, is
    declined (``None``: over-fetch)."""
    now = [0.0]
    r = AttrRedis()
    flt = parse_filters({"genre": "Western", "year_max": "1975"}, set())
    want = {i for i in KNOWN if passes(i, {"Western"}, 0, 1975)}

    async def scenario() -> None:
        index = AttributeIndex(r, RedisKeys("t:"), refresh_s=60.0, max_items=5000,
                               clock=lambda: now[0])
        assert set(await index.allowed(flt) or []) == want
        assert index.loads == 1 and index.stats()["filters_cached"] == 1
        await index.allowed(flt)
        assert index.loads == 1  # within the interval: no reload
        KNOWN.add("c5000")  # a new item (its attributes are deterministic)
        try:
            now[0] = 2.0
            await index.allowed(flt)
            assert index.loads == 1  # sizes are compared every 5 s only
            now[0] = 6.0
            await index.allowed(flt)  # stale answer while the reload runs
            for _ in range(200):
                if index.loads == 2:
                    break
                await asyncio.sleep(0.01)
            assert index.loads == 2 and index.stats()["items"] == len(KNOWN) - 1  # nometa6
            ids = set(await index.allowed(flt) or [])
            assert ids == want | ({"c5000"} if passes("c5000", {"Western"}, 0, 1975) else set())
        finally:
            KNOWN.discard("c5000")
        now[0] = 70.0  # the interval: a reload even with the same size
        await index.allowed(flt)
        for _ in range(200):
            if index.loads == 3:
                break
            await asyncio.sleep(0.01)
        assert index.loads == 3
        small = AttributeIndex(r, RedisKeys("t:"), refresh_s=60.0, max_items=10)
        assert await small.allowed(flt) is None and small.stats()["too_large"] is True
        empty = AttrRedis()
        empty.smembers = lambda key: _empty()  # type: ignore[method-assign]
        unpublished = AttributeIndex(empty, RedisKeys("t:"), refresh_s=60.0, max_items=10)
        assert await unpublished.allowed(flt) is None and unpublished.stats()["items"] == 0

    asyncio.run(scenario())


async def _empty() -> set[str]:
    return set()


def test_the_attribute_index_is_loaded_when_the_app_starts(fakes) -> None:
    """Preloaded with the app's background tasks (no filtered request needed), and not
    at all with the preload off."""
    from falcon import testing as ftesting

    from common.settings import Settings
    from recommender_server.app import create_app
    from recommender_server.caches import Catalog
    from recommender_server.config import ApiConfig
    from recommender_server.deps import Dependencies

    async def started(preload: bool) -> dict[str, Any]:
        users, r, faiss = fakes
        deps = Dependencies(users=users, catalog=Catalog(r, RedisKeys("t:"), refresh_s=0.0),
                            faiss=faiss)
        config = ApiConfig.from_env(Settings.from_env(), attribute_index_preload=preload)
        async with ftesting.ASGIConductor(create_app(config, deps)) as conductor:
            for _ in range(200):
                checks = (await conductor.simulate_get("/ready")).json["checks"]
                if checks["attribute_index"]["loads"] or not preload:
                    break
                await asyncio.sleep(0.01)
            return dict(checks["attribute_index"])

    on = asyncio.run(started(True))
    assert on["loads"] == 1 and on["items"] == len(KNOWN) - 1  # nometa6 has none
    off = asyncio.run(started(False))
    assert off["loads"] == 0 and off["items"] is None
