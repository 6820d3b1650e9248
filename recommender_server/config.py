"""Configuration of the recommender API: service URLs from :class:`Settings`, tuning here.

Defaults are class attributes; ``ApiConfig.from_settings(settings, **overrides)`` takes
keyword overrides (``python -m scripts.serve api --user-cache-ttl 0`` passes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.settings import Settings


@dataclass(frozen=True)
class ApiConfig:
    settings: Settings
    max_k: int = 100
    #: Seconds a user document is served from the in-process cache. A click is visible
    #: at most this long after the worker wrote it (the SLO is 1 s end to end); ``0``
    #: turns the cache off. SecantusDB answers ~2,000 finds/s, so at ≥ 1,000 req/s
    #: repeated users must come from here.
    user_cache_ttl_s: float = 0.5
    user_cache_max: int = 200_000
    #: The popular list is rebuilt by the worker every few seconds; re-read it at most
    #: this often.
    popular_ttl_s: float = 1.0
    #: Extra candidates asked of FAISS to make up for unavailable items filtered here.
    candidate_slack: int = 10
    #: At most this many of the newest history items are sent as FAISS exclusions.
    max_history_exclude: int = 500
    faiss_connect_timeout_s: float = 0.05
    faiss_read_timeout_s: float = 0.2
    mongo_timeout_ms: int = 250
    redis_timeout_s: float = 0.25
    #: After a dependency error, skip that dependency (answer from the fallback at once)
    #: for this long, then let one request probe it again.
    breaker_cooldown_s: float = 0.5
    metrics_suffix: str = "api"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ApiConfig:
        return cls(settings=settings, **overrides)
