"""Prequential (test-then-learn) quality through the real pipeline, against in-process.

    python -m scripts.eval_pipeline                 # first 10,000 streamed events, one at a time
    python -m scripts.eval_pipeline --limit 20000 --chunk 10

A model is bootstrapped on the first 20% of MovieLens (time order) and published; the
worker, the FAISS service, MongoDB and Redis then run as in production. The remaining
events are streamed in chunks. Before each chunk is sent, every event of an already
known user is tested: that user's query vector is read as the API reads it (the hot
state in Redis, or the MongoDB document when that is newer or the only one:
:func:`common.hot_users.newest`), the FAISS service returns the top items, the user's
seen items are removed, and a hit is the event's item among the first 10. Then the
chunk is produced to Kafka and the evaluator waits until the worker has applied it
(the users' hot state shows the new events, as the API would see them).

The same chunked protocol runs in-process on a copy of the bootstrap model, so the two
recall@10 figures differ only by the pipeline (batching, export delay, float32 index).
Prints one JSON line: ``pipeline_recall@10``, ``inprocess_recall@10``, ``ratio``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.clients import redis_client
from common.events import interaction_json
from common.hot_users import HotUsers, newest
from common.session_query import served_query, served_sparse, sparse_sources
from common.settings import Settings
from common.stores import ItemCache, RedisKeys, UserStore
from datasets import movielens
from devstack.drills.world import DrillWorld
from devstack.processes import SyncProducer, wait_for
from devstack.stack import StackManager
from faiss_server.client import FaissClient
from models.base import Recommender
from models.checkpoint import load_checkpoint
from models.events import EventBatch
from models.training import PRODUCT_MODEL, SERVED_MODELS
from streams.model_files import bootstrap_checkpoint_dir

K = 10


def pipeline_top(world: DrillWorld, hot: HotUsers, items: ItemCache, faiss: FaissClient,
                 users: list[str], seen: dict[str, set[str]]) -> dict[str, list[str]]:
    """Top-K per user from the serving state (hot state or MongoDB, the newer; a hybrid
    model's sparse part from the stored co-occurrence lists) → FAISS → drop seen."""
    hot_docs = hot.get_many(users)
    stored = UserStore(world.mongo[world.settings.mongo_db]).get_many(users)
    clock = hot.clock()
    sparse = clock.sparse if clock is not None else None
    out: dict[str, list[str]] = {}
    for user in users:
        doc = newest(hot_docs.get(user), stored.get(user))
        if doc is None or len(doc.vector) == 0:
            out[user] = []
            continue
        user_seen = seen.get(user, set())
        now_ms = int(time.time() * 1000)
        query = served_query(doc, clock, now_ms)  # as the API serves it
        boosts: list[dict[str, float]] = []
        if sparse is not None:  # a hybrid model's co-occurrence part, as the API adds it
            lists = {i: items.similar(i) for i in sparse_sources(doc.recent, sparse)}
            boosts = [served_sparse(doc, clock, lists, now_ms)]
        result = faiss.search(np.asarray(query, np.float32), k=K + len(user_seen),
                              boosts=boosts)
        out[user] = [i for i, _ in result.results[0] if i not in user_seen][:K]
    return out


def _applied(hot: HotUsers, users: list[str], expected: dict[str, int]) -> bool:
    """Whether the API would see every event sent so far for ``users``."""
    got = hot.get_many(users)
    return all(u in got and got[u].n_events >= expected[u] for u in users)


def inprocess_top(model: Recommender, users: list[str]) -> dict[str, list[str]]:
    ids, _ = model.recommend(users, K, exclude_seen=True)
    return {u: [i for i in row.tolist() if i] for u, row in zip(users, ids, strict=True)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Prequential recall through the real pipeline.")
    p.add_argument("--chunk", type=int, default=1)
    p.add_argument("--limit", type=int, default=10_000, help="stream at most this many events")
    p.add_argument("--model", choices=SERVED_MODELS, default=PRODUCT_MODEL)
    args = p.parse_args(argv)
    base = Settings.from_env()
    StackManager(base).up()
    inter = movielens.load(base.cache_dir).interactions.sorted_by_time()
    n_boot = int(len(inter) * 0.2)
    stream = inter.take(slice(n_boot, None if args.limit is None else n_boot + args.limit))
    with tempfile.TemporaryDirectory(prefix="eval-pipeline-") as tmp:
        world = DrillWorld(base, Path(tmp), export_interval_s=0.25)
        s = world.settings
        env = {**s.to_env()}
        try:
            subprocess.run([sys.executable, "-m", "scripts.bootstrap", "--model", args.model,
                            "--until-fraction", "0.2", "--out", str(s.model_dir)],
                           check=True, env={**os.environ, **env})
            reference = load_checkpoint(bootstrap_checkpoint_dir(s))
            world.apps.up(["faiss"])
            # With the catalogue: the worker exports only catalogue items to FAISS (ghost
            # items are never served), so without it the first export emptied the index.
            subprocess.run([sys.executable, "-m", "scripts.publish", "--until-fraction", "0.2"],
                           check=True, env={**os.environ, **env})
            world.apps.up(["worker"])
            faiss = FaissClient.from_settings(s, read_timeout_s=5.0)
            redis = redis_client(s)
            hot = HotUsers(redis, RedisKeys(s.redis_prefix), s.worker_hot_state_ttl_s)
            items = ItemCache(redis, s.redis_prefix)
            producer = SyncProducer(s)
            known = set(reference.user_ids.ids)
            seen: dict[str, set[str]] = {}
            boot = inter.take(slice(0, n_boot))
            for u, i in zip(boot.users.tolist(), boot.items.tolist(), strict=True):
                seen.setdefault(u, set()).add(i)
            hits = {"pipeline": 0, "inprocess": 0}
            evaluated = 0
            expected: dict[str, int] = {}
            t0 = time.perf_counter()
            for start in tqdm(range(0, len(stream), args.chunk), desc="chunks", unit="chunk"):
                chunk = stream.take(slice(start, start + args.chunk))
                users = sorted({u for u in chunk.users.tolist() if u in known})
                top_p = pipeline_top(world, hot, items, faiss, users, seen)
                top_i = inprocess_top(reference, users)
                for u, i in zip(chunk.users.tolist(), chunk.items.tolist(), strict=True):
                    if u in known:
                        evaluated += 1
                        hits["pipeline"] += int(i in top_p.get(u, []))
                        hits["inprocess"] += int(i in top_i.get(u, []))
                for u in chunk.users.tolist():
                    expected[u] = expected.get(u, 0) + 1
                for u, i, r, t in zip(chunk.users.tolist(), chunk.items.tolist(),
                                      chunk.ratings.tolist(), chunk.ts_ms.tolist(), strict=True):
                    producer.send(s.topic_interactions, u, interaction_json(u, i, "rating", t, r))
                reference.learn_many(EventBatch.from_interactions(chunk))
                chunk_users = sorted(set(chunk.users.tolist()))
                wait_for(lambda us=chunk_users: _applied(hot, us, expected), 120,
                         "the worker to apply the chunk", interval_s=0.005)
                for u, i in zip(chunk.users.tolist(), chunk.items.tolist(), strict=True):
                    known.add(u)
                    seen.setdefault(u, set()).add(i)
            seconds = time.perf_counter() - t0
            producer.close()
            redis.close()
        finally:
            world.cleanup()
    rp = hits["pipeline"] / max(evaluated, 1)
    ri = hits["inprocess"] / max(evaluated, 1)
    print(json.dumps({"model": args.model, "chunk": args.chunk, "evaluated": evaluated,
                      "pipeline_recall@10": round(rp, 4), "inprocess_recall@10": round(ri, 4),
                      "ratio": round(rp / ri, 3) if ri else None,
                      "seconds": round(seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
