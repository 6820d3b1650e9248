"""Prequential (test-then-learn) quality of the API's own answers, against in-process.

    python -m scripts.eval_pipeline                 # first 10,000 streamed events, one at a time
    python -m scripts.eval_pipeline --limit 20000 --chunk 10

A model (and its first ranker) is bootstrapped on the first 20% of MovieLens (time
order) and published; the worker, the FAISS service, the API, MongoDB and Redis then run
as in production. The remaining events are streamed in chunks. Before each chunk is
sent, every event of an already known user is tested: the API is asked for that user's
recommendations (``GET /v1/recommendations``), the user's seen items are removed (the API
itself leaves out the last 50), and a hit is the event's item among the first 10. Then
the chunk is produced to Kafka and the evaluator waits until the worker has applied it
(the users' hot state shows the new events, as the API sees them).

Each test asks the API once per order (``order=``, :data:`recommender_server.ranking.ORDERS`):
``ranked`` (the product: every source, the learned ranker), ``retrieval`` (the FAISS
order, as served before the ranking stage), and each source alone (``cooc``,
``popular``; a source with fewer than 10 candidates is filled with popular items).

The same chunked protocol runs in-process on a copy of the bootstrap model (retrieval
only), so ``retrieval`` against it shows what the pipeline itself costs (batching,
export delay, float32 index). Prints one JSON line: ``pipeline_recall@10`` (ranked),
``recall@10_by_order``, ``inprocess_recall@10``, ``ratio`` (ranked over in-process),
``evaluated``, ``ranker_versions`` (the rankers that answered).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests
from tqdm import tqdm

from common.clients import redis_client
from common.events import interaction_json
from common.hot_users import HotUsers
from common.settings import Settings
from common.stores import RedisKeys
from datasets import movielens
from devstack.drills.world import DrillWorld
from devstack.processes import SyncProducer, wait_for
from devstack.stack import StackManager
from models.base import Recommender
from models.checkpoint import load_checkpoint
from models.events import EventBatch
from models.training import PRODUCT_MODEL, SERVED_MODELS
from streams.model_files import bootstrap_checkpoint_dir

K = 10


#: Orders each test asks the API for (see the module docstring).
ORDERS = ("ranked", "retrieval", "cooc", "popular")

#: Items asked of the API per test: the API leaves out the user's last 50 items, the
#: evaluator every item the user has seen, so it asks for more and keeps the first 10.
ASK_K = 60


def api_top(http: requests.Session, url: str, users: list[str], seen: dict[str, set[str]],
            order: str, versions: Counter[str]) -> dict[str, list[str]]:
    """Top-K per user as the API answers in ``order``, seen items removed."""
    out: dict[str, list[str]] = {}
    for user in users:
        r = http.get(f"{url}/v1/recommendations",
                     params={"user_id": user, "k": str(ASK_K), "order": order}, timeout=10)
        r.raise_for_status()
        body = r.json()
        versions[str(body.get("ranker_version"))] += order == "ranked"
        user_seen = seen.get(user, set())
        out[user] = [i["id"] for i in body["items"] if i["id"] not in user_seen][:K]
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
            world.apps.up(["worker", "api"])
            http = requests.Session()
            redis = redis_client(s)
            hot = HotUsers(redis, RedisKeys(s.redis_prefix), s.worker_hot_state_ttl_s)
            producer = SyncProducer(s)
            known = set(reference.user_ids.ids)
            seen: dict[str, set[str]] = {}
            boot = inter.take(slice(0, n_boot))
            for u, i in zip(boot.users.tolist(), boot.items.tolist(), strict=True):
                seen.setdefault(u, set()).add(i)
            hits = {name: 0 for name in (*ORDERS, "inprocess")}
            versions: Counter[str] = Counter()
            evaluated = 0
            expected: dict[str, int] = {}
            t0 = time.perf_counter()
            for start in tqdm(range(0, len(stream), args.chunk), desc="chunks", unit="chunk"):
                chunk = stream.take(slice(start, start + args.chunk))
                users = sorted({u for u in chunk.users.tolist() if u in known})
                tops = {order: api_top(http, world.api, users, seen, order, versions)
                        for order in ORDERS}
                tops["inprocess"] = inprocess_top(reference, users)
                for u, i in zip(chunk.users.tolist(), chunk.items.tolist(), strict=True):
                    if u in known:
                        evaluated += 1
                        for name, top in tops.items():
                            hits[name] += int(i in top.get(u, []))
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
            http.close()
        finally:
            world.cleanup()
    recall = {name: round(n / max(evaluated, 1), 4) for name, n in hits.items()}
    rp, ri = recall["ranked"], recall["inprocess"]
    print(json.dumps({"model": args.model, "chunk": args.chunk, "evaluated": evaluated,
                      "pipeline_recall@10": rp,
                      "recall@10_by_order": {o: recall[o] for o in ORDERS},
                      "inprocess_recall@10": ri, "ratio": round(rp / ri, 3) if ri else None,
                      "ranker_versions": dict(versions), "seconds": round(seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
