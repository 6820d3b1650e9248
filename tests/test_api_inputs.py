"""Issue 16: the recommender API's input rules, fallback reasons and breakers, through
``falcon.testing`` with the fakes of ``tests/test_api_app.py``."""

from __future__ import annotations

import pymongo.errors
import pytest

from common.ids import path_segment
from recommender_server.caches import UserCache
from recommender_server.deps import Breaker
from tests.test_api_app import FakeCollection, FakeFaiss, fakes, make_client, rec

__all__ = ["fakes"]  # the fixture, shared


class RecordingFaiss(FakeFaiss):
    """Remembers the item ids ``similar`` was asked for; knows only ``known``."""

    def __init__(self, known: set[str]) -> None:
        super().__init__()
        self.known, self.asked = known, []  # type: list[str]

    async def similar(self, item_id, k, exclude=()):  # type: ignore[no-untyped-def]
        self.asked.append(item_id)
        from common.errors import UnknownItem

        if item_id not in self.known:
            raise UnknownItem(item_id)
        return await super().similar(item_id, k, exclude)


def test_unknown_item_is_a_popular_answer_saying_unknown_item_and_faiss_stays_up(
        fakes) -> None:
    users, r, _ = fakes
    faiss = RecordingFaiss({"known"})
    client = make_client((users, r, faiss), breaker_cooldown_s=30.0)
    out = client.simulate_get("/v1/items/nope/similar", params={"k": 3})
    assert out.status_code == 200, out.text
    assert out.json["source"] == "popular" and out.json["fallback_reason"] == "unknown_item"
    assert "nope" not in {i["id"] for i in out.json["items"]} and len(out.json["items"]) == 3
    # FAISS answered, so nothing counts it as down: the next calls reach it.
    assert client.simulate_get("/v1/items/known/similar").json["source"] == "similar"
    assert rec(client)["source"] == "personalized"


@pytest.mark.parametrize("item_id", ["a/b", "x/similar", "50%", "q?x=1#f", "..", "café"])
def test_any_item_id_reaches_faiss_intact(fakes, item_id: str) -> None:
    users, r, _ = fakes
    faiss = RecordingFaiss({item_id})
    client = make_client((users, r, faiss))
    out = client.simulate_get(f"/v1/items/{path_segment(item_id)}/similar")
    assert out.status_code == 200, out.text
    assert out.json["item_id"] == item_id and out.json["source"] == "similar"
    assert faiss.asked == [item_id]


@pytest.mark.parametrize("query", ["user_id=u1&k=%092", "user_id=u1&k=%20%2010",
                                   "user_id=u1&k=1_0", "user_id=u1&k=%D9%A3",
                                   "user_id=u1&k=5&k=6", "user_id=u1&k=+5"])
def test_k_is_plain_digits_only(fakes, query: str) -> None:
    r = make_client(fakes).simulate_get("/v1/recommendations", query_string=query)
    assert r.status_code == 400 and r.json["title"] and r.json["description"]


def test_bodies_beyond_the_limit_are_413_json(fakes) -> None:
    client = make_client(fakes, max_body_bytes=1000)
    r = client.simulate_get("/v1/recommendations", params={"user_id": "u1"}, body=b"x" * 1001)
    assert r.status_code == 413 and r.json["title"] and r.json["description"]
    ok = client.simulate_get("/v1/recommendations", params={"user_id": "u1"}, body=b"x" * 10)
    assert ok.status_code == 200


def test_unknown_routes_are_json_errors_with_a_description(fakes) -> None:
    r = make_client(fakes).simulate_get("/v1/nothing")
    assert r.status_code == 404 and r.json["title"] and r.json["description"]


def test_half_open_breaker_lets_one_probe_through() -> None:
    now = [0.0]
    b = Breaker(0.5, clock=lambda: now[0])
    b.failed()
    assert not b.allow()
    now[0] = 0.6
    assert b.allow()  # the probe
    assert not b.allow() and not b.allow()  # everyone else keeps falling back
    b.succeeded()
    assert b.allow() and b.allow()
    b.failed()
    now[0] = 1.2
    assert b.allow()
    b.failed()  # the probe failed: open again for the cooldown
    assert not b.allow()
    now[0] = 1.8
    assert b.allow()
    now[0] = 2.4  # a probe that never reported: the next request probes
    assert b.allow()


def test_open_mongo_breaker_still_serves_users_the_cache_holds(fakes) -> None:
    _, r, faiss = fakes
    col = FakeCollection({"u1": {"vector": [1.0, 0.0], "model_version": "m7",
                                 "history": ["a"]}})
    users = UserCache(col, ttl_s=0.0001)
    client = make_client((users, r, faiss), breaker_cooldown_s=30.0)
    assert rec(client)["source"] == "personalized"  # read once, now in the cache
    col.fail = pymongo.errors.NetworkTimeout("stalled")
    out = rec(client)  # trust expired: the read fails, the last copy answers
    assert out["source"] == "personalized" and out["degraded"] == ["mongo"]
    assert rec(client)["source"] == "personalized"  # breaker open: the cache answers
    assert rec(client, user="u2")["fallback_reason"] == "mongo_unavailable"
    reads = col.reads
    rec(client)
    assert col.reads == reads  # the open breaker keeps requests off MongoDB



def test_background_probe_closes_the_breaker_without_any_request_waiting() -> None:
    import asyncio

    async def run() -> list[bool]:
        up = asyncio.Event()
        calls = []

        async def ping() -> None:
            calls.append(1)
            if not up.is_set():
                raise ConnectionError("still stalled")

        b = Breaker(0.01, probe=ping, probe_interval_s=0.01)
        b.failed()
        seen = []
        await asyncio.sleep(0.02)
        seen.append(b.allow())  # cooldown over: starts the probe, the request falls back
        await asyncio.sleep(0.05)
        seen.append(b.allow())  # probe failed: still open (maybe probing again)
        up.set()
        for _ in range(50):
            await asyncio.sleep(0.01)
            b.allow()
            if b.open_until == 0.0:
                break
        seen.append(b.allow())  # a probe succeeded: closed for everyone
        seen.append(len(calls) >= 2)
        return seen

    assert asyncio.run(run()) == [False, False, True, True]


def test_batcher_fails_queued_queries_at_once_when_faiss_is_known_down() -> None:
    """A stall held queued queries behind stalled batches, then sent them to wait out
    another timeout (2 s answers); with the breaker open they now fail at once."""
    import asyncio

    from common.errors import ServiceUnavailable
    from recommender_server.batching import SearchBatcher

    faiss = FakeFaiss()
    down = [False]
    batcher = SearchBatcher(faiss, max_inflight=1, down=lambda: down[0])

    async def run() -> list[object]:
        tasks = [asyncio.ensure_future(batcher.search([1.0], 2)) for _ in range(3)]
        await asyncio.sleep(0)  # the first is in flight, two are queued behind it
        down[0] = True
        return await asyncio.gather(*tasks, return_exceptions=True)

    out = asyncio.run(run())
    assert not isinstance(out[0], Exception)
    assert all(isinstance(o, ServiceUnavailable) for o in out[1:])
    assert len(faiss.searches) == 1
