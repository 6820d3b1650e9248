"""The API's dependencies, built once per worker process and passed to ``create_app``.

Also the two small pieces of resilience the handlers share: a TTL cache of user
documents and a circuit breaker per dependency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.stores import ItemCache, UserDoc, UserStore
from faiss_server.client import FaissClient


class Breaker:
    """After a failure, report the dependency as down for ``cooldown_s`` (no waiting on
    timeouts meanwhile); then let requests probe it again."""

    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.open_until = 0.0

    def allow(self) -> bool:
        return self.clock() >= self.open_until

    def failed(self) -> None:
        self.open_until = self.clock() + self.cooldown_s

    def succeeded(self) -> None:
        self.open_until = 0.0


class CachedUsers:
    """``UserStore.get`` behind a per-process cache of ``ttl_s`` seconds (misses cached too).

    Staleness is bounded by ``ttl_s``: a click written by the worker shows at most that
    late. The cache is cleared when it reaches ``max_entries`` (cheap, no LRU bookkeeping).
    """

    def __init__(self, store: Any, ttl_s: float, max_entries: int = 200_000,
                 clock: Callable[[], float] = time.monotonic, statsd: Any = None) -> None:
        self.store = store
        self.statsd = statsd
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, tuple[float, UserDoc | None]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, user_id: str) -> UserDoc | None:
        now = self.clock()
        entry = self._entries.get(user_id)
        if entry is not None and entry[0] > now:
            self.hits += 1
            if self.statsd is not None:
                self.statsd.incr("user_cache.hit")
            return entry[1]
        self.misses += 1
        if self.statsd is not None:
            self.statsd.incr("user_cache.miss")
        doc = self.store.get(user_id)
        if self.ttl_s > 0:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[user_id] = (now + self.ttl_s, doc)
        return doc


class TTLValue:
    """One value recomputed at most every ``ttl_s`` seconds (the popular list)."""

    def __init__(self, load: Callable[[], Any], ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.load, self.ttl_s, self.clock = load, ttl_s, clock
        self._value: Any = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self.clock() < self._expires:
            return self._value
        with self._lock:
            if self.clock() >= self._expires:
                self._value = self.load()
                self._expires = self.clock() + self.ttl_s
        return self._value


@dataclass
class Dependencies:
    """What the handlers talk to. Tests pass fakes or real clients; ``build`` makes real ones."""

    users: Any  # .get(user_id) -> UserDoc | None  (CachedUsers over UserStore)
    items: ItemCache
    faiss: FaissClient
    statsd: Any = None
    ping_mongo: Callable[[], Any] = lambda: None
    ping_redis: Callable[[], Any] = lambda: None

    @classmethod
    def build(cls, config: Any) -> Dependencies:
        """Real clients from ``config.settings`` (lazy: sockets open on first use)."""
        import pymongo

        from common.clients import redis_client, statsd_client

        s = config.settings
        t = config.mongo_timeout_ms
        mongo = pymongo.MongoClient(s.mongo_uri, serverSelectionTimeoutMS=t,
                                    connectTimeoutMS=t, socketTimeoutMS=t, connect=False)
        db = mongo[s.mongo_db]
        r = redis_client(s, timeout_s=config.redis_timeout_s)
        faiss = FaissClient.from_settings(s, connect_timeout_s=config.faiss_connect_timeout_s,
                                          read_timeout_s=config.faiss_read_timeout_s)
        statsd = statsd_client(s, config.metrics_suffix)
        return cls(
            users=CachedUsers(UserStore(db), config.user_cache_ttl_s, config.user_cache_max,
                              statsd=statsd),
            items=ItemCache(r, s.redis_prefix),
            faiss=faiss,
            statsd=statsd,
            ping_mongo=lambda: mongo.admin.command("ping"),
            ping_redis=r.ping,
        )
