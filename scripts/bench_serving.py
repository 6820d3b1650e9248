"""Serving benchmarks; prints one JSON line per figure set.

    python -m scripts.bench_serving            # full: API + ANN at 1M items (≈ 10 min)
    python -m scripts.bench_serving --quick    # smaller sizes (≈ 2 min)
    python -m scripts.bench_serving --only api|ann

(a) ``api``: the local stack (``StackManager(Settings.from_env()).up()``), synthetic users in
MongoDB and items in Redis under a ``bench`` namespace, the FAISS service and the API
started as real processes, then ``wrk`` (closed loop, fixed connections, bounded time)
on ``/v1/recommendations`` with skewed user ids. Keys: ``api_rps``, ``api_p50_ms``,
``api_p99_ms``, ``errors``, plus the user-cache hit ratio, the share of personalised
answers, the machine's load (``cpu_busy`` = share of both cores busy during the wrk run,
everything included: API, FAISS, MongoDB, Redis, wrk and other users' jobs;
``loadavg_1m`` after it) and the freshness delay (``fresh_*_ms``: a user's document
rewritten in MongoDB → the API answers with it, polled every 2 ms, while idle).
The full run also measures the ``ttl`` user cache (no change stream) for comparison.

(b) ``ann``: the FAISS service with ``n`` clustered synthetic unit vectors of dim 64,
loaded over HTTP as a version; ``ann_recall@10`` against exact search on a sample of
queries and ``ann_p99_ms`` per HTTP request (one client, sequential). Then the same on
item vectors of the latest MovieLens bootstrap export (``{model_dir}/export/*/``) grown to
the same size by jitter, queried with its user vectors, if such an export exists; else a
line saying it was skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.settings import Settings
from devstack.processes import ServiceProcess, free_port, seconds_until
from devstack.wrk import parse_wrk

WRK_LUA = """
math.randomseed(%(seed)d)
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) answers = 0; personalized = 0; partial = 0 end
request = function()
  -- skewed users: a few are hot, most are rare (u^2 puts ~30%% of traffic on 10%% of users)
  local u = math.floor(%(n_users)d * math.random() ^ 2)
  return wrk.format("GET", "/v1/recommendations?user_id=user" .. u .. "&k=10%(extra)s")
end
response = function(status, headers, body)
  -- the answer's own "source" comes before its items' (msgspec keeps field order)
  answers = answers + 1
  if string.match(body, '"source":"(%%a+)"') == "personalized" then
    personalized = personalized + 1
  end
  if string.find(body, '"partial":true', 1, true) then partial = partial + 1 end
end
done = function(summary, latency, requests)
  local p, n, q = 0, 0, 0
  for _, t in ipairs(threads) do
    p = p + t:get("personalized"); n = n + t:get("answers"); q = q + t:get("partial")
  end
  io.write(string.format("personalized %%d of %%d\\n", p, n))
  io.write(string.format("partial %%d of %%d\\n", q, n))
end
"""


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def clustered(n: int, dim: int, n_clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around ``n_clusters`` random centres (built in chunks, float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 200_000):
        e = min(n, s + 200_000)
        x = centres[rng.integers(0, n_clusters, e - s)]
        x += 0.35 * rng.normal(size=(e - s, dim)).astype(np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    from faiss_server.index import exact_top as exact  # the one faiss user is faiss_server/

    return exact(x, q, k)


def percentile_ms(samples: list[float], p: float) -> float:
    return round(float(np.percentile(np.asarray(samples) * 1000, p)), 3)


# --- (a) recommendations API ----------------------------------------------------------------
def cpu_times() -> tuple[float, float]:
    """``(busy, total)`` jiffies of the whole machine, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        parts = [float(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in process group ``pgid``."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[2] = pgrp (after state, ppid)
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def freshness(api_url: str, store: Any, docs: list[Any], trials: int) -> dict[str, Any]:
    """Rewrite a user's document (new vector, new model_version) and poll the API until
    the answer carries it; delays in ms, from the write's acknowledgement."""
    import requests

    delays: list[float] = []
    with requests.Session() as http:
        for n, doc in enumerate(docs[:trials]):
            doc.model_version = f"fresh-{n}-{time.time_ns()}"
            doc.vector = list(reversed(doc.vector))
            store.upsert_many([doc])

            def served(doc: Any = doc) -> bool:
                out = http.get(f"{api_url}/v1/recommendations",
                               params={"user_id": doc.user_id}, timeout=5).json()
                return bool(out["model_version"] == doc.model_version)

            delays.append(seconds_until(served, 5, 0.002))
    finite = [d for d in delays if d != float("inf")]
    return {"fresh_trials": len(delays), "fresh_timeouts": len(delays) - len(finite),
            "fresh_p50_ms": percentile_ms(finite, 50) if finite else None,
            "fresh_max_ms": round(max(finite) * 1000, 1) if finite else None}


def catalogue(args: argparse.Namespace, settings: Settings,
              rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(item ids, item vectors, user vectors)`` of the API benchmark: synthetic
    clustered vectors (20k items / 2k users with ``--quick``, else 100k / 10k), or the
    latest MovieLens bootstrap export (1,682 items, 943 users; ``python -m
    scripts.bootstrap`` writes it)."""
    if args.dataset == "movielens":
        exports = sorted((settings.model_dir / "export").glob("*/item_vectors.npy"))
        if not exports:
            raise SystemExit(f"no bootstrap export under {settings.model_dir / 'export'}: "
                             "run python -m scripts.bootstrap first")
        folder = exports[-1].parent
        items = [str(i) for i in json.loads((folder / "item_ids.json").read_text())]
        x = np.load(folder / "item_vectors.npy", allow_pickle=False).astype(np.float32)
        users = np.load(folder / "user_vectors.npy", allow_pickle=False).astype(np.float32)
        return items, x, users
    n_items, n_users = (20_000, 2_000) if args.quick else (100_000, 10_000)
    vectors = clustered(n_items, 64, 200, seed=1)
    return [f"item{i}" for i in range(n_items)], vectors, vectors[rng.integers(0, n_items,
                                                                               n_users)]


class RankerSwaps:
    """Publishes ``n`` new rankers, evenly spaced, while the first wrk run goes on (each
    API worker swaps within ``RECSYS_API_RANKER_REFRESH_S``): the run's ``errors`` then
    count any request a swap failed."""

    def __init__(self, cache: Any, n: int, duration_s: float) -> None:
        import threading

        from ranking.features import FEATURES
        from ranking.ranker import train_ranker

        rng = np.random.default_rng(5)
        x = rng.normal(size=(31_000, len(FEATURES))).astype(np.float32)
        y = (x[:, 1] > 1.0).astype(np.float32)
        self.rankers = [train_ranker(x, y, [31] * 1000, version=f"bench-swap-{j}")
                        for j in range(n)]
        self.cache, self.gap_s = cache, duration_s / (n + 1)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from streams.ranker_training import publish_ranker

        for ranker in self.rankers:
            time.sleep(self.gap_s)
            publish_ranker(self.cache, ranker)

    def join(self) -> dict[str, Any]:
        self.thread.join()
        return {"ranker_swaps_published": len(self.rankers)}


def seed_ranking(cache: Any, item_ids: list[str], rng: np.random.Generator,
                 base: Settings) -> str:
    """What the ranking stage reads, as the worker would have written it: 50 stored
    co-occurring items per item, a stream clock with the hybrid model's sparse part (so
    every request also has co-occurrence candidates), and a ranker: the latest the
    bootstrap saved (``{model_dir}/rankers``), else one of the default size (200 trees
    of 15 leaves) fitted to random examples; its cost per request is that of any."""
    from common.hot_users import HotUsers
    from common.session_query import SparseQuery, StreamClock
    from ranking.features import FEATURES
    from ranking.ranker import train_ranker
    from streams.model_files import ranker_dir
    from streams.ranker_training import load_latest_ranker, publish_ranker

    n = len(item_ids)
    for start in range(0, n, 5_000):
        cache.put_similar({item_ids[j]: ([item_ids[x] for x in rng.integers(0, n, 50)],
                                         sorted(rng.random(50).tolist(), reverse=True))
                           for j in range(start, min(n, start + 5_000))})
    now = int(time.time() * 1000)
    HotUsers(cache.r, cache.keys, 3600.0).put_clock(StreamClock(
        now, now, 1800.0, SparseQuery(3.0, 10, 0.95, {"click": 1.0, "view": 0.5,
                                                      "purchase": 2.0, "rating": 1.0})))
    ranker = load_latest_ranker(ranker_dir(base))
    if ranker is None:
        x = rng.normal(size=(62_000, len(FEATURES))).astype(np.float32)
        y = (x[:, 0] + 0.5 * rng.normal(size=len(x)) > 1.5).astype(np.float32)
        ranker = train_ranker(x, y, [31] * 2000, version="bench-synthetic")
    publish_ranker(cache, ranker)
    return ranker.version


def bench_api(args: argparse.Namespace, tmp: Path) -> None:
    import requests

    from common.clients import mongo_client, redis_client
    from common.stores import ItemCache, UserDoc, UserStore, as_clicks
    from devstack.stack import StackManager
    from faiss_server.client import FaissClient

    if shutil.which("wrk") is None:
        emit({"bench": "api", "skipped": "wrk not installed (apt-get install -y wrk)"})
        return
    base = Settings.from_env()
    StackManager(base).up()
    fport, aport = free_port(), free_port()
    tag = os.getpid()
    s = Settings.from_env(mongo_db=f"recsys_bench_{tag}", redis_prefix=f"recsys-bench-{tag}:",
                          statsd_prefix="recsys-bench", faiss_port=fport,
                          faiss_url=f"http://127.0.0.1:{fport}", api_port=aport)
    rng = np.random.default_rng(1)
    item_ids, vectors, user_vectors = catalogue(args, base, rng)
    n_items, n_users, dim = len(item_ids), len(user_vectors), vectors.shape[1]
    r = redis_client(s, timeout_s=5)
    cache = ItemCache(r, s.redis_prefix)
    for start in range(0, n_items, 10_000):
        cache.put_items({i: {"title": f"Item {i}", "genre": n % 20, "genres": [f"g{n % 20}"],
                             "year": 1950 + n % 70}
                         for n, i in enumerate(item_ids[start:start + 10_000], start)})
    cache.mark_unavailable(item_ids[::500])
    cache.set_popular({i: float(n_items - n) for n, i in enumerate(item_ids[:1000])})
    ranker_version = seed_ranking(cache, item_ids, rng, base)
    mc = mongo_client(s, timeout_ms=10_000)
    mc.drop_database(s.mongo_db)
    store = UserStore(mc[s.mongo_db])
    now_ms = int(time.time() * 1000)  # the users' last event: their sessions are live
    t0 = time.perf_counter()
    for start in range(0, n_users, 1000):
        store.upsert_many([UserDoc(f"user{u}", user_vectors[u].tolist(), "bench",
                                   recent=as_clicks(item_ids[j]
                                                    for j in rng.integers(0, n_items, 20)),
                                   n_events=20, last_event_ms=now_ms)
                           for u in range(start, min(n_users, start + 1000))])
    seed_s = time.perf_counter() - t0

    faiss = ServiceProcess(["faiss", "--kind", "hnsw", "--hnsw-m", "16", "--ef-search", "64",
                            "--dim", str(dim), "--data-dir", "none"], fport, s,
                           log_path=tmp / "faiss-api.log").start()
    try:
        FaissClient(faiss.url, s.faiss_api_key, read_timeout_s=60).load_version(
            (item_ids, vectors), "bench-v1")
        rankings = {"on": [True], "off": [False], "both": [False, True]}[args.ranking]
        for mode, ranking in [(m, rk) for m in (["stream"] if args.quick else
                                                 ["stream", "ttl"]) for rk in rankings]:
            cold = ["--user-cache-preload", "0"] if args.cold else []
            os.environ["RECSYS_API_RANKING"] = "1" if ranking else "0"  # the API's config
            api = ServiceProcess(["api", "--workers", str(args.api_workers),
                                  "--user-cache", mode, "--user-cache-ttl", "0.5", *cold],
                                 aport, s, log_path=tmp / "api.log").start()
            try:
                if not args.cold:
                    with requests.Session() as http:
                        for _ in range(200):  # warm connections and caches
                            http.get(f"{api.url}/v1/recommendations", timeout=5,
                                     params={"user_id": f"user{rng.integers(n_users)}"})
                    time.sleep(1.0)  # let the stream-mode warm-up (every user) finish
                # with --filter: unfiltered, each filter, unfiltered again (same processes)
                plan = [None, *args.filter, None] if args.filter and mode == "stream" \
                    else [None]
                swapper = RankerSwaps(cache, args.swap_rankers, args.duration) \
                    if ranking and args.swap_rankers else None
                runs = [(qs, run_wrk(args, tmp, api, faiss, n_users, qs)) for qs in plan]
                result = runs[0][1]
                if swapper is not None:
                    result.update(swapper.join())
                fresh_docs = store.get_many([f"user{u}" for u in range(n_users - 20, n_users)])
                result.update(freshness(api.url, store, list(fresh_docs.values()), 20))
                ready = requests.get(f"{api.url}/ready", timeout=5).json()["checks"]
                uc = ready.get("user_cache", {})
            finally:
                api.stop()
            hit_ratio = uc.get("hits", 0) / max(1, uc.get("hits", 0) + uc.get("misses", 0))
            base_p99 = [r["api_p99_ms"] for qs, r in runs if qs is None]
            for qs, r in runs[1:]:
                emit({"bench": "api-filter", "filter": qs, **r, "user_cache": mode,
                      "unfiltered_p99_ms": base_p99,
                      "p99_delta_ms": round(r["api_p99_ms"] - float(np.mean(base_p99)), 2)
                      if qs else None,
                      "dataset": args.dataset, "n_items": n_items,
                      "note": "filters over item attribute `genre` = n % 20 of item n"})
            emit({"bench": "api", **result, "ranking": ranking,
                  "ranker_version": ranker_version if ranking else None,
                  "user_cache": mode, "user_cache_ttl_s": 0.5,
                  "user_cache_start": "cold" if args.cold else "every user preloaded",
                  "user_cache_hit_ratio_one_worker": round(hit_ratio, 3),
                  "dataset": args.dataset, "workers": args.api_workers,
                  "connections": args.connections,
                  "duration_s": args.duration, "n_users": n_users, "n_items": n_items,
                  "faiss_index": "hnsw M16 ef64", "seed_users_s": round(seed_s, 1)})
    finally:
        faiss.stop()
        keys = list(r.scan_iter(match=f"{s.redis_prefix}*", count=1000))
        if keys:
            r.delete(*keys)
        mc.drop_database(s.mongo_db)


def run_wrk(args: argparse.Namespace, tmp: Path, api: Any, faiss: Any, n_users: int,
            filter_qs: str | None) -> dict[str, Any]:
    """One closed-loop ``wrk`` run on ``/v1/recommendations`` (``filter_qs`` appended to
    every request, e.g. ``genre_max=9``): its figures plus CPU per request and load."""
    lua = tmp / "users.lua"
    lua.write_text(WRK_LUA % {"seed": 7, "n_users": n_users,
                              "extra": f"&{filter_qs}" if filter_qs else ""})
    cpu0 = cpu_times()
    own0 = [group_cpu_s(p.proc.pid) for p in (api, faiss)]
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(args.connections), "-d", f"{args.duration}s",
         "--latency", "-s", str(lua), api.url], capture_output=True, text=True,
        timeout=args.duration + 60, check=True).stdout
    cpu1 = cpu_times()
    own1 = [group_cpu_s(p.proc.pid) for p in (api, faiss)]
    result = parse_wrk(out)
    n_req = max(1, result["requests"])
    result["cpu_us_per_req_api"] = round((own1[0] - own0[0]) * 1e6 / n_req)
    result["cpu_us_per_req_faiss"] = round((own1[1] - own0[1]) * 1e6 / n_req)
    result["cpu_busy"] = round((cpu1[0] - cpu0[0]) / max(1.0, cpu1[1] - cpu0[1]), 3)
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return result


# --- (b) ANN through the FAISS service --------------------------------------------------------
def bench_ann_on(name: str, ids: list[str], x: np.ndarray, queries: np.ndarray,
                 service_args: list[str], args: argparse.Namespace, tmp: Path,
                 settings: Settings) -> None:
    from faiss_server.client import FaissClient
    from faiss_server.protocol import write_npz

    k = 10
    t0 = time.perf_counter()
    truth = exact_top(x, queries, k)
    exact_s = time.perf_counter() - t0
    export = settings.local_dir / "bench" / f"{name}.npz"
    export.parent.mkdir(parents=True, exist_ok=True)
    export.write_bytes(write_npz(ids, x))
    port = free_port()
    s = Settings.from_env(faiss_port=port, faiss_url=f"http://127.0.0.1:{port}")
    proc = ServiceProcess([*service_args, "--dim", str(x.shape[1]), "--data-dir", "none"], port, s,
                          log_path=tmp / f"faiss-{name}.log").start()
    try:
        client = FaissClient(proc.url, s.faiss_api_key, read_timeout_s=5)
        t0 = time.perf_counter()
        info = client.load_version(export, f"{name}-v1")
        load_s = time.perf_counter() - t0
        for q in queries[:50]:  # warm-up
            client.search(q, k)
        lat: list[float] = []
        hits = 0
        for qi, q in enumerate(queries):
            t = time.perf_counter()
            res = client.search(q, k)
            lat.append(time.perf_counter() - t)
            got = {int(i[len("x"):]) for i, _ in res.results[0]}
            hits += len(got & set(truth[qi].tolist()))
    finally:
        proc.stop()
        export.unlink(missing_ok=True)
    emit({"bench": f"ann_{name}", "n_items": len(ids), "dim": int(x.shape[1]),
          "index": info["kind"], "params": {k2: v for k2, v in info["params"].items()
                                            if k2.startswith(info["kind"])},
          "ann_recall@10": round(hits / (k * len(queries)), 4),
          "ann_p50_ms": percentile_ms(lat, 50), "ann_p99_ms": percentile_ms(lat, 99),
          "queries": len(queries), "build_and_swap_s": round(load_s, 1),
          "index_build_ms": info["built_ms"], "exact_search_s": round(exact_s, 1)})


def bench_ann(args: argparse.Namespace, tmp: Path) -> None:
    settings = Settings.from_env()
    n = 100_000 if args.quick else 1_000_000
    nlist = 1024 if args.quick else 4096
    x = clustered(n + args.queries, 64, 1000, seed=3)
    queries, x = x[n:], x[:n]
    ids = [f"x{i}" for i in range(n)]
    kind_args = {
        "ivf": ["faiss", "--kind", "ivf", "--nlist", str(nlist), "--nprobe", str(args.nprobe)],
        "hnsw": ["faiss", "--kind", "hnsw", "--hnsw-m", "32", "--ef-construction", "64",
                 "--ef-search", str(args.ef_search)],
    }
    for kind in args.ann_kinds.split(","):
        bench_ann_on(f"synthetic_{kind}", ids, x, queries, kind_args[kind], args, tmp, settings)
    del x
    exports = sorted((settings.model_dir / "export").glob("*/item_vectors.npy"))
    if not exports:
        emit({"bench": "ann_movielens", "skipped": "no bootstrap export under "
              f"{settings.model_dir / 'export'} (run python -m scripts.bootstrap)"})
        return
    folder = exports[-1].parent
    ml_items = np.load(folder / "item_vectors.npy", allow_pickle=False).astype(np.float32)
    ml_users = np.load(folder / "user_vectors.npy", allow_pickle=False).astype(np.float32)
    # MovieLens has 1,682 items: grow the trained item vectors to ``n`` by jittering
    # randomly chosen ones (5% of their spread), and query with trained user vectors.
    rng = np.random.default_rng(1)
    base = ml_items[rng.integers(0, len(ml_items), n)]
    ml_x = base + 0.05 * ml_items.std(0) * rng.standard_normal(base.shape).astype(np.float32)
    q = ml_users[rng.choice(len(ml_users), min(args.queries, len(ml_users)), replace=False)]
    ml_ids = [f"m{i}" for i in range(n)]
    for kind in args.ann_kinds.split(","):
        bench_ann_on(f"movielens_{kind}", ml_ids, ml_x, q, kind_args[kind], args, tmp, settings)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes, shorter runs")
    p.add_argument("--only", choices=["api", "ann"])
    p.add_argument("--duration", type=int, default=None, help="wrk seconds per run")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--dataset", choices=["synthetic", "movielens"], default="synthetic",
                   help="API catalogue: synthetic clustered, or the MovieLens bootstrap export")
    p.add_argument("--cold", action="store_true",
                   help="API user cache starts empty (no preload, no warm-up requests)")
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--swap-rankers", type=int, default=0, metavar="N",
                   help="publish N new rankers during the ranked wrk run (hot swaps)")
    p.add_argument("--ranking", choices=["on", "off", "both"], default="on",
                   help="the API's ranking stage (RECSYS_API_RANKING); both: off, then on")
    p.add_argument("--queries", type=int, default=None, help="ANN queries")
    p.add_argument("--ann-kinds", default="ivf,hnsw")
    p.add_argument("--nprobe", type=int, default=128)
    p.add_argument("--ef-search", type=int, default=96)
    p.add_argument("--filter", action="append", default=[], metavar="QS",
                   help="also run with this attribute filter appended to every request "
                        "(repeatable; e.g. genre_max=9): unfiltered, each filter, "
                        "unfiltered again, on the same processes")
    args = p.parse_args(argv)
    args.duration = args.duration or (10 if args.quick else 20)
    args.queries = args.queries or (500 if args.quick else 2000)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as d:
        tmp = Path(d)
        if args.only in (None, "api"):
            bench_api(args, tmp)
        if args.only in (None, "ann"):
            bench_ann(args, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
