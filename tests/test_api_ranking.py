"""The API's ranking stage over stand-in dependencies: what a ranked answer says (the
ranker's version, each item's sources, ``explain``), the ``order`` parameter, and
rankers swapped under concurrent load with no failed request."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from falcon import testing

from common.settings import Settings
from common.stores import RedisKeys
from ranking.features import FEATURES, SOURCES
from ranking.ranker import Ranker, RankerParams, train_ranker
from recommender_server.app import create_app
from recommender_server.caches import Catalog
from recommender_server.config import ApiConfig
from recommender_server.deps import Dependencies
from tests.test_api_app import POPULAR, FakeFaiss, FakeRedis, FakeUsers

KEYS = RedisKeys("t:")


def a_ranker(seed: int, version: str) -> Ranker:
    """A small ranker that prefers popular candidates (``pop_rel``)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, len(FEATURES))).astype(np.float32)
    y = (x[:, FEATURES.index("pop_rel")] > 0.5).astype(np.float32)
    return train_ranker(x, y, [30] * 20, RankerParams(rounds=8, min_data_in_leaf=5),
                        version=version)


def publish(r: FakeRedis, ranker: Ranker | str, version: str) -> None:
    r.hot[KEYS.ranker] = ranker if isinstance(ranker, str) else ranker.to_text()
    r.hot[KEYS.ranker_version] = version


@pytest.fixture
def fakes() -> tuple[FakeUsers, FakeRedis, FakeFaiss]:
    return FakeUsers(), FakeRedis(), FakeFaiss()


def app_of(fakes: Any, **over: Any) -> Any:
    users, r, faiss = fakes
    deps = Dependencies(users=users, catalog=Catalog(r, KEYS, refresh_s=0.0), faiss=faiss)
    config = ApiConfig.from_env(Settings.from_env(), **{
        "breaker_cooldown_s": 0.0, "ranker_refresh_s": 0.01,
        "attribute_index_preload": False, **over})
    return create_app(config, deps)


async def until_version(conductor: testing.ASGIConductor, version: str | None) -> None:
    for _ in range(500):
        got = (await conductor.simulate_get("/ready")).json["checks"]["ranker"]["version"]
        if got == version:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"ranker {version} never loaded")


def test_a_ranked_answer_says_its_ranker_each_items_sources_and_why(fakes) -> None:
    ranker = a_ranker(0, "r1")
    publish(fakes[1], ranker, "r1")

    async def scenario() -> dict[str, Any]:
        async with testing.ASGIConductor(app_of(fakes)) as conductor:
            await until_version(conductor, "r1")
            r = await conductor.simulate_get("/v1/recommendations",
                                             params={"user_id": "u1", "k": 8, "explain": "true"})
            assert r.status_code == 200, r.text
            return dict(r.json)

    out = asyncio.run(scenario())
    assert out["ranker_version"] == "r1" and out["source"] == "personalized"
    items = out["items"]
    assert len(items) == 8 and {"seen", "gone", "p1"}.isdisjoint(i["id"] for i in items)
    for item in items:
        assert item["sources"] and set(item["sources"]) <= set(SOURCES)
        assert set(item["features"]) <= set(FEATURES) and "ann_rank" in item["features"]
    # the ranker's own score orders the list, and is the one it gives these features
    scores = [i["ranker_score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    row = np.full((1, len(FEATURES)), np.nan, dtype=np.float32)
    for name, v in items[0]["features"].items():
        row[0, FEATURES.index(name)] = v
    assert ranker.predict(row)[0] == pytest.approx(scores[0], abs=1e-4)
    # popular items reach the list as candidates of the "popular" source
    assert any("popular" in i["sources"] for i in items)


def test_each_order_serves_its_own_candidates(fakes) -> None:
    async def scenario() -> dict[str, Any]:
        async with testing.ASGIConductor(app_of(fakes)) as conductor:
            out = {}
            for order in ("ranked", "retrieval", "popular", "ann", "bogus"):
                r = await conductor.simulate_get(
                    "/v1/recommendations", params={"user_id": "u1", "k": 5, "order": order})
                out[order] = r.json if r.status_code == 200 else r.status_code
            return out

    out = asyncio.run(scenario())
    assert out["bogus"] == 400
    assert out["ranked"]["ranker_version"] is None  # none published: the FAISS order
    ids = {o: [i["id"] for i in out[o]["items"]] for o in ("ranked", "retrieval", "popular",
                                                          "ann")}
    assert ids["ranked"] == ids["retrieval"] == ids["ann"] == ["c0", "c2", "c4", "c5", "c6"]
    assert ids["popular"] == [p for p, _ in POPULAR if p != "p1"][:5]
    assert all(i["sources"] == ["popular"] for i in out["popular"]["items"])


def test_rankers_swapped_under_load_fail_no_request(fakes) -> None:
    """Four rankers published while 8 waves of 60 concurrent requests run, plus one that
    does not load: every request is answered 200 by one of the published rankers, the
    broken one is never used, and the last good one ends up in use."""
    r = fakes[1]
    good = [a_ranker(s, f"r{s}") for s in range(4)]

    async def scenario() -> tuple[list[int], set[str], dict[str, Any]]:
        statuses: list[int] = []
        versions: set[str] = set()
        async with testing.ASGIConductor(app_of(fakes)) as conductor:
            for wave in range(8):
                if wave % 2 == 0:
                    publish(r, good[wave // 2], good[wave // 2].version)
                if wave == 5:
                    publish(r, "{broken", "r-broken")
                answers = await asyncio.gather(*[
                    conductor.simulate_get("/v1/recommendations",
                                           params={"user_id": "u1", "k": 5})
                    for _ in range(60)])
                statuses += [a.status_code for a in answers]
                versions |= {a.json.get("ranker_version") for a in answers
                             if a.status_code == 200}
                await asyncio.sleep(0.03)
            publish(r, good[-1], good[-1].version)
            await until_version(conductor, good[-1].version)
            ready = (await conductor.simulate_get("/ready")).json["checks"]["ranker"]
        return statuses, versions, ready

    statuses, versions, ready = asyncio.run(scenario())
    assert len(statuses) == 480 and set(statuses) == {200}
    assert versions <= {None, *(g.version for g in good)} and len(versions - {None}) >= 2
    assert ready["version"] == "r3" and ready["load_errors"] == 1 and ready["swaps"] >= 2
