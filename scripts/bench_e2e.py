"""End-to-end benchmark of the whole system: clicks to changed recommendations.

    python -m scripts.bench_e2e            # ~2 minutes
    python -m scripts.bench_e2e --quick

On the shared local stack, in its own namespace (like ``scripts.drill``), it starts the
FAISS service, the API and the worker, lets the worker learn from the first 20,000
MovieLens events, then measures:

- ``click_to_recs_*``: a user clicks the item at the top of their recommendations; time
  from producing the click until the API's answer for that user changes (the clicked
  item leaves the list: the worker wrote the new history and vector, the API saw it).
- ``new_item_p99_s``: an item upsert with attributes is produced; time until the API's
  similar-items endpoint answers for it (it is in the index, so recommendable).
- ``api_p99_ms_under_ingest``: wrk against the recommendations API while the rest of
  MovieLens is replayed at 5,000 events/s.
Prints one JSON line with those keys.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from common.events import interaction_json, item_json
from common.settings import Settings
from datasets import movielens
from scripts.bench_serving import parse_wrk
from scripts.drill import DrillWorld, _http_get
from scripts.processes import SyncProducer, seconds_until, wait_for
from scripts.stack import StackManager

WRK_LUA = """
math.randomseed(7)
request = function()
  local u = math.random(1, 943)
  return wrk.format("GET", "/v1/recommendations?user_id=" .. u .. "&k=10")
end
"""


def click_to_recs(world: DrillWorld, producer: SyncProducer, users: list[str],
                  timeout_s: float = 10.0) -> list[float]:
    out = []
    for user in users:
        status, before = _http_get(f"{world.api}/v1/recommendations?user_id={user}&k=10")
        if status != 200 or before.get("source") != "personalized" or not before.get("items"):
            continue
        top = before["items"][0]["id"]

        def top_gone(user: str = user, top: str = top) -> bool:
            _, now = _http_get(f"{world.api}/v1/recommendations?user_id={user}&k=10")
            ids = [it["id"] for it in now.get("items", [])]
            return bool(ids) and top not in ids

        t0 = time.perf_counter()
        producer.send(world.settings.topic_interactions, user,
                      interaction_json(user, top, "click", int(time.time() * 1000)))
        out.append(seconds_until(top_gone, timeout_s, 0.005, start=t0))
    return out


def new_items(world: DrillWorld, producer: SyncProducer, n: int,
              timeout_s: float = 15.0) -> list[float]:
    rng = np.random.default_rng(5)
    genres = ["Action", "Comedy", "Drama", "Sci-Fi", "Horror", "Romance", "Thriller"]
    out = []
    for j in range(n):
        item = f"bench-new-{uuid.uuid4().hex[:6]}-{j}"
        attrs = {"title": f"New film {j}", "year": 1998,
                 "genres": list(rng.choice(genres, 2, replace=False))}

        def servable(item: str = item) -> bool:
            status, body = _http_get(f"{world.api}/v1/items/{item}/similar?k=5")
            return status == 200 and body.get("source") != "popular" and bool(body.get("items"))

        t0 = time.perf_counter()
        producer.send(world.settings.topic_items, item,
                      item_json(item, "upsert", attrs, int(time.time() * 1000)))
        out.append(seconds_until(servable, timeout_s, 0.005, start=t0))
    return out


def api_under_ingest(world: DrillWorld, rate: float, seconds: int, tmp: Path,
                     connections: int) -> dict[str, float]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    inter = movielens.load(world.settings.cache_dir).interactions.sorted_by_time()
    live = inter.take(slice(20_000, 20_000 + int(rate * (seconds + 3))))
    script = tmp / "recs.lua"
    script.write_text(WRK_LUA)
    replay = threading.Thread(target=world.replay, args=(live, rate), daemon=True)
    replay.start()
    time.sleep(2.0)  # ingest is flowing before the measurement starts
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s",
                          "--latency",
                          "-s", str(script), world.api], capture_output=True, text=True,
                         check=True).stdout
    replay.join()
    return parse_wrk(out)


def pct(values: list[float], p: float) -> float:
    return round(float(np.percentile(np.asarray(values), p)), 4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="End-to-end benchmark of the whole system.")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rate", type=float, default=5_000.0, help="ingest events/s for the API run")
    p.add_argument("--connections", type=int, default=4,
                   help="wrk connections (closed loop) for the API-under-ingest run")
    args = p.parse_args(argv)
    n_clicks, n_items, seconds = (15, 10, 8) if args.quick else (60, 30, 15)
    base = Settings.from_env()
    StackManager(base).up()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        world = DrillWorld(base, tmp)
        producer = None
        try:
            world.apps.up(["faiss", "api", "worker"])
            seed = movielens.load(base.cache_dir).interactions.sorted_by_time().take(
                slice(0, 20_000))
            world.replay(seed)
            wait_for(lambda: world.total_events() >= len(seed), 180, "seed events applied")
            wait_for(lambda: _http_get(f"{world.api}/v1/recommendations?user_id="
                                       f"{seed.users[-1]}&k=5")[1].get("source")
                     == "personalized", 60, "personalised answers")
            producer = SyncProducer(world.settings)
            users = list(dict.fromkeys(seed.users[::-1].tolist()))[:n_clicks]
            print(f"click → recommendations changed, {len(users)} users ...", file=sys.stderr)
            clicks = click_to_recs(world, producer, users)
            print(f"new item → in similar-items, {n_items} items ...", file=sys.stderr)
            items = new_items(world, producer, n_items)
            print(f"API under {args.rate:,.0f} events/s of ingest, {seconds}s ...",
                  file=sys.stderr)
            api = api_under_ingest(world, args.rate, seconds, tmp, args.connections)
        finally:
            if producer is not None:
                producer.close()
            world.cleanup()
    result = {
        "click_to_recs_p50_s": pct(clicks, 50), "click_to_recs_p99_s": pct(clicks, 99),
        "new_item_p99_s": pct(items, 99), "api_p99_ms_under_ingest": api["api_p99_ms"],
        "clicks_measured": len(clicks), "click_timeouts": sum(np.isinf(clicks)),
        "new_items_measured": len(items), "api_rps_under_ingest": api["api_rps"],
        "api_errors_under_ingest": api["errors"], "ingest_rate": args.rate,
        "api_connections": args.connections,
    }
    print(json.dumps({k: (int(v) if isinstance(v, np.integer) else v)
                      for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
