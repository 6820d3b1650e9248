"""The worker's pipelines in-process, on in-memory stores and on the real ones.

No broker and no worker process: batches of :class:`RawMessage` go straight into
:class:`InteractionPipeline` / :class:`ItemPipeline`, so each rule (event-time order of
item events, ghost items, duplicates, offset regressions) is checked in a second. Every
test runs twice: on in-memory stores (``fakeredis`` with its Lua engine, so the
project's Redis scripts really run, and a dict standing in for the users collection)
as a unit test, and on the real MongoDB and Redis as an integration test. The FAISS
client is an in-memory stand-in recording the index.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import statsd

from common.events import interaction_json, item_json
from common.settings import Settings
from common.stores import ItemCache, UserDoc, UserStore
from models.gmf import GMF
from streams.messages import RawMessage
from streams.pipeline import InteractionPipeline, ItemPipeline, ModelHolder, process_reliably

TS = 1_700_000_000_000


class _Users:
    """In-memory stand-in for :class:`UserStore` (same two calls, same documents)."""

    def __init__(self) -> None:
        self.docs: dict[str, UserDoc] = {}

    def get_many(self, user_ids: Any) -> dict[str, UserDoc]:
        return {u: copy.deepcopy(self.docs[u]) for u in user_ids if u in self.docs}

    def upsert_many(self, docs: Any, timeout_s: float | None = None) -> int:
        self.docs.update({d.user_id: copy.deepcopy(d) for d in docs})  # stored, not shared
        return len(docs)

    def landed(self, docs: Any, timeout_s: float | None = None) -> set[str]:
        return {d.user_id for d in docs if d.user_id in self.docs
                and (self.docs[d.user_id].watermark, self.docs[d.user_id].n_events)
                == (d.watermark, d.n_events)}

    def find_one(self, query: dict[str, str]) -> dict[str, Any] | None:
        doc = self.docs.get(query["_id"])
        return None if doc is None else {"_id": doc.user_id, **doc.to_mongo()}

    def find(self) -> list[dict[str, Any]]:
        return [{"_id": d.user_id, **d.to_mongo()} for d in self.docs.values()]


class _Index:
    """Stand-in for the FAISS client: which ids are indexed."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def upsert(self, item_id: str, vector: np.ndarray) -> None:
        self.ids.add(item_id)

    def delete(self, item_id: str) -> None:
        self.ids.discard(item_id)


@pytest.fixture(params=["memory", pytest.param("stack", marks=pytest.mark.integration)])
def world(request: pytest.FixtureRequest, settings: Settings) -> Iterator[dict[str, Any]]:
    users: Any
    if request.param == "memory":
        import fakeredis

        r: Any = fakeredis.FakeRedis(decode_responses=True)
        users = _Users()
        db: Any = {"users": users}
    else:
        r = request.getfixturevalue("redis_client")
        db = request.getfixturevalue("mongo_db")
        db["users"].delete_many({})
        for key in r.scan_iter(match=f"{settings.redis_prefix}*"):
            r.delete(key)
        users = UserStore(db)
    metrics = statsd.StatsClient("127.0.0.1", 9)  # discard port
    holder = ModelHolder(GMF(dim=8, negatives=8, history_size=10))
    cache = ItemCache(r, settings.redis_prefix)
    index = _Index()
    yield {
        "cache": cache, "index": index, "db": db, "holder": holder,
        "items": ItemPipeline(holder, cache, index, metrics, topic="items"),
        "inter": InteractionPipeline(holder, users, cache, metrics,
                                     topic="interactions", dead_letter_topic="dlq"),
    }


def _run(pipeline: Any, msgs: list[RawMessage]) -> Any:
    """Process a batch, then wait for its durable writes (they run behind the pipeline)."""
    async def run() -> Any:
        result = await process_reliably(pipeline, msgs, max_backoff_s=0.01)
        if isinstance(pipeline, InteractionPipeline):
            await pipeline.durable(result.durable_seq)
        return result
    return asyncio.run(run())


def _item(item_id: str, op: str, ts: int, offset: int, title: str = "t") -> RawMessage:
    return RawMessage(item_json(item_id, op, {"title": title}, ts), item_id.encode(), 0,
                      offset, 0.0)


def _click(user: str, item: str, ts: int, offset: int, partition: int = 0,
           **extra: Any) -> RawMessage:
    return RawMessage(interaction_json(user, item, "click", ts, **extra), user.encode(),
                      partition, offset, 0.0)


def test_a_late_delete_does_not_remove_a_newer_upsert(world: dict[str, Any]) -> None:
    _run(world["items"], [_item("a", "upsert", TS + 10, 0, "new")])
    result = _run(world["items"], [_item("a", "delete", TS + 5, 1)])  # older, arrives later
    assert result.stale == 1
    assert "a" not in world["cache"].unavailable() and "a" in world["index"].ids


def test_a_late_upsert_does_not_revive_a_newer_delete(world: dict[str, Any]) -> None:
    _run(world["items"], [_item("b", "upsert", TS, 0, "first")])
    _run(world["items"], [_item("b", "delete", TS + 10, 1)])
    _run(world["items"], [_item("b", "upsert", TS + 5, 2, "stale")])
    assert "b" in world["cache"].unavailable() and "b" not in world["index"].ids
    assert world["cache"].get_items(["b"])["b"]["title"] == "first"


def test_within_a_batch_event_time_decides_and_ties_go_to_the_later_offset(
        world: dict[str, Any]) -> None:
    _run(world["items"], [_item("c", "delete", TS + 10, 0), _item("c", "upsert", TS + 1, 1),
                          _item("d", "upsert", TS, 2, "one"), _item("d", "upsert", TS, 3, "two")])
    assert "c" in world["cache"].unavailable()
    assert world["cache"].get_items(["d"])["d"]["title"] == "two"


def test_ghost_items_are_learned_but_never_served_until_upserted(
        world: dict[str, Any]) -> None:
    _run(world["items"], [_item("real", "upsert", TS, 0)])
    ghost = "../../etc/passwd"
    _run(world["inter"], [_click("u1", ghost, TS, 0), _click("u1", "real", TS, 1),
                          _click("u2", ghost, TS, 2)])
    cache = world["cache"]
    assert [i for i, _ in cache.popular(10)] == ["real"]
    assert ghost in world["holder"].model.item_ids  # learned from
    assert cache.known_among([ghost, "real"]) == {"real"}  # the export keeps only these
    # Once upserted, its clicks so far count in the served list.
    _run(world["items"], [_item(ghost, "upsert", TS, 1)])
    top = dict(cache.popular(10))
    assert top[ghost] > top["real"]


def test_conflicting_duplicates_are_dead_lettered_and_duplicates_skipped(
        world: dict[str, Any]) -> None:
    first = _click("u3", "i1", TS, 0, event_id="e-1")
    _run(world["inter"], [first])
    same = _click("u3", "i1", TS, 1, event_id="e-1")
    other = _click("u3", "i2", TS, 2, event_id="e-1")
    result = _run(world["inter"], [same, other])
    assert result.skipped_duplicates == 1 and result.applied == 0
    assert [d.message.offset for d in result.dead_letters] == [2]
    assert "conflicting duplicate" in result.dead_letters[0].reason
    assert world["db"]["users"].find_one({"_id": "u3"})["n_events"] == 1


def test_offsets_from_a_replaced_log_are_applied_and_redeliveries_skipped(
        world: dict[str, Any]) -> None:
    inter = world["inter"]
    first = [_click(f"u{j % 3}", f"i{j}", TS + j, j) for j in range(9)]
    _run(inter, first)
    _run(inter, first[4:])  # a redelivery after a crash: all skipped
    n = {d["_id"]: d["n_events"] for d in world["db"]["users"].find()}
    assert sum(n.values()) == 9

    log: dict[int, RawMessage] = {}  # the re-created topic: offsets from 0 again

    async def lookup(partition: int, offset: int) -> str | None:
        return log[offset].fingerprint() if offset in log else None

    inter.forget([])  # as after a restart: anchors reloaded from Redis
    inter.epochs.lookup = lookup
    second = [_click(f"u{j % 3}", f"new{j}", TS + 100 + j, j) for j in range(3)]
    log.update({m.offset: m for m in second})
    result = _run(inter, second)
    assert result.applied == 3 and result.skipped_duplicates == 0
    assert sum(d["n_events"] for d in world["db"]["users"].find()) == 12
    assert inter.epochs.epoch(0) == 1
    pending = world['cache'].keys.popular_pending  # no catalogue: counts wait there
    assert all(world["cache"].r.zscore(pending, f"new{j}") for j in range(3))


def test_the_model_has_one_writer_at_a_time(world: dict[str, Any]) -> None:
    """Concurrent ``ModelHolder.run`` calls (agents, timers) never overlap."""
    import threading
    import time as _time

    holder = world["holder"]
    inside = threading.Semaphore(1)
    overlaps: list[int] = []

    def work(model: Any, n: int) -> int:
        if not inside.acquire(blocking=False):
            overlaps.append(n)
            return n
        _time.sleep(0.01)
        inside.release()
        return n

    async def many() -> list[int]:
        return list(await asyncio.gather(*(holder.run(work, n) for n in range(8))))

    assert asyncio.run(many()) == list(range(8)) and overlaps == []


def test_users_get_history_counts_vector_and_watermark(world: dict[str, Any]) -> None:
    msgs = [_click("u9", f"i{j % 3}", TS + j, j, partition=2) for j in range(5)]
    result = _run(world["inter"], msgs + [RawMessage(b"{not json", b"k", 2, 5, 0.0)])
    assert result.applied == 5 and len(result.dead_letters) == 1
    doc = world["db"]["users"].find_one({"_id": "u9"})
    # the one history: every event, newest last; the filter's items derive from it
    assert doc["recent"] == {"items": [f"i{j % 3}" for j in range(5)], "events": ["click"] * 5}
    assert UserDoc.from_mongo(doc).history == ["i2", "i0", "i1"]  # once each, newest last
    assert doc["n_events"] == 5 and doc["watermark"] == {"p": 2, "o": 4, "e": 0}
    assert len(doc["vector"]) == 8 and all(np.isfinite(doc["vector"]))


# --- hot state before the durable write ------------------------------------------------------
class _HeldWrites:
    """A user-document writer that holds every write until released (a stalled MongoDB)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.release = asyncio.Event()

    async def write(self, docs: Any) -> None:
        await self.release.wait()
        self.store.upsert_many(docs)


class _Hits:
    """FAISS stand-in: the same candidates for every query, the clicked item first."""

    async def search(self, vector: Any, k: int, exclude: Any = (), boost: Any = None,
                     only: Any = ()) -> Any:
        from faiss_server.protocol import SearchResult

        hits = [(i, 1.0 - n / 100) for n, i in enumerate(["clicked", "x1", "x2", "x3"])]
        return SearchResult("idx", [[h for h in hits if h[0] not in exclude
                                     and (not only or h[0] in only)]])

    async def health(self) -> dict[str, Any]:
        return {}


class _NoDocs:
    """The API's user lookup while MongoDB holds nothing for the user yet."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def get(self, user_id: str) -> UserDoc | None:
        return self.store.get_many([user_id]).get(user_id)


@pytest.mark.parametrize("where", ["memory", pytest.param("stack",
                                                          marks=pytest.mark.integration)])
def test_a_click_is_served_from_the_hot_state_before_its_document_is_written(
        where: str, request: pytest.FixtureRequest, settings: Settings) -> None:
    from common.stores import RedisKeys
    from recommender_server.caches import Catalog
    from recommender_server.config import ApiConfig
    from recommender_server.deps import Dependencies
    from recommender_server.hot_users import HotUserReader
    from recommender_server.recommend import RecommendationService
    from streams.durable_users import DurableUsers

    users: Any
    if where == "memory":
        import fakeredis

        server = fakeredis.FakeServer()
        r: Any = fakeredis.FakeRedis(server=server, decode_responses=True)
        ar: Any = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
        users = _Users()
    else:
        import redis.asyncio

        r = request.getfixturevalue("redis_client")
        ar = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True)
        users = UserStore(request.getfixturevalue("mongo_db"))
    metrics = statsd.StatsClient("127.0.0.1", 9)
    held = _HeldWrites(users)
    cache = ItemCache(r, settings.redis_prefix)
    pipeline = InteractionPipeline(
        ModelHolder(GMF(dim=8, negatives=8, history_size=10)), users, cache, metrics,
        topic="interactions", dead_letter_topic="dlq",
        durable_users=DurableUsers(held, metrics, max_dirty=100, max_lag_s=60.0))
    keys = RedisKeys(settings.redis_prefix)
    api = RecommendationService(
        ApiConfig.from_env(settings, faiss_batch_inflight=0),
        Dependencies(users=_NoDocs(users), catalog=Catalog(ar, keys), faiss=_Hits(),
                     hot=HotUserReader(ar, keys)))

    async def run() -> None:
        result = await process_reliably(pipeline, [_click("hot-u", "clicked", TS, 0)])
        durable = pipeline.durable(result.durable_seq)
        await asyncio.sleep(0)
        assert not durable.done() and users.get_many(["hot-u"]) == {}  # MongoDB: nothing
        out = await api.recommend("hot-u", 3)
        assert out["source"] == "personalized" and out["fallback_reason"] is None
        assert [i["id"] for i in out["items"]] == ["x1", "x2", "x3"]  # the click filters
        held.release.set()
        await durable
        doc = users.get_many(["hot-u"])["hot-u"]
        assert (doc.n_events, doc.history) == (1, ["clicked"])
        await ar.aclose()

    asyncio.run(run())


def test_a_session_model_hands_serving_both_queries_and_the_stream_clock(
        world: dict[str, Any]) -> None:
    """With a session-aware model the hot record and the document carry the query at the
    last event and the long-term one, and the stream clock is written with them: the
    API's blend of the two (``common.session_query``) is the model's own query now."""
    from common.hot_users import HotUsers
    from common.session_query import query_at
    from models.two_tower import SessionTwoTower

    db = world["db"]
    users = db["users"] if isinstance(db, dict) else UserStore(db)
    model = SessionTwoTower(dim=8, negatives=8, n_buckets=16, history_size=10)
    pipeline = InteractionPipeline(ModelHolder(model), users, world["cache"],
                                   statsd.StatsClient("127.0.0.1", 9),
                                   topic="interactions", dead_letter_topic="dlq")
    _run(pipeline, [_click("s1", f"i{j}", TS + 1000 * j, j) for j in range(3)])
    hot = HotUsers(world["cache"].r, world["cache"].keys, 60.0)
    doc, clock = hot.get_many(["s1"])["s1"], hot.clock()
    assert clock is not None and clock.event_ms == TS + 2000
    assert clock.half_life_s == model.session_half_life_s > 0
    assert len(doc.vector) == len(doc.long_vector) == model.vector_dim
    assert doc.vector != doc.long_vector and doc.last_event_ms == TS + 2000
    served = query_at(doc.long_vector, doc.vector, doc.last_event_ms, clock.event_ms,
                      clock.half_life_s)
    np.testing.assert_allclose(served, model.user_vectors(["s1"])[0], atol=1e-5)
    stored = users.get_many(["s1"])["s1"]
    np.testing.assert_allclose(stored.long_vector, doc.long_vector, atol=1e-6)


def test_a_hybrid_models_sparse_part_is_served_from_what_the_pipeline_publishes(
        world: dict[str, Any]) -> None:
    """A hybrid model's stream clock carries its ``SparseQuery``; with the co-occurrence
    lists stored as the worker stores them, the API's formula over the user's hot record
    (``common.session_query.sparse_query``) is the model's own sparse part."""
    from common.hot_users import HotUsers
    from common.session_query import sparse_query, sparse_sources
    from models.hybrid import SessionCooc

    model = SessionCooc(dim=8, negatives=8, n_buckets=16, history_size=10,
                        cooc_neighbours=20, cooc_window=4)
    pipeline = _pipeline_over(world, model)
    clicks = [_click(u, f"i{(j * 3 + k) % 7}", TS + 1000 * j, j)
              for j in range(6) for k, u in enumerate(["s1", "s2", "s3"])]
    _run(pipeline, clicks)
    world["cache"].put_similar(model.changed_similar(model.cooc_neighbours))
    hot = HotUsers(world["cache"].r, world["cache"].keys, 60.0)
    doc, clock = hot.get_many(["s1"])["s1"], hot.clock()
    assert clock is not None and clock.sparse is not None
    assert clock.sparse.weight == model.cooc_weight and clock.sparse.window == 4
    lists = {h: world["cache"].similar(h) for h in sparse_sources(doc.recent, clock.sparse)}
    served = sparse_query(doc.recent, lists, clock.sparse, 1.0)  # asked at the last event
    with model.asked_at({"s1": doc.last_event_ms}):
        ids, values = model.user_sparse_vectors(["s1"])[0]
    assert ids and set(served) == set(ids)
    np.testing.assert_allclose([served[i] for i in ids], values, rtol=1e-5)


# --- one history per user: the document owns it, the model's ring follows ---------------
def _pipeline_over(world: dict[str, Any], model: Any) -> InteractionPipeline:
    db = world["db"]
    users = db["users"] if isinstance(db, dict) else UserStore(db)
    return InteractionPipeline(ModelHolder(model), users, world["cache"],
                               statsd.StatsClient("127.0.0.1", 9),
                               topic="interactions", dead_letter_topic="dlq")


def _stored(world: dict[str, Any], user: str) -> UserDoc:
    db = world["db"]
    users = db["users"] if isinstance(db, dict) else UserStore(db)
    return users.get_many([user])[user]


def test_a_worker_restored_from_an_older_checkpoint_learns_from_the_stored_history(
        world: dict[str, Any], tmp_path: Any) -> None:
    """The checkpoint's ring misses events applied after it; the document has them. The
    next batch first reloads the ring from the document, so the model's context is the
    user's whole recent history, as stored."""
    from models.checkpoint import load_checkpoint, save_checkpoint
    from models.two_tower import SessionTwoTower

    model = SessionTwoTower(dim=8, negatives=8, n_buckets=16, history_size=10)
    first = _pipeline_over(world, model)
    _run(first, [_click("r1", f"i{j}", TS + j, j) for j in range(2)])
    save_checkpoint(model, tmp_path)  # the checkpoint: 2 events
    _run(first, [_click("r1", f"i{j}", TS + j, j) for j in range(2, 5)])
    restored = load_checkpoint(tmp_path)
    assert restored.recent_history("r1") == ["i0", "i1"]  # behind the document
    result = _run(_pipeline_over(world, restored), [_click("r1", "i5", TS + 5, 5)])
    assert result.applied == 1 and result.history_reloads == 1
    doc = _stored(world, "r1")
    assert doc.recent == [(f"i{j}", "click") for j in range(6)]
    assert restored.recent_history("r1") == [f"i{j}" for j in range(6)]
    assert restored.history.version[restored.user_ids.lookup(["r1"])[0]] == doc.n_events == 6


def test_a_replay_after_a_lost_document_write_does_not_append_twice(
        world: dict[str, Any]) -> None:
    """The model applied events whose document write was lost (a crash before MongoDB):
    Kafka redelivers them, the document applies them once, and the ring, reloaded from
    the document first, holds each of them once too (it used to hold them twice)."""
    from models.two_tower import SessionTwoTower

    model = SessionTwoTower(dim=8, negatives=8, n_buckets=16, history_size=10)
    pipeline = _pipeline_over(world, model)
    _run(pipeline, [_click("r2", "a", TS, 0)])
    before = _stored(world, "r2")
    _run(pipeline, [_click("r2", "b", TS + 1, 1), _click("r2", "c", TS + 2, 2)])
    db = world["db"]
    users = db["users"] if isinstance(db, dict) else UserStore(db)
    users.upsert_many([before])  # the later write never landed
    replay = _pipeline_over(world, model)  # the same model: its ring is ahead
    result = _run(replay, [_click("r2", "b", TS + 1, 1), _click("r2", "c", TS + 2, 2)])
    assert result.applied == 2 and result.history_reloads == 1
    assert model.recent_history("r2") == ["a", "b", "c"]
    assert [i for i, _ in _stored(world, "r2").recent] == ["a", "b", "c"]


def test_rings_in_step_with_their_documents_are_not_reloaded(world: dict[str, Any]) -> None:
    """The live path: a ring that reflects its document's version is left alone (one
    comparison per user per batch), and a new user's ring is tied at once."""
    from models.two_tower import SessionTwoTower

    model = SessionTwoTower(dim=8, negatives=8, n_buckets=16, history_size=3)
    pipeline = _pipeline_over(world, model)
    first = _run(pipeline, [_click("r3", f"i{j}", TS + j, j) for j in range(4)])
    again = _run(pipeline, [_click("r3", "i4", TS + 4, 4, event_id="x")])
    assert (first.history_reloads, again.history_reloads) == (1, 0)  # new user: tied once
    assert model.recent_history("r3") == ["i2", "i3", "i4"]  # the ring's 3 of the 5 stored
    assert [i for i, _ in _stored(world, "r3").recent] == [f"i{j}" for j in range(5)]


def test_user_states_are_bounded_and_an_evicted_user_is_reloaded(world: dict[str, Any]) -> None:
    """With room for two users, the least recently touched is dropped after a batch; its
    next event reloads it (pending copy or MongoDB): counts continue, a redelivered event
    is still skipped, and the model's ring stays in step with the stored history."""
    db = world["db"]
    users = db["users"] if isinstance(db, dict) else UserStore(db)
    pipeline = InteractionPipeline(world["holder"], users, world["cache"],
                                   statsd.StatsClient("127.0.0.1", 9), topic="interactions",
                                   dead_letter_topic="dlq", max_cached_users=2)
    _run(pipeline, [_click("ev-a", "i1", TS, 0), _click("ev-b", "i2", TS + 1, 1)])
    _run(pipeline, [_click("ev-c", "i3", TS + 2, 2)])
    assert list(pipeline.states) == ["ev-b", "ev-c"]  # ev-a, least recently touched, gone
    result = _run(pipeline, [_click("ev-a", "i1", TS, 0),  # redelivered: skipped
                             _click("ev-a", "i4", TS + 3, 3)])
    assert (result.applied, result.skipped_duplicates, result.history_reloads) == (1, 1, 0)
    doc = _stored(world, "ev-a")
    assert doc.n_events == 2 and [i for i, _ in doc.recent] == ["i1", "i4"]
    assert world["holder"].model.recent_history("ev-a") == ["i1", "i4"]
    assert len(pipeline.states) == 2 and "ev-a" in pipeline.states
