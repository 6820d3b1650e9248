"""Factories for service clients built from :class:`~common.settings.Settings`.

Processes call these once at start-up and pass the clients down; nothing connects at
import time. Timeouts are explicit so a dead dependency fails fast instead of hanging
a request or an agent.
"""

from __future__ import annotations

import pymongo
import redis
import statsd
from pymongo.database import Database

from common.settings import Settings


def redis_client(settings: Settings, timeout_s: float = 1.0) -> redis.Redis:
    """A pooled Redis client; string replies decoded to ``str``."""
    return redis.Redis.from_url(
        settings.redis_url, decode_responses=True,
        socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
    )


def mongo_client(settings: Settings, timeout_ms: int = 2000) -> pymongo.MongoClient:
    """A MongoDB client that gives up on a dead server within ``timeout_ms``."""
    return pymongo.MongoClient(
        settings.mongo_uri,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms, 5000),
    )


def mongo_db(settings: Settings, client: pymongo.MongoClient | None = None) -> Database:
    """The project database (``settings.mongo_db``)."""
    return (client or mongo_client(settings))[settings.mongo_db]


def statsd_client(settings: Settings, prefix_suffix: str = "") -> statsd.StatsClient:
    """A UDP statsd client; metric names are ``{statsd_prefix}[.suffix].name``."""
    prefix = settings.statsd_prefix + (f".{prefix_suffix}" if prefix_suffix else "")
    return statsd.StatsClient(settings.statsd_host, settings.statsd_port, prefix=prefix)
