"""Publish a bootstrapped model to the serving stores, so its users are served at once.

    python -m scripts.publish                       # latest RECSYS_MODEL_DIR/checkpoints
    python -m scripts.publish --until-fraction 0.8  # + catalogue and popularity of that history

Writes what the streaming worker would have written had it seen the history:
user documents (query vector, recent history) to MongoDB, item metadata and a decayed
popularity list to Redis, and every item vector to the FAISS service as a new index
version. ``n_events`` stays 0: it counts events the worker applied from the stream.
Safe to re-run (every write is an overwrite).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from common.clients import mongo_db, redis_client
from common.hot_users import HotUsers
from common.session_query import stream_clock
from common.settings import Settings
from common.stores import ItemCache, UserDoc, UserStore
from datasets import movielens
from datasets.types import Interactions, Item
from faiss_server.client import FaissClient
from models.base import Recommender
from models.checkpoint import load_checkpoint
from streams.model_files import bootstrap_checkpoint_dir, ranker_dir
from streams.ranker_training import load_latest_ranker, publish_ranker
from streams.state import DecayedPopularity


def publish_users(model: Recommender, users: UserStore, history_size: int,
                  chunk: int = 500, progress: bool = True) -> int:
    ids = list(model.user_ids.ids)
    written = 0
    with tqdm(total=len(ids), unit="user", desc="users → MongoDB", disable=not progress) as bar:
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            # a session-aware model: both queries and the last event time, as the worker
            # writes them (the API blends them by the stream clock)
            long_term, fresh, last = model.user_vector_parts(part)
            session = model.session_half_life_s > 0
            docs = [UserDoc(u, fresh[j].tolist(), model.version,
                            recent=model.recent_events(u)[-history_size:],
                            last_event_ms=max(int(last[j]), 0),
                            long_vector=long_term[j].tolist() if session else [])
                    for j, u in enumerate(part)]
            written += users.upsert_many(docs)
            bar.update(len(part))
    return written


def publish_items(cache: ItemCache, items: dict[str, Item]) -> None:
    cache.put_items({i: item.attributes for i, item in items.items()})


def publish_popularity(cache: ItemCache, history: Interactions, half_life_s: float) -> None:
    """Decayed counts of ``history`` (weight 1 per event), like the worker keeps them."""
    pop = DecayedPopularity(half_life_s, ref_ms=int(history.ts_ms.max()))
    increments = pop.increments(zip(history.items.tolist(), [1.0] * len(history),
                                    history.ts_ms.tolist(), strict=True))
    cache.set_popular(increments, meta=pop.meta())


def publish_index(model: Recommender, faiss: FaissClient) -> dict[str, object]:
    ids, vectors = model.item_vectors()
    return faiss.load_version((ids, vectors), f"{model.version}-boot")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Publish a bootstrapped model for serving.")
    p.add_argument("--checkpoint-dir", type=Path, default=None)
    p.add_argument("--until-fraction", type=float, default=None,
                   help="also publish MovieLens items and popularity of this history slice")
    p.add_argument("--no-index", action="store_true", help="skip the FAISS service")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    model = load_checkpoint(args.checkpoint_dir or bootstrap_checkpoint_dir(settings))
    t0 = time.perf_counter()
    summary: dict[str, object] = {"model_version": model.version}
    summary["users"] = publish_users(model, UserStore(mongo_db(settings)),
                                     settings.worker_history_size)
    cache = ItemCache(redis_client(settings, timeout_s=10), settings.redis_prefix)
    # the stream's clock as of the bootstrap, until the worker's first batch moves it
    HotUsers(cache.r, cache.keys, settings.worker_hot_state_ttl_s).put_clock(
        stream_clock(model))
    # the bootstrap's ranker (trained for this model), or none: never one of another model
    ranker = load_latest_ranker(ranker_dir(settings))
    if ranker is not None:
        publish_ranker(cache, ranker)
    else:
        cache.r.delete(cache.keys.ranker, cache.keys.ranker_version)
    summary["ranker"] = ranker.version if ranker else None
    if args.until_fraction is not None:
        ds = movielens.load(settings.cache_dir)
        inter = ds.interactions.sorted_by_time()
        history = inter.take(slice(0, int(len(inter) * args.until_fraction)))
        publish_items(cache, ds.items)
        publish_popularity(cache, history, settings.popularity_half_life_s)
        summary["items"] = len(ds.items)
    if not args.no_index:
        info = publish_index(model, FaissClient.from_settings(settings))
        summary["index"] = {k: info.get(k) for k in ("version", "size")}
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
