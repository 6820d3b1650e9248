"""The end-to-end demo (``make demo``): the whole system on MovieLens 100k.

1. fetch MovieLens 100k; check the broker with a replay + consumer-group read-back;
2. bootstrap a model on the first 80% of events (progress bar);
3. start the FAISS service and the API, publish the bootstrap (user vectors, catalogue,
   popularity, item index), start the Faust worker;
4. show one user's recommendations before and after a few clicks (titles), and a
   brand-new item becoming servable in similar-items;
5. replay the remaining 20% as live clicks while clients call the API, then print
   events/s, click→vector freshness, API latency, and the URLs to try.

The demo owns the local demo state: it stops the apps it started before, drops the
``RECSYS_MONGO_DB`` database, deletes ``RECSYS_REDIS_PREFIX`` keys and the worker's
checkpoints, so re-running starts clean. ``make down`` stops everything.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

from common.clients import mongo_client, redis_client
from common.events import interaction_json, item_json
from common.hot_users import HotUsers
from common.kafka import delete_topics, recreate_topics
from common.settings import Settings
from common.stores import RedisKeys
from datasets import movielens
from datasets.types import Dataset
from devstack.apps import AppManager
from devstack.drills.system import ApiLoad
from devstack.graphs import GraphiteUnavailable, save_graphs
from devstack.metrics_stack import REPEATER_PORT
from devstack.readback import produce_and_count
from devstack.replay import RUN_HEADER, Replayer, interaction_chunks
from devstack.statsd_listener import StatsdListener
from models.checkpoint import read_meta
from streams.model_files import bootstrap_checkpoint_dir, worker_checkpoint_dir

BOOTSTRAP_FRACTION = 0.8
LIVE_RATE = 2_000.0  # events/s for the live part of the replay


def say(text: str) -> None:
    print(text, flush=True)


# --- helpers -------------------------------------------------------------------------------
class Api:
    """A tiny keep-alive HTTP client for the recommender API."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def get(self, path: str) -> dict[str, Any]:
        try:
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            raise
        data = json.loads(body) if body else {}
        data["_status"] = resp.status
        return data


def titles(ds: Dataset, items: list[dict[str, Any]]) -> list[str]:
    out = []
    for it in items:
        meta = it.get("metadata") or {}
        title = meta.get("title") or (ds.items[it["id"]].title if it["id"] in ds.items
                                      else it["id"])
        out.append(str(title))
    return out


async def produce(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def reset_state(settings: Settings) -> None:
    asyncio.run(recreate_topics(settings, [settings.topic_interactions, settings.topic_items,
                                           settings.topic_dead_letter]))
    client = mongo_client(settings)
    client.drop_database(settings.mongo_db)
    client.close()
    r = redis_client(settings, timeout_s=10)
    keys = list(r.scan_iter(match=f"{settings.redis_prefix}*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()
    shutil.rmtree(worker_checkpoint_dir(settings), ignore_errors=True)


# --- the story -----------------------------------------------------------------------------
def check_broker(settings: Settings, ds: Dataset) -> dict[str, Any]:
    """Replay everything into a scratch topic pair and count it back (stage-1 check)."""
    tag = uuid.uuid4().hex[:6]
    scratch = Settings.from_env(topic_interactions=f"demo-check-{tag}-interactions",
                                topic_items=f"demo-check-{tag}-items")
    inter = ds.interactions.sorted_by_time()
    replayer = Replayer(scratch, progress=True)
    box: dict[str, Any] = {}

    async def go() -> dict[str, int]:
        stats = await replayer.run(list(ds.items.values()), interaction_chunks(inter), len(inter))
        box["stats"] = stats
        return {scratch.topic_interactions: stats.interactions, scratch.topic_items: stats.items}

    topics = [scratch.topic_interactions, scratch.topic_items]
    got = asyncio.run(produce_and_count(scratch, topics, f"demo-check-{tag}", go,
                                        run_header=(RUN_HEADER, replayer.run_id.encode())))
    asyncio.run(delete_topics(scratch, topics))
    return {"interactions": got.counts[scratch.topic_interactions],
            "items": got.counts[scratch.topic_items],
            "replay_events_per_s": round(box["stats"].events_per_s)}


def statsd_listener(settings: Settings) -> StatsdListener:
    """Hear the apps' metrics: directly, or via the statsd daemon's repeater if it runs."""
    try:
        return StatsdListener(port=settings.statsd_port).start()
    except OSError:  # the metrics pipeline's statsd daemon holds the port
        return StatsdListener(port=REPEATER_PORT).start()


def save_graphs_if_possible(settings: Settings, since_s: float) -> list[Path]:
    try:
        return save_graphs(Path(settings.local_dir) / "graphs", prefix=settings.statsd_prefix,
                           start=f"-{int(since_s) + 30}s")
    except GraphiteUnavailable as exc:
        say(f"   (no graphs: {exc}; start the metrics pipeline with "
            "`python -m scripts.stack up --metrics`)")
        return []


def bootstrap(settings: Settings) -> dict[str, Any]:
    subprocess.run([sys.executable, "-m", "scripts.bootstrap", "--until-fraction",
                    str(BOOTSTRAP_FRACTION), "--out", str(settings.model_dir)], check=True)
    return read_meta(bootstrap_checkpoint_dir(settings))


def pick_user(ds: Dataset, history_end: int) -> tuple[str, str, list[str]]:
    """A user active in the bootstrap history, and 5 popular unseen films of a new genre."""
    inter = ds.interactions.sorted_by_time()
    past = inter.take(slice(0, history_end))
    counts = Counter(past.users.tolist())
    user = sorted((u for u, c in counts.items() if 40 <= c <= 80), key=lambda u: -counts[u])[0]
    seen = set(past.items[past.users == user].tolist())
    genre_counts = Counter(g for i in seen for g in ds.items[i].genres)
    target = next(g for g in ("Children's", "Horror", "Western", "Musical", "Documentary")
                  if genre_counts[g] <= 1)
    popular = Counter(past.items.tolist())
    picks = [i for i, _ in popular.most_common() if target in ds.items[i].genres
             and i not in seen][:5]
    return user, target, picks


def genre_count(ds: Dataset, items: list[dict[str, Any]], genre: str) -> int:
    return sum(1 for it in items if it["id"] in ds.items and genre in ds.items[it["id"]].genres)


def wait_changed(api: Api, path: str, before: list[str], timeout_s: float) -> tuple[float, dict]:
    t0 = time.perf_counter()
    while True:
        now = api.get(path)
        ids = [it["id"] for it in now.get("items", [])]
        if ids and ids != before and now.get("source") == "personalized":
            return time.perf_counter() - t0, now
        if time.perf_counter() - t0 > timeout_s:
            return float("nan"), now
        time.sleep(0.02)


def wait_clicks_applied(settings: Settings, user: str, items: list[str],
                        timeout_s: float) -> float:
    """Seconds until the user's hot state ends with clicks on ``items`` (the API then
    serves all of them: the first change of the list may show only the first few)."""
    hot = HotUsers(redis_client(settings), RedisKeys(settings.redis_prefix), 60.0)
    t0 = time.perf_counter()
    try:
        while True:
            doc = hot.get_many([user]).get(user)
            if doc is not None and [i for i, _ in doc.recent[-len(items):]] == items:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout_s:
                return float("nan")
            time.sleep(0.01)
    finally:
        hot.r.close()


def wait_worker_consuming(settings: Settings, ts_ms: int, timeout_s: float = 60.0) -> float:
    """Seconds until the worker applies a click of a throwaway user at event time
    ``ts_ms`` (the replay's time, so the stream clock stays in it) — its hot record
    appears. A started worker joins its consumer group a few seconds later; without
    this wait step 4 would time that join, not how fast a click reaches the list."""
    user = f"demo-warmup-{uuid.uuid4().hex[:8]}"
    r = redis_client(settings)
    key = RedisKeys(settings.redis_prefix).user_state(user)
    t0 = time.perf_counter()
    asyncio.run(produce(settings, settings.topic_interactions,
                        [(user.encode(), interaction_json(user, "1", "click", ts_ms))]))
    try:
        while r.exists(key) == 0:
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"the worker applied no click within {timeout_s:.0f} s")
            time.sleep(0.05)
    finally:
        r.close()
    return time.perf_counter() - t0


def main() -> int:  # noqa: PLR0915 - a linear story reads best in one place
    settings = Settings.from_env()
    started = time.monotonic()
    apps = AppManager(settings)
    say("== 1. data and broker ==")
    ds = movielens.load(settings.cache_dir)
    check = check_broker(settings, ds)
    say(f"   read back {check['interactions']:,} interactions and {check['items']:,} items "
        f"(data set: 100,000 and 1,682); replay {check['replay_events_per_s']:,} events/s")

    say("\n== 2. bootstrap on the first 80% of the history ==")
    apps.down()
    reset_state(settings)
    bootstrap(settings)

    say("\n== 3. services: FAISS, API, publish the bootstrap, worker ==")
    stats = statsd_listener(settings)
    apps = AppManager(settings)  # FAISS dimension from the new checkpoint
    apps.up(["faiss", "api"])
    subprocess.run([sys.executable, "-m", "scripts.publish", "--until-fraction",
                    str(BOOTSTRAP_FRACTION)], check=True)
    apps.up(["worker"])
    for row in apps.status():
        say(f"   {row['service']!s:7} pid {row['managed_pid']}  {row['url']}  (log {row['log']})")
    inter = ds.interactions.sorted_by_time()
    split = int(len(inter) * BOOTSTRAP_FRACTION)
    warm_s = wait_worker_consuming(settings, int(inter.ts_ms[split - 1]))
    say(f"   worker consuming (joined its consumer group, applied a warm-up click) after "
        f"{warm_s:.1f} s")
    api = Api(settings.api_port)

    say("\n== 4. one user, a few clicks ==")
    user, genre, picks = pick_user(ds, split)
    path = f"/v1/recommendations?user_id={user}&k=8"
    before = api.get(path)
    say(f"   user {user} before ({before.get('source')}):")
    for t in titles(ds, before.get("items", [])):
        say(f"     - {t}")
    genre_titles = ", ".join(ds.items[i].title for i in picks)
    say(f"   {genre_count(ds, before.get('items', []), genre)} of "
        f"{len(before.get('items', []))} are {genre}; clicks ({genre}): {genre_titles}")
    last_ts = int(inter.ts_ms[split - 1])
    clicks = [(user.encode(), interaction_json(user, i, "click", last_ts + 1000 * (j + 1)))
              for j, i in enumerate(picks)]
    asyncio.run(produce(settings, settings.topic_interactions, clicks))
    took, after = wait_changed(api, path, [it["id"] for it in before.get("items", [])], 10)
    say(f"   the list changed {took:.2f} s after the clicks were sent")
    all_s = wait_clicks_applied(settings, user, picks, 10)
    after = api.get(path)
    say(f"   all five applied after {all_s:.2f} s ({after.get('source')}), "
        f"{genre_count(ds, after.get('items', []), genre)} of "
        f"{len(after.get('items', []))} are {genre}:")
    for t, it in zip(titles(ds, after.get("items", [])), after.get("items", []),
                     strict=True):
        say(f"     - {t}   [{', '.join(it.get('sources') or [])}]")
    ranker = after.get("ranker_version") or "none"
    say(f"   ranked by ranker {ranker} (none: the FAISS order), model "
        f"{after.get('model_version')}, index {after.get('index_version')}; each item's "
        "candidate sources in brackets")
    # the same list narrowed by attributes (recommender_server/filters.py)
    narrowed = api.get(f"{path}&genre={genre}&year_min=1990")
    say(f"   filtered with genre={genre}&year_min=1990 "
        f"(partial: {narrowed.get('partial')}, HTTP {narrowed.get('_status')}):")
    for it in narrowed.get("items", []):
        meta = it.get("metadata") or {}
        say(f"     - {meta.get('title', it['id'])} ({meta.get('year', '?')})")

    say("\n== 5. a brand-new item ==")
    new_id = f"new-{uuid.uuid4().hex[:6]}"
    attrs = {"title": "Starlight Voyagers (2026)", "year": 1998,
             "genres": ["Sci-Fi", "Adventure", "Action"]}
    t0 = time.perf_counter()
    asyncio.run(produce(settings, settings.topic_items,
                        [(new_id.encode(), item_json(new_id, "upsert", attrs, last_ts))]))
    similar: dict[str, Any] = {}
    while time.perf_counter() - t0 < 15:
        similar = api.get(f"/v1/items/{new_id}/similar?k=5")
        if similar["_status"] == 200 and similar.get("items"):
            break
        time.sleep(0.05)
    new_item_s = time.perf_counter() - t0
    say(f"   '{attrs['title']}' servable in similar-items after {new_item_s:.2f} s; "
        f"its neighbours: {', '.join(titles(ds, similar.get('items', [])))}")

    say(f"\n== 6. the last 20% as live clicks at {LIVE_RATE:,.0f}/s, with API clients ==")
    live = inter.take(slice(split, None))
    stats.take_timings("latency.click_to_vector_ms")
    before_count = stats.counter("events.interactions")
    users = sorted(set(inter.users.tolist()))
    with ApiLoad(f"http://127.0.0.1:{settings.api_port}", users, clients=4) as load:
        t0 = time.perf_counter()
        asyncio.run(Replayer(settings, rate=LIVE_RATE).run([], interaction_chunks(live),
                                                           len(live)))
        deadline = time.monotonic() + 120
        while (stats.counter("events.interactions") - before_count < len(live)
               and time.monotonic() < deadline):
            time.sleep(0.1)
        ingest_s = time.perf_counter() - t0
    fresh = np.array(stats.take_timings("latency.click_to_vector_ms")) / 1000
    lat_ms = np.array([r[3] for r in load.records]) * 1000
    api_errors = sum(1 for r in load.records if r[1] != 200)
    applied = stats.counter("events.interactions") - before_count
    figures = {
        "live_events": len(live), "applied": int(applied),
        "events_per_s": round(applied / ingest_s, 1),
        "click_to_vector_p99_s": round(float(np.percentile(fresh, 99)), 3) if len(fresh) else None,
        "click_to_recs_demo_s": round(took, 3), "clicks_applied_demo_s": round(all_s, 3),
        "new_item_s": round(new_item_s, 3),
        "api_requests": len(lat_ms), "api_errors": api_errors,
        "api_p50_ms": round(float(np.percentile(lat_ms, 50)), 2) if len(lat_ms) else None,
        "api_p99_ms": round(float(np.percentile(lat_ms, 99)), 2) if len(lat_ms) else None,
    }
    stats.stop()
    say(f"   ingested {figures['applied']:,} events at {figures['events_per_s']:,} events/s "
        f"(offered {LIVE_RATE:,.0f}/s)")
    say(f"   freshness click → user vector written: p99 {figures['click_to_vector_p99_s']} s")
    say(f"   API under ingest: {figures['api_requests']:,} requests, p50 "
        f"{figures['api_p50_ms']} ms, p99 {figures['api_p99_ms']} ms, "
        f"errors {figures['api_errors']}")

    say("\n== graphs (rendered by Graphite) ==")
    time.sleep(2.5)  # let statsd flush the last second
    for png in save_graphs_if_possible(settings, time.monotonic() - started):
        say(f"   {png}")

    base = f"http://127.0.0.1:{settings.api_port}"
    say("\n== try it ==")
    say(f"   curl '{base}/v1/recommendations?user_id={user}&k=10'")
    say(f"   curl '{base}/v1/recommendations?user_id={user}&k=10&genre=Comedy&year_min=1990'"
        "      (attribute filters)")
    say(f"   curl '{base}/v1/items/50/similar?k=10'      (item vectors)")
    say(f"   curl '{base}/v1/items/50/similar?k=10&source=cooc'      (clicked around it)")
    say(f"   curl '{base}/v1/popular?k=10'      curl {base}/ready")
    say(f"   FAISS service: {settings.faiss_url}/v1/index    logs: {Path(settings.local_dir)}/logs")
    say("   Graphite: http://127.0.0.1:8085/render?target=stats.counters.recsys.worker"
        ".events.interactions.rate&from=-15min    graphs: make graphs")
    say("   stop everything: make down")
    print(json.dumps({"broker_check": check, **figures}))
    ok = (check["interactions"] == 100_000 and check["items"] == 1_682
          and figures["applied"] >= len(live) and figures["api_errors"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
