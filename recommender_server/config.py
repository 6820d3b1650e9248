"""Configuration of the recommender API: service URLs from :class:`Settings`, tuning here.

Every field is an environment variable ``RECSYS_API_<FIELD>`` (the README's
configuration table, from these field docs), read by the one generic reader of
:mod:`common.settings`. ``ApiConfig.from_env(settings, **overrides)`` layers: defaults,
then the environment, then explicit ``overrides`` (``python -m scripts.serve api
--user-cache ttl --user-cache-ttl 0.5`` passes them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from common.settings import Settings, env_values, setting

USER_CACHE_MODES = ("stream", "ttl", "off")


@dataclass(frozen=True)
class ApiConfig:
    """Everything an API worker process needs."""

    env_prefix: ClassVar[str] = "RECSYS_API_"

    settings: Settings = setting("Connections (URLs, prefixes), from `RECSYS_*`.", env=False)
    max_k: int = setting("Largest `k` a request may ask for.", 100)
    user_cache: str = setting(
        "How each worker caches user documents: `stream` (kept fresh by a MongoDB change "
        "stream, a write shows in ~10-40 ms; read-through on a miss), `ttl` (read-through, "
        "trusted `RECSYS_API_USER_CACHE_TTL_S`) or `off` (every request reads MongoDB).",
        "stream")
    user_cache_ttl_s: float = setting(
        "Seconds a user entry is trusted when no change stream vouches for it (`ttl` mode, "
        "or `stream` mode while the stream is down).", 0.5)
    user_cache_max_age_s: float = setting(
        "`stream` mode safety net: user entries are re-read at least this often.", 60.0)
    user_cache_max: int = setting("Most user documents cached per worker.", 200_000)
    user_cache_max_bytes: int = setting(
        "Bound on the estimated memory of the cached user documents, per worker.",
        256 * 1024 * 1024)
    user_cache_preload: int = setting(
        "`stream` mode: users loaded into the cache in the background once the stream is "
        "live (0: none, each user's first request reads MongoDB).", 100_000)
    catalog_refresh_s: float = setting(
        "Popular list and unavailable set are re-read from Redis at most this often (a "
        "deleted item stops being recommended within this delay).", 1.0)
    item_meta_ttl_s: float = setting(
        "Seconds item metadata is cached per item (a changed one shows within this "
        "delay; a new item's is read at once).", 30.0)
    cooc_cache_ttl_s: float = setting(
        "Seconds an item's co-occurrence list is cached per worker (the sparse part of a "
        "hybrid query reads the lists of the user's last 10 items, the ranker's features "
        "those of all recent items; a list is an aggregate of the whole stream, rewritten "
        "at most every `RECSYS_WORKER_COOC_EXPORT_INTERVAL_S`, and an item not cached is "
        "read at once, so a click's own item is never late). 1 s → 30 s took the ranked "
        "API from 577 to 978 requests/s on MovieLens: the refetches, not the CPU, bounded "
        "it.", 30.0)
    candidate_slack: int = setting(
        "Extra candidates asked of FAISS to make up for unavailable items filtered here.", 10)
    filter_overfetch: int = setting(
        "With a request filter on attributes, candidates asked of a source are at most this "
        "many times `k` + slack: twice what the filter's observed pass rate needs, this "
        "many for a filter not seen yet (it runs here, on the candidates' metadata).", 10)
    filter_max_candidates: int = setting(
        "Most candidates asked of a source for a filtered request; fewer than `k` "
        "passing is answered `partial`. Batched searches add the user's history (up to "
        "`RECSYS_API_FAISS_BATCH_MAX_HISTORY`) to it: keep the sum within the FAISS "
        "service's `RECSYS_FAISS_MAX_K`.", 500)
    filter_pushdown_max_ids: int = setting(
        "A filter at most this many items pass is sent to FAISS as those ids, scored "
        "exactly (`only`), instead of over-fetched; 0: always over-fetch. The ids come "
        "from every item's attributes, held by each API worker "
        "(`RECSYS_API_ATTRIBUTE_INDEX_*`).", 2000)
    attribute_index_max_items: int = setting(
        "Largest catalogue whose attributes an API worker loads for filter pushdown "
        "(beyond it filters are over-fetched).", 200_000)
    attribute_index_preload: bool = setting(
        "Load every item's attributes when a worker starts (in the background), so the "
        "first filtered requests do not wait for it; off: on the first filter.", True)
    attribute_index_refresh_s: float = setting(
        "Seconds between background re-reads of every item's attributes (what filter "
        "pushdown selects by; an item's metadata is re-checked when served).", 60.0)
    ranking: bool = setting(
        "Rank personalised candidates from several sources (FAISS, co-occurrence of the "
        "recent items, popular; how many of each: `RECSYS_RANK_*`) with the learned "
        "ranker the worker publishes; off: the FAISS order (retrieval only). Without a "
        "published ranker yet, the FAISS order.",
        True)
    ranker_refresh_s: float = setting(
        "Seconds between checks for a newly published ranker (swapped in without a "
        "failed request).", 2.0)
    max_history_exclude: int = setting(
        "At most this many of the newest history items are sent as FAISS exclusions.", 500)
    faiss_batch_max: int = setting(
        "Concurrent searches of a worker go to FAISS in batches of at most this many.", 64)
    faiss_batch_inflight: int = setting(
        "Search batches in flight at once per worker (0: every search alone, with "
        "exclusions).", 2)
    faiss_batch_max_history: int = setting(
        "Users with a longer history are searched alone with exclusions (a batched query "
        "asks for `k + len(history)` candidates instead).", 100)
    faiss_idle_s: float = setting(
        "The API drops pooled FAISS connections idle this long (keep it below "
        "`RECSYS_FAISS_KEEP_ALIVE_S`, so it never writes to a connection the service "
        "closed).", 2.0)
    max_body_bytes: int = setting(
        "The API takes no request bodies: a larger one is answered 413.", 65536)
    faiss_connect_timeout_s: float = setting("Connect timeout to the FAISS service.", 0.05)
    faiss_read_timeout_s: float = setting(
        "Bound on one FAISS round trip as the event loop sees it (not shorter: at 500 "
        "connections a worker's loop runs 0.2-0.5 s behind, and a shorter bound turned "
        "that lag into false `faiss_unavailable` answers).", 1.0)
    mongo_timeout_ms: int = setting(
        "Bound on one MongoDB operation of the hot path (server selection, connection, "
        "round trip).", 250)
    redis_timeout_s: float = setting("Redis connect/socket/pool timeout.", 0.25)
    breaker_cooldown_s: float = setting(
        "After a dependency error, answer from the fallback at once for this long, then "
        "probe the dependency again.", 0.5)
    metrics_flush_s: float = setting(
        "Counters (fallback reasons, sources, cache hits) are sent to statsd at most this "
        "often, aggregated.", 1.0)
    metrics_timing_rate: float = setting(
        "Share of requests whose latency is sent as a statsd timer (sampled).", 0.1)
    metrics_suffix: str = setting("statsd prefix suffix (`{RECSYS_STATSD_PREFIX}.api.*`).",
                                  "api")

    def __post_init__(self) -> None:
        if self.user_cache not in USER_CACHE_MODES:
            raise ValueError(f"user_cache must be one of {USER_CACHE_MODES}, "
                             f"got {self.user_cache!r}")

    @classmethod
    def from_env(cls, settings: Settings | None = None, env: Mapping[str, str] | None = None,
                 **overrides: Any) -> ApiConfig:
        """Defaults, then ``RECSYS_API_*`` from ``env`` (``os.environ``), then ``overrides``.

        >>> ApiConfig.from_env(env={"RECSYS_API_MAX_K": "20"}, user_cache="ttl").max_k
        20
        """
        settings = settings if settings is not None else Settings.from_env(env)
        return cls(settings=settings, **{**env_values(cls, env), **overrides})
