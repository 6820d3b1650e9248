"""The Faust worker as a real process against the real broker, MongoDB and Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from common.clients import mongo_client, redis_client
from common.hot_users import HotUsers
from common.kafka import ensure_topics
from common.settings import Settings
from common.stores import ItemCache, RedisKeys, UserDoc
from datasets import movielens
from datasets.types import Interactions
from devstack.malformed import malformed_interactions
from devstack.processes import ServiceProcess, WorkerProcess, free_port, wait_for
from devstack.readback import count_until, start_consumer
from devstack.replay import Replayer, interaction_chunks

pytestmark = pytest.mark.integration

HISTORY = 20


@pytest.fixture
def wsettings(stack: Settings, tmp_path: Path) -> Settings:
    """Settings private to one test: topics, consumer group, database, key prefix, models."""
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env(
        kafka_url=stack.kafka_url, mongo_uri=stack.mongo_uri, redis_url=stack.redis_url,
        mongo_db=f"wtest_{tag}", redis_prefix=f"wtest-{tag}:",
        topic_interactions=f"wtest-{tag}-interactions", topic_items=f"wtest-{tag}-items",
        topic_dead_letter=f"wtest-{tag}-dlq", worker_app_id=f"wtest-{tag}",
        model_dir=tmp_path / "models", local_dir=tmp_path,
        faiss_url=f"http://127.0.0.1:{free_port()}",
        worker_history_size=HISTORY, checkpoint_interval_s=2.0, export_interval_s=2.0,
        statsd_port=free_port(),
    )


@pytest.fixture
def cleanup(wsettings: Settings):
    yield
    client = mongo_client(wsettings)
    client.drop_database(wsettings.mongo_db)
    client.close()
    r = redis_client(wsettings)
    keys = list(r.scan_iter(match=f"{wsettings.redis_prefix}*"))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.fixture(scope="module")
def ml_events(settings: Settings) -> Interactions:
    return movielens.load(settings.cache_dir).interactions.sorted_by_time()


def _users(settings: Settings) -> dict[str, dict]:
    client = mongo_client(settings)
    try:
        return {d["_id"]: d for d in client[settings.mongo_db]["users"].find()}
    finally:
        client.close()


def _total_events(settings: Settings) -> int:
    return sum(int(d.get("n_events", 0)) for d in _users(settings).values())


def _replay(settings: Settings, inter: Interactions, rate: float | None = None) -> None:
    asyncio.run(Replayer(settings, rate=rate, progress=False).run(
        [], interaction_chunks(inter, 500), len(inter)))


def _expected_history(inter: Interactions, size: int) -> dict[str, list[str]]:
    """Each user's stored history, computed here: the items of their last ``size``
    events, newest last."""
    hist: dict[str, list[str]] = defaultdict(list)
    for u, i in zip(inter.users.tolist(), inter.items.tolist(), strict=True):
        hist[u].append(i)
        del hist[u][:-size]
    return hist


def _items(doc: dict) -> list[str]:
    """The items of a stored user document's recent events, newest last."""
    return list(doc["recent"]["items"])


def _publish_catalogue(settings: Settings, item_ids: list[str]) -> None:
    """The catalogue as the bootstrap publishes it: only upserted items are served."""
    r = redis_client(settings)
    ItemCache(r, settings.redis_prefix).put_items({i: {"title": i} for i in item_ids})
    r.close()


def test_replay_5000_builds_user_documents_and_popular_list(
        wsettings: Settings, ml_events: Interactions, tmp_path: Path, cleanup) -> None:
    inter = ml_events.take(slice(0, 5_000))
    _publish_catalogue(wsettings, sorted(set(inter.items.tolist())))
    with WorkerProcess(wsettings, tmp_path / "worker.log") as worker:
        _replay(wsettings, inter)
        wait_for(lambda: _total_events(wsettings) >= 5_000, 120, "5,000 events applied")
        docs = _users(wsettings)
        top = Counter(inter.items.tolist()).most_common(1)[0][0]
        r = redis_client(wsettings)
        cache = ItemCache(r, wsettings.redis_prefix)
        wait_for(lambda: bool(cache.similar(top)), 30, "co-occurring items served")
        served = cache.similar(top) or []
        r.close()
        assert "Traceback" not in worker.log_text()

    # Co-occurrence, counted by the stream: every item served as similar to ``top`` was
    # within 10 events of it in some user's history (the model's window), best first.
    near: set[str] = set()
    by_user: dict[str, list[str]] = defaultdict(list)
    for u, i in zip(inter.users.tolist(), inter.items.tolist(), strict=True):
        by_user[u].append(i)
    for seq in by_user.values():
        for j, i in enumerate(seq):
            if i == top:
                near.update(seq[max(0, j - 10): j + 11])
    near.discard(top)
    assert len(served) == wsettings.worker_cooc_served  # a popular item: a full list
    assert {i for i, _ in served} <= near
    assert [s for _, s in served] == sorted((s for _, s in served), reverse=True)

    counts = Counter(inter.users.tolist())
    assert set(docs) == set(counts)
    expected_hist = _expected_history(inter, HISTORY)
    for user, doc in docs.items():
        assert doc["n_events"] == counts[user]
        assert _items(doc) == expected_hist[user]
        assert len(doc["vector"]) > 0 and all(np.isfinite(doc["vector"]))
        assert doc["model_version"]

    # Popularity: decayed counts computed independently here (weight 1 per rating).
    half_life_ms = wsettings.popularity_half_life_s * 1000
    t_end = int(inter.ts_ms.max())
    score: dict[str, float] = defaultdict(float)
    for i, t in zip(inter.items.tolist(), inter.ts_ms.tolist(), strict=True):
        score[i] += 2.0 ** ((t - t_end) / half_life_ms)
    expected_top = sorted(score, key=lambda i: -score[i])[:10]
    r = redis_client(wsettings)
    popular = ItemCache(r, wsettings.redis_prefix).popular(10)
    r.close()
    got_top = [i for i, _ in popular]
    assert got_top[:5] == expected_top[:5]
    assert len(set(got_top) & set(expected_top)) >= 9

    # The hot state the API reads first: every user's, at the document's version.
    r = redis_client(wsettings)
    hot = HotUsers(r, RedisKeys(wsettings.redis_prefix), ttl_s=60).get_many(sorted(docs))
    r.close()
    assert set(hot) == set(docs)
    for user, state in hot.items():
        assert (state.n_events, state.recent) == (
            docs[user]["n_events"], UserDoc.from_mongo(docs[user]).recent)
        assert np.allclose(state.vector, docs[user]["vector"], atol=1e-6)


def test_malformed_events_go_to_dead_letters_and_valid_ones_apply(
        wsettings: Settings, ml_events: Interactions, tmp_path: Path, cleanup) -> None:
    valid = ml_events.take(slice(0, 2_000))
    bad = malformed_interactions(1_000, seed=1, max_bytes=wsettings.max_event_bytes)
    rng = np.random.default_rng(0)
    # Interleave: each malformed event lands at a random position among the valid ones.
    slots = np.sort(rng.integers(0, len(valid), len(bad)))
    stream: list[tuple[bytes, bytes]] = []
    b = 0
    for j, (u, i, r, t) in enumerate(zip(valid.users.tolist(), valid.items.tolist(),
                                         valid.ratings.tolist(), valid.ts_ms.tolist(),
                                         strict=True)):
        while b < len(bad) and slots[b] == j:
            stream.append((f"bad{b}".encode(), bad[b]))
            b += 1
        body = {"user_id": u, "item_id": i, "event": "rating", "value": r, "ts": t}
        stream.append((u.encode(), json.dumps(body).encode()))
    stream.extend((f"bad{k}".encode(), bad[k]) for k in range(b, len(bad)))

    async def produce_and_read_dead_letters() -> list:
        await ensure_topics(wsettings, [wsettings.topic_interactions, wsettings.topic_items,
                                        wsettings.topic_dead_letter])
        dlq = await start_consumer(wsettings, [wsettings.topic_dead_letter], "dlq-reader")
        producer = AIOKafkaProducer(bootstrap_servers=wsettings.kafka_bootstrap,
                                    max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            for key, value in stream:
                await producer.send(wsettings.topic_interactions, value, key=key)
            await producer.flush()
        finally:
            await producer.stop()
        try:
            got = await count_until(dlq, {wsettings.topic_dead_letter: len(bad)},
                                    idle_timeout_s=60, keep_records=True)
        finally:
            await dlq.stop()
        return got.records

    with WorkerProcess(wsettings, tmp_path / "worker.log") as worker:
        records = asyncio.run(produce_and_read_dead_letters())
        wait_for(lambda: _total_events(wsettings) >= len(valid), 120, "valid events applied")
        assert worker.proc is not None and worker.proc.poll() is None  # still alive

    assert len(records) == len(bad)
    # Original bytes preserved (up to the dead-letter payload limit, beyond it a prefix
    # plus the whole original's size and SHA-256).
    limit = wsettings.dead_letter_max_payload_bytes
    assert sorted(r.value for r in records) == sorted(b[:limit] for b in bad)
    for r in records:
        h = dict(r.headers)
        assert h["payload-truncated"] == (b"1" if int(h["payload-bytes"]) > limit else b"0")
    reasons = [dict(r.headers)["reason"].decode() for r in records]
    assert all(reasons)
    assert any("JSON" in x for x in reasons) and any("timestamp" in x for x in reasons)
    assert any("Invalid enum value 'like'" in x for x in reasons)
    assert any("exceeds" in x for x in reasons)
    counts = Counter(valid.users.tolist())
    docs = _users(wsettings)
    assert {u: d["n_events"] for u, d in docs.items()} == dict(counts)


def test_sigkill_mid_replay_loses_and_doubles_nothing(
        wsettings: Settings, ml_events: Interactions, tmp_path: Path, cleanup) -> None:
    inter = ml_events.take(slice(0, 8_000))
    log = tmp_path / "worker.log"
    # Rare commits: the kill surely leaves applied-but-uncommitted events to redeliver.
    wsettings = Settings.from_env(**{**wsettings.__dict__, "worker_commit_interval_s": 60.0})
    worker = WorkerProcess(wsettings, log).start()
    try:
        _replay(wsettings, inter.take(slice(0, 3_000)))
        wait_for(lambda: _total_events(wsettings) >= 1_000, 120, "first events applied")
        worker.kill()  # mid-stream: some events applied, offsets maybe not committed
        applied_at_kill = _total_events(wsettings)
        _replay(wsettings, inter.take(slice(3_000, None)))
        worker = WorkerProcess(wsettings, log).start()
        wait_for(lambda: _total_events(wsettings) >= len(inter), 180,
                 f"all {len(inter)} events applied after restart")
        worker.stop()
        final = worker.log_text()
    finally:
        worker.kill()
    totals = [line for line in final.splitlines() if "shutting down; interactions" in line]
    assert totals, final[-2000:]
    assert "'duplicates': 0," not in totals[-1]  # redelivered events were seen and skipped
    counts = Counter(inter.users.tolist())
    docs = _users(wsettings)
    assert {u: d["n_events"] for u, d in docs.items()} == dict(counts)
    assert 0 < applied_at_kill <= len(inter)
    expected_hist = _expected_history(inter, HISTORY)
    assert all(_items(d) == expected_hist[u] for u, d in docs.items())


def test_new_item_becomes_retrievable(
        wsettings: Settings, ml_events: Interactions, tmp_path: Path, cleanup) -> None:
    from faiss_server.client import FaissClient

    faiss_port = int(wsettings.faiss_url.rsplit(":", 1)[1])
    with ServiceProcess(["faiss"], faiss_port, wsettings, tmp_path / "faiss.log"), \
            WorkerProcess(wsettings, tmp_path / "worker.log"):
        _replay(wsettings, ml_events.take(slice(0, 2_000)))
        wait_for(lambda: _total_events(wsettings) >= 2_000, 120, "events applied")
        client = FaissClient.from_settings(wsettings, read_timeout_s=5.0)

        async def publish_item() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=wsettings.kafka_bootstrap)
            await producer.start()
            try:
                body = {"item_id": "brand-new", "op": "upsert", "ts": 1_700_000_000_000,
                        "attributes": {"title": "Brand New", "genres": ["Comedy"],
                                       "year": 1998}}
                await producer.send_and_wait(wsettings.topic_items, json.dumps(body).encode(),
                                             key=b"brand-new")
            finally:
                await producer.stop()

        asyncio.run(publish_item())

        def indexed() -> bool:
            try:
                return client.vector("brand-new").shape[0] > 0
            except Exception:  # noqa: BLE001 - not there yet
                return False

        wait_for(indexed, 30, "the new item in the FAISS index")
        r = redis_client(wsettings)
        meta = ItemCache(r, wsettings.redis_prefix).get_items(["brand-new"])
        r.close()
        assert meta["brand-new"]["title"] == "Brand New"
        hits = client.search(client.vector("brand-new"), k=5).results[0]
        assert "brand-new" in [i for i, _ in hits]
