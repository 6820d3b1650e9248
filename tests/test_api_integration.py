"""Recommender API + FAISS service as real processes against the real stack (Redis,
SecantusDB): personalised answers, freshness of user vectors through the change-stream
cache, fallback while MongoDB is stopped or the FAISS service is down (and back after it
returns), readiness, and a schema-driven fuzz run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from common.clients import mongo_client, redis_client
from common.settings import Settings
from common.stores import ItemCache, UserDoc, UserStore, as_clicks
from devstack.processes import ServiceProcess, free_port
from faiss_server.client import FaissClient
from tests.test_faiss_process import fuzz_openapi

pytestmark = pytest.mark.integration

DIM = 16
N_ITEMS = 300
N_USERS = 30
GENRES = ["Comedy", "Drama", "Horror", "Western"]


def attributes(n: int) -> dict[str, Any]:
    """Item ``it{n}``'s metadata: a title, one or two genres and a year."""
    return {"title": f"Item it{n}", "genres": GENRES[n % 4: n % 4 + 1 + n % 2],
            "year": 1980 + n % 20}


@dataclass
class World:
    settings: Settings
    faiss: ServiceProcess
    api: ServiceProcess
    users: dict[str, UserDoc]
    unavailable: set[str]

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.api.url + path, params=params, timeout=10)


@pytest.fixture(scope="module")
def world(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("serving")
    fport, aport = free_port(), free_port()
    settings = Settings.from_env(
        **{f: getattr(stack, f) for f in ("mongo_uri", "mongo_db", "redis_url", "redis_prefix",
                                          "statsd_prefix", "local_dir", "model_dir")},
        faiss_port=fport, faiss_url=f"http://127.0.0.1:{fport}", faiss_api_key="int-key",
        api_port=aport)
    rng = np.random.default_rng(7)
    item_ids = [f"it{i}" for i in range(N_ITEMS)]
    vectors = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    users = {f"user{u}": UserDoc(f"user{u}", rng.normal(size=DIM).tolist(), "model-1",
                                 recent=as_clicks(f"it{j}"
                                                  for j in rng.choice(N_ITEMS, 5, False)))
             for u in range(N_USERS)}
    unavailable = {"it1", "it2", "it3"}
    r = redis_client(settings)
    cache = ItemCache(r, settings.redis_prefix)
    cache.put_items({i: attributes(n) for n, i in enumerate(item_ids)})
    cache.mark_unavailable(unavailable)
    cache.set_popular({i: float(N_ITEMS - n) for n, i in enumerate(item_ids[:60])})
    mc = mongo_client(settings)
    UserStore(mc[settings.mongo_db]).upsert_many(list(users.values()))

    faiss_args = ["faiss", "--dim", str(DIM), "--data-dir", str(tmp / "idx")]
    faiss = ServiceProcess(faiss_args, fport, settings, log_path=tmp / "faiss.log").start()
    FaissClient(faiss.url, "int-key", read_timeout_s=10).load_version((item_ids, vectors), "v1")
    # A TTL far beyond the waits below: fresh answers can only come from the change stream.
    api = ServiceProcess(["api", "--workers", "1", "--user-cache", "stream",
                          "--user-cache-ttl", "60"], aport, settings,
                         log_path=tmp / "api.log").start()
    try:
        yield World(settings, faiss, api, users, unavailable)
    finally:
        api.stop()
        faiss.stop()
        keys = list(r.scan_iter(match=f"{settings.redis_prefix}*", count=1000))
        if keys:
            r.delete(*keys)
        mc.drop_database(settings.mongo_db)


def test_known_user_gets_personalised_unseen_available_items(world: World) -> None:
    doc = world.users["user3"]
    r = world.get("/v1/recommendations", user_id="user3", k=10)
    assert r.status_code == 200
    out = r.json()
    assert out["source"] == "personalized" and out["fallback_reason"] is None
    assert (out["model_version"], out["index_version"]) == ("model-1", "v1")
    ids = [i["id"] for i in out["items"]]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert not set(ids) & (set(doc.history) | world.unavailable)
    assert out["items"][0]["metadata"] == attributes(int(ids[0][2:]))
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True)


def test_unknown_user_gets_popular_with_a_reason(world: World) -> None:
    out = world.get("/v1/recommendations", user_id="nobody", k=5).json()
    assert out["source"] == "popular" and out["fallback_reason"] == "unknown_user"
    assert [i["id"] for i in out["items"]] == ["it0", "it4", "it5", "it6", "it7"]


def test_similar_popular_health_ready(world: World) -> None:
    sim = world.get("/v1/items/it10/similar", k=5).json()
    assert sim["source"] == "similar" and len(sim["items"]) == 5
    assert "it10" not in {i["id"] for i in sim["items"]}
    nope = world.get("/v1/items/nope/similar")
    assert nope.status_code == 200 and nope.json()["fallback_reason"] == "unknown_item"
    pop = world.get("/v1/popular", k=3).json()
    assert [i["id"] for i in pop["items"]] == ["it0", "it4", "it5"]
    assert world.get("/health").status_code == 200
    ready = world.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["faiss"]["version"] == "v1"


def test_attribute_filters_never_leak_and_keep_each_sources_order(world: World) -> None:
    """Through the real services: every item passes, the filtered list is the unfiltered
    one with the failing items taken out, and a filter nothing passes says ``partial``."""
    def passes(item: dict[str, Any]) -> bool:
        meta = item["metadata"]
        return "Horror" in meta["genres"] and 1990 <= meta["year"] <= 1999

    flt = {"genre": "Horror", "year_min": 1990, "year_max": 1999}
    for path, params in [("/v1/recommendations", {"user_id": "user3"}),
                         ("/v1/items/it10/similar", {}), ("/v1/popular", {})]:
        wide = world.get(path, k=100, **params).json()["items"]
        r = world.get(path, k=5, **params, **flt)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["filters"] == {"genre": ["Horror"], "year_min": 1990.0,
                                  "year_max": 1999.0}
        assert out["items"] and all(passes(i) for i in out["items"]), path
        assert [i["id"] for i in out["items"]] == \
            [i["id"] for i in wide if passes(i)][:5], path
        assert out["partial"] is (len(out["items"]) < 5)
        none = world.get(path, k=5, **params, genre="Horror", year_min=2050).json()
        assert none["items"] == [] and none["partial"] is True, path
    bad = world.get("/v1/popular", year_min="soon")
    assert bad.status_code == 400 and "year_min" in bad.json()["description"]
    # the recommendations were searched within the passing ids (one API worker)
    index = world.get("/ready").json()["checks"]["attribute_index"]
    assert index["items"] == N_ITEMS and index["loads"] >= 1 and index["filters_cached"] >= 1


def test_schema_fuzz_of_the_api_finds_no_server_error(world: World) -> None:
    failures, statuses = fuzz_openapi(world.api.url)
    assert failures == []
    assert statuses[200] and statuses[400]


def poll(world: World, user_id: str, done: Any, tries: int = 100) -> dict[str, Any]:
    """Ask until ``done(answer)`` or ``tries`` × 50 ms (a bound, not a timed assertion)."""
    out: dict[str, Any] = {}
    for _ in range(tries):
        out = world.get("/v1/recommendations", user_id=user_id, k=10).json()
        if done(out):
            break
        time.sleep(0.05)
    return out


def test_new_user_vector_written_to_mongo_shows_up_in_recommendations(world: World) -> None:
    store = UserStore(mongo_client(world.settings)[world.settings.mongo_db])
    doc = world.users["user7"]
    before = world.get("/v1/recommendations", user_id="user7", k=10).json()
    assert before["model_version"] == "model-1"  # now cached in the API worker
    new = UserDoc("user7", [-x for x in doc.vector], "model-2",
                  recent=doc.recent + as_clicks(["it0"]))
    store.upsert_many([new])
    out = poll(world, "user7", lambda o: o["model_version"] == "model-2")
    assert out["model_version"] == "model-2" and out["source"] == "personalized"
    ids = [i["id"] for i in out["items"]]
    assert ids != [i["id"] for i in before["items"]] and "it0" not in ids
    ready = world.get("/ready").json()["checks"]["user_cache"]
    assert ready["stream_live"] is True and ready["events"] >= 1


def test_unknown_user_becomes_personalised_once_the_worker_writes_it(world: World) -> None:
    first = world.get("/v1/recommendations", user_id="newcomer", k=5).json()
    assert first["fallback_reason"] == "unknown_user"  # cached as unknown
    store = UserStore(mongo_client(world.settings)[world.settings.mongo_db])
    store.upsert_many([UserDoc("newcomer", list(world.users["user1"].vector), "model-1")])
    out = poll(world, "newcomer", lambda o: o["source"] == "personalized")
    assert out["source"] == "personalized" and out["fallback_reason"] is None


def test_mongo_stopped_gives_popular_200s_and_ready_says_so(
        world: World, tmp_path: Path) -> None:
    from secantus import SecantusDBServer

    server = SecantusDBServer(port=0, storage_path=":memory:")
    server.start()
    aport = free_port()
    settings = Settings.from_env(**{**{f: getattr(world.settings, f) for f in (
        "redis_url", "redis_prefix", "statsd_prefix", "local_dir", "faiss_url",
        "faiss_api_key")}, "mongo_uri": server.uri, "mongo_db": "private", "api_port": aport})
    mc = mongo_client(settings)
    UserStore(mc[settings.mongo_db]).upsert_many([world.users["user1"], world.users["user2"]])
    mc.close()
    api = ServiceProcess(["api", "--workers", "1", "--user-cache-preload", "0"], aport,
                         settings, log_path=tmp_path / "api.log").start()
    try:
        def get(user: str) -> requests.Response:
            return requests.get(api.url + "/v1/recommendations",
                                params={"user_id": user, "k": 5}, timeout=10)

        assert get("user1").json()["source"] == "personalized"
        server.stop()
        outs = [get("user2") for _ in range(3)] + [get("nobody")]
        assert all(r.status_code == 200 for r in outs)
        assert {r.json()["source"] for r in outs} == {"popular"}
        assert {r.json()["fallback_reason"] for r in outs} == {"mongo_unavailable"}
        assert [i["id"] for i in outs[0].json()["items"]] == ["it0", "it4", "it5", "it6", "it7"]
        # user1 was cached before the stop: still answered from memory
        assert get("user1").status_code == 200
        ready = requests.get(api.url + "/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["mongo"]["ok"] is False
    finally:
        api.stop()
        server.stop()


def test_faiss_down_gives_popular_200s_and_recovers_when_it_returns(world: World) -> None:
    world.faiss.stop()
    outs = [world.get("/v1/recommendations", user_id=f"user{u}", k=5) for u in range(10)]
    assert all(r.status_code == 200 for r in outs)
    assert {r.json()["source"] for r in outs} == {"popular"}
    assert {r.json()["fallback_reason"] for r in outs} == {"faiss_unavailable"}
    ready = world.get("/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["faiss"]["ok"] is False

    world.faiss.start()  # same data dir: reloads the saved version "v1"
    source = None
    for _ in range(50):  # the breaker lets a probe through after its cooldown (0.5 s)
        out = world.get("/v1/recommendations", user_id="user1", k=5).json()
        source = out["source"]
        if source == "personalized":
            break
        time.sleep(0.1)
    assert source == "personalized" and out["index_version"] == "v1"
    assert world.get("/ready").status_code == 200


@pytest.mark.integration
def test_the_api_change_stream_leaves_out_the_workers_bookkeeping(mongo_db: Any) -> None:
    """The local MongoDB applies the follower's projection: a written user document
    arrives with what serving reads and without the event ids and the watermark."""
    import threading

    from recommender_server.caches import STREAM_PIPELINE

    col = mongo_db["users_stream_probe"]
    col.insert_one({"_id": "warm-up"})
    events: list[dict[str, Any]] = []

    def watch() -> None:
        with col.watch(STREAM_PIPELINE, full_document="updateLookup",
                       max_await_time_ms=200) as stream:
            deadline = time.monotonic() + 10
            while not events and time.monotonic() < deadline:
                event = stream.try_next()
                if event is not None:
                    events.append(event)

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.5)  # the stream is open before the write
    doc = UserDoc("probe", [0.5, 1.0], "m", recent=as_clicks(["a"]), n_events=1,
                  watermark={"p": 0, "o": 3, "e": 0}, event_ids=[["e1", "d1"]])
    UserStore(mongo_db, "users_stream_probe").upsert_many([doc])
    watcher.join()
    assert events, "no change event within 10 s"
    full = events[0]["fullDocument"]
    assert "event_ids" not in full and "watermark" not in full
    assert UserDoc.from_mongo(full).recent == doc.recent and full["vector"] == [0.5, 1.0]
