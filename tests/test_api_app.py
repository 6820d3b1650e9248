"""Recommender API over HTTP through ``falcon.testing``, dependencies passed in as fakes."""

from __future__ import annotations

from typing import Any

import pymongo.errors
import pytest
import redis
from falcon import testing

from common.errors import IndexNotReady, ServiceUnavailable, UnknownItem
from common.settings import Settings
from common.stores import UserDoc
from faiss_server.client import FaissRequestError, SearchResult, SimilarResult
from recommender_server.app import create_app
from recommender_server.config import ApiConfig
from recommender_server.deps import Breaker, CachedUsers, Dependencies

POPULAR = [(f"p{i}", 100.0 - i) for i in range(30)]


class FakeUsers:
    def __init__(self) -> None:
        self.docs = {"u1": UserDoc("u1", [1.0, 0.0], "m7", history=["a", "seen"])}
        self.fail: Exception | None = None
        self.calls = 0

    def get(self, user_id: str) -> UserDoc | None:
        self.calls += 1
        if self.fail:
            raise self.fail
        return self.docs.get(user_id)


class FakeItems:
    def __init__(self) -> None:
        self.unavail = {"gone", "p1"}
        self.fail = False

    def _check(self) -> None:
        if self.fail:
            raise redis.ConnectionError("down")

    def get_items(self, ids: list[str]) -> dict[str, Any]:
        self._check()
        return {i: {"title": i.upper()} for i in ids}

    def unavailable_among(self, ids: list[str]) -> set[str]:
        self._check()
        return {i for i in ids if i in self.unavail}

    def popular(self, k: int) -> list[tuple[str, float]]:
        self._check()
        return POPULAR[:k]


class FakeFaiss:
    def __init__(self) -> None:
        self.fail: Exception | None = None
        self.searches: list[tuple[int, list[str]]] = []

    def search(self, vectors: Any, k: int, exclude: Any = ()) -> SearchResult:
        if self.fail:
            raise self.fail
        self.searches.append((k, list(exclude)))
        hits = [(f"c{i}", 1.0 - i / 100) for i in range(k)]
        hits[1] = ("gone", 0.98)
        return SearchResult("idx-3", [hits])

    def similar(self, item_id: str, k: int, exclude: Any = ()) -> SimilarResult:
        if self.fail:
            raise self.fail
        if item_id == "unknown":
            raise UnknownItem(item_id)
        return SimilarResult("idx-3", [(f"s{i}", 0.5) for i in range(k)])

    def health(self) -> dict[str, Any]:
        if self.fail:
            raise self.fail
        return {"version": "idx-3", "size": 9}


@pytest.fixture
def fakes() -> tuple[FakeUsers, FakeItems, FakeFaiss]:
    return FakeUsers(), FakeItems(), FakeFaiss()


@pytest.fixture
def client(fakes) -> testing.TestClient:
    users, items, faiss = fakes
    deps = Dependencies(users=users, items=items, faiss=faiss)  # type: ignore[arg-type]
    config = ApiConfig.from_settings(Settings.from_env(), breaker_cooldown_s=0.0,
                                     popular_ttl_s=0.0)
    return testing.TestClient(create_app(config, deps))


def rec(client: testing.TestClient, user: str = "u1", k: int = 5) -> dict[str, Any]:
    r = client.simulate_get("/v1/recommendations", params={"user_id": user, "k": k})
    assert r.status_code == 200, r.text
    return r.json


def test_personalised_items_skip_seen_and_unavailable_with_metadata(client, fakes) -> None:
    out = rec(client)
    assert out["source"] == "personalized" and out["fallback_reason"] is None
    assert (out["model_version"], out["index_version"]) == ("m7", "idx-3")
    ids = [i["id"] for i in out["items"]]
    assert len(ids) == 5 and "gone" not in ids
    assert out["items"][0] == {"id": "c0", "score": 1.0, "source": "personalized",
                               "metadata": {"title": "C0"}}
    k, exclude = fakes[2].searches[-1]
    assert k == 5 + 10 and exclude == ["a", "seen"]  # history goes to FAISS as exclusions


@pytest.mark.parametrize("setup, reason", [
    (lambda u, i, f: None, "unknown_user"),
    (lambda u, i, f: setattr(u, "fail", pymongo.errors.ServerSelectionTimeoutError("x")),
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
    fakes[1].unavail |= {f"c{i}" for i in range(2, 30)}
    out = rec(client, k=4)
    assert [i["source"] for i in out["items"]] == ["personalized", "popular", "popular",
                                                   "popular"]
    assert out["source"] == "personalized"


def test_redis_down_still_answers_200_and_says_degraded(client, fakes) -> None:
    fakes[1].fail = True
    out = rec(client)
    assert out["source"] == "personalized" and out["degraded"] == ["redis"]
    assert all(i["metadata"] is None for i in out["items"])
    fakes[2].fail = ServiceUnavailable("x")
    out = rec(client)
    assert out["items"] == [] and out["fallback_reason"] == "faiss_unavailable"


def test_breaker_skips_a_failed_dependency_until_cooldown() -> None:
    now = [0.0]
    b = Breaker(0.5, clock=lambda: now[0])
    assert b.allow()
    b.failed()
    assert not b.allow()
    now[0] = 0.6
    assert b.allow()


def test_user_cache_serves_repeats_within_ttl_only() -> None:
    now = [0.0]
    store = FakeUsers()
    cache = CachedUsers(store, ttl_s=0.5, clock=lambda: now[0])
    cache.get("u1"), cache.get("u1"), cache.get("nobody"), cache.get("nobody")
    assert store.calls == 2 and cache.hits == 2
    now[0] = 0.51
    cache.get("u1")
    assert store.calls == 3
    off = CachedUsers(store, ttl_s=0)
    off.get("u1"), off.get("u1")
    assert store.calls == 5


def test_similar_items_and_fallback(client, fakes) -> None:
    r = client.simulate_get("/v1/items/x/similar", params={"k": 3})
    assert r.status_code == 200 and r.json["source"] == "similar"
    assert [i["id"] for i in r.json["items"]] == ["s0", "s1", "s2"]
    r = client.simulate_get("/v1/items/unknown/similar")
    assert r.status_code == 404 and r.json["title"] == "Unknown item"
    fakes[2].fail = ServiceUnavailable("x")
    r = client.simulate_get("/v1/items/x/similar", params={"k": 3})
    assert r.status_code == 200 and r.json["fallback_reason"] == "faiss_unavailable"


def test_popular_and_its_redis_failure(client, fakes) -> None:
    r = client.simulate_get("/v1/popular", params={"k": 3})
    assert [i["id"] for i in r.json["items"]] == ["p0", "p2", "p3"]
    fakes[1].fail = True
    r = client.simulate_get("/v1/popular", params={"k": 3})
    assert r.status_code == 503 and r.json["title"] == "Service unavailable"


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


def test_asgi_build_answers_the_same(fakes) -> None:
    users, items, faiss = fakes
    deps = Dependencies(users=users, items=items, faiss=faiss)  # type: ignore[arg-type]
    app = create_app(ApiConfig.from_settings(Settings.from_env()), deps, asgi=True)
    c = testing.TestClient(app)
    r = c.simulate_get("/v1/recommendations", params={"user_id": "u1", "k": 3})
    assert r.status_code == 200 and r.json["source"] == "personalized"
    assert c.simulate_get("/v1/recommendations").status_code == 400
    assert c.simulate_get("/v1/items/unknown/similar").status_code == 404
