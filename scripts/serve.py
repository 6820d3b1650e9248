"""Start the FAISS service or the recommender API (also used by tests and benchmarks).

    python -m scripts.serve faiss [--port 8081] [--kind flat|hnsw|ivf] [--dim 64] ...
    python -m scripts.serve api [--port 8080] [--workers 2] [--user-cache stream|ttl|off]
                                [--user-cache-ttl 0.5] [--user-cache-preload 100000]

Both bind 127.0.0.1 and read the rest of their configuration from ``RECSYS_*`` env vars
(:class:`common.settings.Settings`). ``faiss`` runs one uvicorn worker (the index is
in-process state, single writer). ``api`` pre-forks ``--workers`` uvicorn processes (one
per core: each is an asyncio event loop overlapping many requests) on one listening
socket; each builds its app (and its clients) after the fork and runs the ASGI lifespan
(which starts its MongoDB change stream on ``users``).

:class:`devstack.processes.ServiceProcess` runs either as a child process and waits until
``/health`` answers — the integration tests and ``scripts.bench_serving`` use it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
from pathlib import Path
from typing import Any

from common.settings import Settings

HOST = "127.0.0.1"


# --- process entry points ----------------------------------------------------------------
def _uvicorn_config(app: Any, port: int, lifespan: str = "off", **kw: Any) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=HOST, port=port, loop="uvloop", http="httptools",
                          access_log=False, log_level="warning", lifespan=lifespan,
                          backlog=4096, **kw)


def run_faiss(args: argparse.Namespace) -> None:
    # The OpenMP set-up (wait policy, search threads) is the service's own start-up
    # (faiss_server/index.py, faiss_server.app.Startup): the same under asgi.py.
    import uvicorn

    from faiss_server.app import create_app
    from faiss_server.config import FaissConfig

    settings = Settings.from_env()
    over: dict[str, Any] = {k: v for k, v in {
        "kind": args.kind, "dim": args.dim, "hnsw_m": args.hnsw_m,
        "hnsw_ef_search": args.ef_search, "hnsw_ef_construction": args.ef_construction,
        "ivf_nlist": args.nlist, "ivf_nprobe": args.nprobe}.items() if v is not None}
    if args.data_dir:
        over["data_dir"] = None if args.data_dir == "none" else Path(args.data_dir)
    if args.omp_threads:
        over["omp_threads"] = args.omp_threads
    config = FaissConfig.from_env(settings, **over)
    uvicorn.Server(_uvicorn_config(create_app(config), args.port, lifespan="on",
                                   timeout_keep_alive=settings.faiss_keep_alive_s)).run()


def _api_worker(sock: socket.socket, args: argparse.Namespace) -> None:
    import uvicorn

    from recommender_server.app import create_app
    from recommender_server.config import ApiConfig

    over: dict[str, Any] = {k: v for k, v in {
        "user_cache": args.user_cache, "user_cache_ttl_s": args.user_cache_ttl,
        "user_cache_preload": args.user_cache_preload}.items() if v is not None}
    config = ApiConfig.from_env(Settings.from_env(), **over)
    server = uvicorn.Server(_uvicorn_config(create_app(config), 0, lifespan="on"))
    server.run(sockets=[sock])


def run_api(args: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, args.port))
    sock.listen(4096)
    sock.set_inheritable(True)
    ctx = multiprocessing.get_context("fork")  # children build their clients after the fork
    workers = [ctx.Process(target=_api_worker, args=(sock, args), daemon=True)
               for _ in range(args.workers)]
    for w in workers:
        w.start()

    def stop(signum: int, frame: Any) -> None:
        for w in workers:
            if w.pid:
                os.kill(w.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for w in workers:
        w.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="service", required=True)
    f = sub.add_parser("faiss", help="the FAISS service (one process)")
    f.add_argument("--port", type=int, default=None)
    f.add_argument("--kind", choices=["flat", "hnsw", "ivf"])
    f.add_argument("--dim", type=int)
    f.add_argument("--hnsw-m", type=int)
    f.add_argument("--ef-search", type=int)
    f.add_argument("--ef-construction", type=int)
    f.add_argument("--nlist", type=int)
    f.add_argument("--nprobe", type=int)
    f.add_argument("--data-dir", help="where versions are saved ('none': memory only)")
    f.add_argument("--omp-threads", type=int,
                   help="OpenMP threads for searches (default 1; builds use all cores)")
    a = sub.add_parser("api", help="the recommender API (pre-forked uvicorn workers)")
    a.add_argument("--port", type=int, default=None)
    a.add_argument("--workers", type=int, default=2)
    a.add_argument("--user-cache", choices=["stream", "ttl", "off"],
                   help="user documents: change-stream cache (default), TTL cache, none")
    a.add_argument("--user-cache-ttl", type=float,
                   help="seconds an entry is trusted without the change stream")
    a.add_argument("--user-cache-preload", type=int,
                   help="users loaded into the cache at start (stream mode)")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    if args.service == "faiss":
        args.port = args.port or settings.faiss_port
        run_faiss(args)
    else:
        args.port = args.port or settings.api_port
        run_api(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
