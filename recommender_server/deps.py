"""The API's dependencies, built once per worker process and passed to ``create_app``.

Everything here is asyncio: one worker process overlaps many requests on one event
loop (``redis.asyncio``, pymongo's ``AsyncMongoClient``, the pooled
:class:`~faiss_server.aclient.AsyncFaissClient`), so 2 workers use 2 cores. Clients are
created lazily and connect on first use, inside the worker's event loop; background
tasks (the user change stream, the cache warm-up) start with the ASGI lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field

from common.stores import RedisKeys
from faiss_server.aclient import AsyncFaissClient
from recommender_server.caches import Catalog, UserCache
from recommender_server.config import ApiConfig
from recommender_server.hot_users import HotUserReader
from recommender_server.ports import FaissReader, HotLookup, Stats, UserLookup

log = logging.getLogger(__name__)

_keep: set[asyncio.Task[None]] = set()  # strong refs to fire-and-forget tasks

#: A coroutine factory: a probe, a ping, a closer (its result is not used).
Call = Callable[[], Awaitable[object]]
#: A background task's coroutine factory (runs for the life of the app).
Background = Callable[[], Coroutine[object, object, None]]


class Breaker:
    """Circuit breaker with half-open probing.

    After a failure the dependency is reported down for ``cooldown_s``: requests fall
    back at once instead of waiting on timeouts. Then it is *half-open*: with a
    ``probe`` (a coroutine factory, e.g. a MongoDB ping), the breaker runs it in the
    background, every ``cooldown_s`` until it succeeds, while requests keep falling
    back; its success closes the breaker for everyone, its failure (or ``probe_timeout_s``
    without an answer) keeps it open and the next probe runs ``probe_interval_s`` later
    (no request waits on it, so probing often costs users nothing and recovery is seen
    within a few hundred ms). Without a ``probe``, exactly one request goes
    through as the probe (its outcome is reported with :meth:`succeeded` /
    :meth:`failed`); a probe that reports nothing within ``cooldown_s`` lets the next
    request probe.

    Why: when the breaker simply reopened to every request after the cooldown, a
    stalled dependency held all of them on its timeout at once, and after it recovered
    the answers stayed popular fallbacks for seconds (9 s after a 10 s MongoDB stall).
    """

    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.monotonic,
                 probe: Call | None = None,
                 probe_timeout_s: float = 1.0, probe_interval_s: float = 0.1) -> None:
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.probe, self.probe_timeout_s = probe, probe_timeout_s
        self.probe_interval_s = probe_interval_s
        self.open_until = 0.0
        self.probe_until = 0.0
        self.probes = 0

    def allow(self) -> bool:
        if self.open_until == 0.0:
            return True
        now = self.clock()
        if now < self.open_until or now < self.probe_until:
            return False
        # At most one probe at a time: the next may start once this one has timed out.
        self.probe_until = now + (self.probe_timeout_s if self.probe is not None
                                  else self.cooldown_s)
        self.probes += 1
        if self.probe is None:
            return True  # this request is the probe
        task = asyncio.get_running_loop().create_task(self._run_probe(self.probe))
        _keep.add(task)
        task.add_done_callback(_keep.discard)
        return False

    async def _run_probe(self, probe: Call) -> None:
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                await probe()
        except Exception as exc:  # any probe failure keeps the dependency marked down
            log.debug("probe failed: %s", exc)
            self.open_until = self.clock() + self.probe_interval_s
            self.probe_until = 0.0
        else:
            self.succeeded()

    @property
    def is_open(self) -> bool:
        """Whether the dependency is currently reported down (no side effect)."""
        return self.open_until != 0.0

    def failed(self) -> None:
        self.open_until = self.clock() + self.cooldown_s
        self.probe_until = 0.0

    def succeeded(self) -> None:
        self.open_until = self.probe_until = 0.0


async def _nothing() -> None:
    return None


@dataclass
class Dependencies:
    """What the handlers talk to. Tests pass fakes; :meth:`build` makes real ones.

    ``users.get(id)``, ``hot.get(id)``, ``catalog.fresh()/.popular/.unavailable/.metadata(ids)``
    and ``faiss.search/similar/health`` are coroutines (see :mod:`recommender_server.caches`).
    ``background`` are coroutine factories run for the life of the app (lifespan).
    """

    users: UserLookup
    catalog: Catalog
    faiss: FaissReader
    statsd: Stats | None = None
    #: The worker's hot user state (read first; ``None``: MongoDB documents only).
    hot: HotLookup | None = None
    ping_mongo: Call = _nothing
    ping_redis: Call = _nothing
    background: list[Background] = field(default_factory=list)
    closers: list[Call] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(fn()) for fn in self.background]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for close in self.closers:
            try:
                await close()
            except Exception as exc:  # closing a dead client: nothing left to do
                log.debug("close: %s", exc)

    @classmethod
    def build(cls, config: ApiConfig) -> Dependencies:
        """Real clients from ``config.settings`` (lazy: sockets open on first use)."""
        import redis.asyncio
        from pymongo import AsyncMongoClient

        from common.clients import statsd_client

        s = config.settings
        t = config.mongo_timeout_ms
        # timeoutMS bounds a whole operation (server selection, connection checkout and
        # the round trip): without it, requests caught by a stall queued behind pymongo's
        # connection set-up for seconds.
        # heartbeatFrequencyMS: pymongo's monitor long-polls the server for up to this
        # long (10 s by default); after a stall it is what tells the client the server is
        # back, so keep it short (1 hello/s per client).
        mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            s.mongo_uri, serverSelectionTimeoutMS=t, connectTimeoutMS=t, timeoutMS=t,
            heartbeatFrequencyMS=1000, connect=False)
        # The change stream's getMore waits up to 200 ms server-side: its own client, so
        # the hot path's short socket timeout does not apply to it.
        stream_mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            s.mongo_uri, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000,
            socketTimeoutMS=5000, heartbeatFrequencyMS=1000, connect=False)
        # A blocking pool: under a burst (hundreds of requests in flight per worker) a
        # request waits briefly for one of the 100 connections instead of failing with
        # MaxConnectionsError (which dropped the answers' metadata as "degraded").
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            s.redis_url, max_connections=100, timeout=config.redis_timeout_s,
            decode_responses=True, socket_timeout=config.redis_timeout_s,
            socket_connect_timeout=config.redis_timeout_s)
        r = redis.asyncio.Redis(connection_pool=pool)
        faiss = AsyncFaissClient(s.faiss_url, connect_timeout_s=config.faiss_connect_timeout_s,
                                 read_timeout_s=config.faiss_read_timeout_s,
                                 max_idle_s=config.faiss_idle_s)
        mode = config.user_cache
        users = UserCache(mongo[s.mongo_db]["users"],
                          ttl_s=config.user_cache_ttl_s if mode != "off" else 0.0,
                          max_age_s=config.user_cache_max_age_s,
                          max_entries=config.user_cache_max,
                          max_bytes=config.user_cache_max_bytes,
                          stream_collection=stream_mongo[s.mongo_db]["users"])
        background: list[Background] = []
        if mode == "stream":
            async def warm() -> None:
                # In its own task: the stream keeps applying events during the warm-up.
                async def run() -> None:
                    try:
                        n = await users.preload(config.user_cache_preload)
                        log.info("user cache warmed with %d users", n)
                    except Exception as exc:  # warm-up is an optimisation only
                        log.warning("user cache warm-up failed: %s", exc)
                warm_task = asyncio.get_running_loop().create_task(run())
                _keep.add(warm_task)
                warm_task.add_done_callback(_keep.discard)

            background.append(lambda: users.follow(on_live=warm))

        async def ping_mongo() -> object:
            return await mongo.admin.command("ping")

        async def close_mongo() -> None:
            await mongo.close()
            await stream_mongo.close()

        return cls(
            users=users,
            catalog=Catalog(r, RedisKeys(s.redis_prefix), refresh_s=config.catalog_refresh_s,
                            meta_ttl_s=config.item_meta_ttl_s,
                            cooc_ttl_s=config.cooc_cache_ttl_s),
            faiss=faiss,
            statsd=statsd_client(s, config.metrics_suffix),
            hot=HotUserReader(r, RedisKeys(s.redis_prefix)),
            ping_mongo=ping_mongo,
            ping_redis=r.ping,
            background=background,
            closers=[faiss.close, r.aclose, close_mongo],
        )
