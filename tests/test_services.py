"""Round trips through the real broker, MongoDB-compatible server and Redis."""

import asyncio

import numpy as np
import pymongo
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from common.kafka import CONSUMER_GROUP_OPTIONS, ensure_topics
from common.settings import Settings
from common.stores import ItemCache, UserDoc, UserStore, as_clicks

pytestmark = pytest.mark.integration


async def _produce(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for v in values:
            await producer.send(topic, v, partition=0)
        await producer.flush()
    finally:
        await producer.stop()


async def _consume(settings: Settings, topic: str, group: str, n: int) -> tuple[list[bytes], int]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                                group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", **CONSUMER_GROUP_OPTIONS)
    await consumer.start()
    got: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(got) < n:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(r.value for r in records)
        await consumer.commit()
        committed = await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()
    return got, committed


def test_kafka_group_resumes_from_committed_offsets(stack: Settings, run_id: str) -> None:
    topic = f"test-{run_id}-roundtrip"
    group = f"test-{run_id}-group"

    async def scenario() -> None:
        await ensure_topics(stack, [topic], partitions=1)
        assert await ensure_topics(stack, [topic], partitions=1) == []  # idempotent
        first = [f"a{i}".encode() for i in range(100)]
        await _produce(stack, topic, first)
        got, committed = await _consume(stack, topic, group, 100)
        assert got == first
        assert committed == 100
        second = [f"b{i}".encode() for i in range(10)]
        await _produce(stack, topic, second)
        got, committed = await _consume(stack, topic, group, 10)
        assert got == second  # resumed after the commit: nothing re-read, nothing lost
        assert committed == 110

    asyncio.run(scenario())


def test_mongo_upsert_find_and_unique_index(mongo_db) -> None:
    col = mongo_db["things"]
    col.create_index("sku", unique=True)
    col.update_one({"_id": "a"}, {"$set": {"sku": "X1", "n": 1}}, upsert=True)
    col.update_one({"_id": "a"}, {"$set": {"n": 2}}, upsert=True)
    assert col.find_one({"_id": "a"}) == {"_id": "a", "sku": "X1", "n": 2}
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        col.insert_one({"_id": "b", "sku": "X1"})
    assert col.count_documents({}) == 1


def test_user_store_bulk_round_trip(mongo_db) -> None:
    store = UserStore(mongo_db)
    docs = [UserDoc(f"u{i}", [0.5, float(i)], "v1", recent=as_clicks([f"i{i}"]), n_events=i)
            for i in range(50)]
    assert store.upsert_many(docs) == 50
    got = store.get("u7")
    assert got is not None and got.vector == [0.5, 7.0] and got.history == ["i7"]
    assert store.get("nobody") is None
    assert set(store.get_many(["u1", "u2", "zz"])) == {"u1", "u2"}


def test_user_store_writes_worker_rows_as_lists(mongo_db) -> None:
    """The worker's documents carry the model's float32 rows; MongoDB gets lists of the
    same values, and readers get lists back."""
    store = UserStore(mongo_db)
    row = np.array([0.1, -2.5, 3.0], dtype=np.float32)
    store.upsert_many([UserDoc("w1", row, "v1", long_vector=row * 2)])
    got = store.get("w1")
    assert got is not None and isinstance(got.vector, list)
    assert got.vector == row.tolist() and got.long_vector == (row * 2).tolist()


def test_redis_item_cache_round_trip(redis_client, stack: Settings) -> None:
    cache = ItemCache(redis_client, stack.redis_prefix)
    cache.put_items({"i1": {"title": "One"}, "i2": {"title": "Two"}})
    assert cache.get_items(["i1", "i2", "nope"]) == {"i1": {"title": "One"},
                                                     "i2": {"title": "Two"}}
    cache.mark_unavailable(["i2"])
    assert cache.unavailable_among(["i1", "i2"]) == {"i2"}
    cache.put_items({"i2": {"title": "Two again"}})
    assert cache.unavailable_among(["i1", "i2"]) == set()
    cache.set_popular({"i1": 5.0, "i2": 9.0, "i3": 1.0}, meta={"half_life_s": 60})
    assert cache.popular(2) == [("i2", 9.0), ("i1", 5.0)]
    assert cache.popular_meta() == {"half_life_s": 60}


def test_api_catalog_reads_exactly_what_the_item_cache_writes(redis_client,
                                                              stack: Settings) -> None:
    """Writer (``ItemCache``, worker side) and reader (``Catalog``, API side) share one
    key layout (``RedisKeys``): what one writes, the other finds, and every key written
    is one of the layout's."""
    import redis.asyncio

    from common.stores import RedisKeys
    from recommender_server.caches import Catalog

    keys = RedisKeys(stack.redis_prefix)
    cache = ItemCache(redis_client, stack.redis_prefix)
    cache.put_items({"i1": {"title": "One"}, "i2": {"title": "Two"}}, versions={"i1": 5})
    cache.add_popularity({"i1": 1.0, "ghost": 2.0}, {0: "anchor"}, {"ref_ms": 1})
    cache.set_popular({"i1": 5.0, "i2": 9.0}, meta={"half_life_s": 60})
    cache.mark_unavailable(["i2"])
    written = {k for k in redis_client.scan_iter(match=f"{stack.redis_prefix}*")}
    assert written == {keys.item("i1"), keys.item("i2"), keys.unavailable, keys.known,
                       keys.versions, keys.popular, keys.popular_pending,
                       keys.popular_offsets, keys.popular_meta}

    async def read() -> tuple[Catalog, dict]:
        r = redis.asyncio.Redis.from_url(stack.redis_url, decode_responses=True)
        try:
            cat = Catalog(r, keys, refresh_s=0.0)
            await cat.fresh()
            return cat, await cat.metadata(["i1", "nope"])
        finally:
            await r.aclose()

    cat, meta = asyncio.run(read())
    assert cat.popular == [("i2", 9.0), ("i1", 5.0)]
    assert cat.unavailable == {"i2"}
    assert meta == {"i1": {"title": "One"}, "nope": None}
