"""Configuration of the recommender API: service URLs from :class:`Settings`, tuning here.

Defaults are class attributes; ``ApiConfig.from_settings(settings, **overrides)`` takes
keyword overrides (``python -m scripts.serve api --user-cache ttl --user-cache-ttl 0.5``
passes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.settings import Settings

USER_CACHE_MODES = ("stream", "ttl", "off")


@dataclass(frozen=True)
class ApiConfig:
    settings: Settings
    max_k: int = 100
    #: How user documents are cached in each worker (see :mod:`recommender_server.caches`):
    #: ``stream`` — kept fresh by a MongoDB change stream (a write shows in ~10-40 ms),
    #: read-through on a miss; ``ttl`` — read-through, trusted ``user_cache_ttl_s``;
    #: ``off`` — every request reads MongoDB (SecantusDB: ~2,000 finds/s at most).
    user_cache: str = "stream"
    #: Seconds an entry is trusted when no change stream vouches for it (``ttl`` mode,
    #: or ``stream`` mode while the stream is down). The freshness SLO is 1 s end to end.
    user_cache_ttl_s: float = 0.5
    #: Safety net in ``stream`` mode: entries are re-read at least this often anyway.
    user_cache_max_age_s: float = 60.0
    user_cache_max: int = 200_000
    #: Bound on the estimated memory of the cached user documents, per worker.
    user_cache_max_bytes: int = 256 * 1024 * 1024
    #: ``stream`` mode: once the stream is live, warm the cache with up to this many
    #: users in the background (0: no warm-up, every user's first request reads MongoDB).
    user_cache_preload: int = 100_000
    #: Popular list and unavailable set are re-read from Redis at most this often (a
    #: deleted item stops being recommended within this delay).
    catalog_refresh_s: float = 1.0
    #: Item metadata (display attributes) is cached per item this long: a new item's
    #: metadata is read at once (a miss), a changed one shows within this delay.
    item_meta_ttl_s: float = 30.0
    #: Extra candidates asked of FAISS to make up for unavailable items filtered here.
    candidate_slack: int = 10
    #: At most this many of the newest history items are sent as FAISS exclusions.
    max_history_exclude: int = 500
    #: Concurrent searches of a worker are sent to FAISS in batches of at most this many
    #: (see :mod:`recommender_server.batching`); ``faiss_batch_inflight`` batches at
    #: once. ``faiss_batch_inflight = 0`` sends every search alone, with exclusions.
    faiss_batch_max: int = 64
    faiss_batch_inflight: int = 2
    #: Users with a longer history are searched alone with exclusions (a batched query
    #: asks for ``k + len(history)`` candidates instead).
    faiss_batch_max_history: int = 100
    #: Pooled FAISS connections idle longer than this are closed instead of reused:
    #: below the service's keep-alive (``RECSYS_FAISS_KEEP_ALIVE_S``), so the API never
    #: writes to a connection the service has already closed (``RECSYS_API_FAISS_IDLE_S``).
    faiss_idle_s: float = 2.0
    #: The API takes no request bodies; a larger one gets 413 (``RECSYS_API_MAX_BODY_BYTES``).
    max_body_bytes: int = 65536
    faiss_connect_timeout_s: float = 0.05
    #: Bound on one FAISS round trip, as the event loop sees it. Not shorter: at 500
    #: concurrent connections a worker's loop runs ~0.2-0.5 s behind, and a 0.2 s bound
    #: turned that lag into "FAISS unavailable" (10-20% popular answers while FAISS
    #: was fine). A real outage costs only the requests in flight when it starts: the
    #: breaker then answers the rest at once and probes FAISS in the background.
    faiss_read_timeout_s: float = 1.0
    mongo_timeout_ms: int = 250
    redis_timeout_s: float = 0.25
    #: After a dependency error, skip that dependency (answer from the fallback at once)
    #: for this long, then let one request probe it again.
    breaker_cooldown_s: float = 0.5
    #: Counters (fallback reasons, sources, cache hits) are sent to statsd at most this
    #: often, aggregated, instead of one UDP packet per event.
    metrics_flush_s: float = 1.0
    #: Share of requests whose latency is sent as a statsd timer (sampled, rate-tagged).
    metrics_timing_rate: float = 0.1
    metrics_suffix: str = "api"

    def __post_init__(self) -> None:
        if self.user_cache not in USER_CACHE_MODES:
            raise ValueError(f"user_cache must be one of {USER_CACHE_MODES}, "
                             f"got {self.user_cache!r}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ApiConfig:
        values: dict[str, Any] = {"faiss_idle_s": settings.api_faiss_idle_s,
                                  "max_body_bytes": settings.api_max_body_bytes}
        return cls(settings=settings, **{**values, **overrides})
