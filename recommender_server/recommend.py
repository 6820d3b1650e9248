"""What the API answers, independent of HTTP: personalised, similar and popular items.

A request never fails because a dependency is missing or down. Each lookup that can fail
is guarded by a :class:`~recommender_server.deps.Breaker`; the answer then comes from the
popular list and says so (``source: "popular"``, ``fallback_reason``). Reasons:

- ``unknown_user`` — no document in MongoDB ``users``
- ``no_vector`` — the document has no vector yet
- ``mongo_unavailable`` — MongoDB errored or timed out (or its breaker is open)
- ``faiss_unavailable`` — FAISS service refused, timed out, 5xx (or breaker open)
- ``index_not_ready`` — FAISS service has no index version loaded
- ``bad_query`` — FAISS rejected the user vector (e.g. dimension differs from the index)
- ``no_candidates`` — every candidate was seen or unavailable

Redis errors while filtering or fetching metadata degrade the answer (``degraded`` lists
them) instead of failing it.

statsd names (prefix ``{statsd_prefix}.api``): ``fallback.<reason>``,
``dependency_errors.<mongo|redis|faiss>``, ``source.<personalized|popular>``,
``user_cache.hit|miss`` (from :class:`~recommender_server.deps.CachedUsers`), plus the
per-request ``requests.<resource>.<method>.<status>`` / ``latency.<resource>.<method>``
from :mod:`common.http_metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pymongo.errors
import redis

from common.errors import IndexNotReady, ServiceUnavailable
from faiss_server.client import FaissRequestError
from recommender_server.config import ApiConfig
from recommender_server.deps import Breaker, Dependencies, TTLValue

log = logging.getLogger(__name__)

MONGO_ERRORS = (pymongo.errors.PyMongoError,)
REDIS_ERRORS = (redis.RedisError, OSError)
#: How many popular items are kept in process (enough to fill k after exclusions).
POPULAR_DEPTH = 1000


class Recommender:
    """The API's logic over :class:`Dependencies`; thread-safe."""

    def __init__(self, config: ApiConfig, deps: Dependencies) -> None:
        self.config = config
        self.deps = deps
        self.breakers = {name: Breaker(config.breaker_cooldown_s)
                         for name in ("mongo", "redis", "faiss")}
        self._popular = TTLValue(lambda: deps.items.popular(POPULAR_DEPTH), config.popular_ttl_s)

    # --- metrics ----------------------------------------------------------------------
    def _incr(self, name: str) -> None:
        if self.deps.statsd is not None:
            self.deps.statsd.incr(name)

    def _dep_error(self, dep: str, exc: BaseException) -> None:
        self.breakers[dep].failed()
        self._incr(f"dependency_errors.{dep}")
        log.warning("%s error: %s", dep, exc)

    # --- guarded Redis reads ------------------------------------------------------------
    def _unavailable(self, ids: list[str], degraded: list[str]) -> set[str]:
        if not ids or not self.breakers["redis"].allow():
            if ids:
                degraded.append("redis")
            return set()
        try:
            return self.deps.items.unavailable_among(ids)
        except REDIS_ERRORS as exc:
            self._dep_error("redis", exc)
            degraded.append("redis")
            return set()

    def _metadata(self, ids: list[str], degraded: list[str]) -> dict[str, Any]:
        if not ids or not self.breakers["redis"].allow():
            return {}
        try:
            return self.deps.items.get_items(ids)
        except REDIS_ERRORS as exc:
            self._dep_error("redis", exc)
            degraded.append("redis")
            return {}

    def _popular_list(self, degraded: list[str]) -> list[tuple[str, float]]:
        if not self.breakers["redis"].allow():
            degraded.append("redis")
            return []
        try:
            return self._popular.get()
        except REDIS_ERRORS as exc:
            self._dep_error("redis", exc)
            degraded.append("redis")
            return []

    def _popular_fill(self, n: int, skip: set[str], degraded: list[str]) -> list[tuple[str, float]]:
        if n <= 0:
            return []
        ranked = [(i, s) for i, s in self._popular_list(degraded) if i not in skip]
        out: list[tuple[str, float]] = []
        # Filter unavailable items in slices: usually the first slice is enough.
        for start in range(0, len(ranked), max(2 * n, 20)):
            chunk = ranked[start:start + max(2 * n, 20)]
            gone = self._unavailable([i for i, _ in chunk], degraded)
            out += [(i, s) for i, s in chunk if i not in gone]
            if len(out) >= n:
                break
        return out[:n]

    def _render(self, picked: Iterable[tuple[str, float, str]], degraded: list[str]) -> list:
        picked = list(picked)
        meta = self._metadata([i for i, _, _ in picked], degraded)
        return [{"id": i, "score": round(s, 6), "source": src, "metadata": meta.get(i)}
                for i, s, src in picked]

    # --- endpoints ----------------------------------------------------------------------
    def recommend(self, user_id: str, k: int) -> dict[str, Any]:
        reason: str | None = None
        degraded: list[str] = []
        doc = None
        model_version = index_version = None
        candidates: list[tuple[str, float]] = []
        if not self.breakers["mongo"].allow():
            reason = "mongo_unavailable"
        else:
            try:
                doc = self.deps.users.get(user_id)
                self.breakers["mongo"].succeeded()
            except MONGO_ERRORS as exc:
                self._dep_error("mongo", exc)
                reason = "mongo_unavailable"
        if reason is None and doc is None:
            reason = "unknown_user"
        elif doc is not None:
            model_version = doc.model_version or None
            if not doc.vector:
                reason = "no_vector"
        seen = set(doc.history) if doc is not None else set()
        if reason is None:
            assert doc is not None
            reason, index_version, candidates = self._search(doc.vector, doc.history, k)
        gone = self._unavailable([i for i, _ in candidates], degraded)
        personal = [(i, s) for i, s in candidates if i not in gone and i not in seen][:k]
        if reason is None and not personal:
            reason = "no_candidates"
        skip = seen | {i for i, _ in personal}
        fill = self._popular_fill(k - len(personal), skip, degraded)
        source = "personalized" if personal else "popular"
        self._incr(f"source.{source}")
        if reason is not None:
            self._incr(f"fallback.{reason}")
        picked = [(i, s, "personalized") for i, s in personal] + \
                 [(i, s, "popular") for i, s in fill]
        return {
            "user_id": user_id, "k": k, "source": source, "fallback_reason": reason,
            "model_version": model_version, "index_version": index_version,
            "items": self._render(picked, degraded),
            **({"degraded": sorted(set(degraded))} if degraded else {}),
        }

    def _search(self, vector: list[float], history: list[str],
                k: int) -> tuple[str | None, str | None, list[tuple[str, float]]]:
        """``(fallback reason or None, index version, candidates)``."""
        if not self.breakers["faiss"].allow():
            return "faiss_unavailable", None, []
        exclude = history[-self.config.max_history_exclude:]
        try:
            res = self.deps.faiss.search([vector], k + self.config.candidate_slack, exclude)
        except IndexNotReady:
            return "index_not_ready", None, []
        except ServiceUnavailable as exc:
            self._dep_error("faiss", exc)
            return "faiss_unavailable", None, []
        except FaissRequestError as exc:
            log.warning("FAISS rejected a user vector: %s", exc)
            return "bad_query", None, []
        self.breakers["faiss"].succeeded()
        return None, res.version, res.results[0]

    def similar(self, item_id: str, k: int) -> dict[str, Any]:
        """Items like ``item_id``; ``UnknownItem`` (404) if the index lacks it."""
        degraded: list[str] = []
        reason: str | None = None
        index_version = None
        hits: list[tuple[str, float]] = []
        if not self.breakers["faiss"].allow():
            reason = "faiss_unavailable"
        else:
            try:
                res = self.deps.faiss.similar(item_id, k + self.config.candidate_slack)
                self.breakers["faiss"].succeeded()
                index_version, hits = res.version, res.hits
            except IndexNotReady:
                reason = "index_not_ready"
            except ServiceUnavailable as exc:
                self._dep_error("faiss", exc)
                reason = "faiss_unavailable"
        gone = self._unavailable([i for i, _ in hits], degraded)
        similar = [(i, s) for i, s in hits if i not in gone][:k]
        if reason is None and not similar:
            reason = "no_candidates"
        fill = [] if similar else self._popular_fill(k, {item_id}, degraded)
        source = "similar" if similar else "popular"
        if reason is not None:
            self._incr(f"fallback.{reason}")
        picked = [(i, s, "similar") for i, s in similar] + [(i, s, "popular") for i, s in fill]
        return {"item_id": item_id, "k": k, "source": source, "fallback_reason": reason,
                "index_version": index_version, "items": self._render(picked, degraded),
                **({"degraded": sorted(set(degraded))} if degraded else {})}

    def popular(self, k: int) -> dict[str, Any]:
        """The popular list; ``ServiceUnavailable`` (503) if Redis cannot be read."""
        degraded: list[str] = []
        fill = self._popular_fill(k, set(), degraded)
        if not fill and degraded:
            raise ServiceUnavailable("Redis (popular items) is not answering")
        return {"k": k, "source": "popular",
                "items": self._render([(i, s, "popular") for i, s in fill], degraded),
                **({"degraded": sorted(set(degraded))} if degraded else {})}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ask every dependency once (ignoring breakers); ``(all ok, details)``."""
        checks: dict[str, Any] = {}
        for name, probe in (("mongo", self.deps.ping_mongo), ("redis", self.deps.ping_redis),
                            ("faiss", self.deps.faiss.health)):
            try:
                out = probe()
                checks[name] = {"ok": True}
                if name == "faiss" and isinstance(out, dict):
                    checks[name].update(version=out.get("version"), size=out.get("size"))
            except Exception as exc:  # any failure is reported as not ready (503)
                checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        users = self.deps.users
        if hasattr(users, "hits"):
            checks["user_cache"] = {"hits": users.hits, "misses": users.misses}
        return all(c.get("ok", True) for c in checks.values()), checks
