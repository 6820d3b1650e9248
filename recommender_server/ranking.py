"""The API's ranking stage: candidates from several sources, ranked by the learned model.

Retrieval → filter → rank. The sources (each keeps its own score and rank, and every
served item says which proposed it):

- ``ann``: the FAISS search on the user's query (dense plus the co-occurrence part);
- ``cooc``: the co-occurrence of the user's recent items alone (the query's sparse part);
- ``popular``: the decayed popular list.

The features are :func:`ranking.features.features` of inputs gathered here from the same
state the worker computes them from (the user's document, the co-occurrence lists in
Redis, item metadata, the popular list): one definition, no training/serving skew
(``tests/test_ranking.py`` checks both sides give the same matrix).

The ranker is the one the worker last published to Redis (:class:`RankerHolder`); a new
version is loaded off the event loop and swapped in by one reference assignment, so a
request in flight finishes with the ranker it started with and none fails.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np

from common.stores import RecentEvent, RedisKeys
from ranking.features import (
    FEATURES,
    SOURCES,
    Candidates,
    UserContext,
    features,
    merge,
    retrieval_scores,
)
from ranking.ranker import Ranker, RankerError
from recommender_server.ports import Metadata

log = logging.getLogger(__name__)


class RankerHolder:
    """The ranker in use, following what the worker publishes (``RedisKeys.ranker``)."""

    def __init__(self, redis: object, keys: RedisKeys, refresh_s: float = 2.0) -> None:
        self.r = redis
        self.keys = keys
        self.refresh_s = refresh_s
        self.current: Ranker | None = None
        self.swaps = 0
        self.errors = 0
        self._bad: str | None = None  # a version that failed to load: not retried

    async def refresh(self) -> bool:
        """Load the published ranker if its version changed; True if swapped."""
        version = await self.r.get(self.keys.ranker_version)  # type: ignore[attr-defined]
        if version is None or version == self._bad or (
                self.current is not None and version == self.current.version):
            return False
        text = await self.r.get(self.keys.ranker)  # type: ignore[attr-defined]
        if text is None:
            return False
        try:
            ranker = await asyncio.to_thread(Ranker.from_text, text)
        except RankerError as exc:
            self.errors += 1
            self._bad = version
            log.error("published ranker %s does not load; keeping %s: %s", version,
                      self.current.version if self.current else "none", exc)
            return False
        self.current = ranker  # the swap: requests in flight keep the old object
        self.swaps += 1
        log.info("ranker %s in use", ranker.version)
        return True

    async def follow(self) -> None:
        """Refresh every ``refresh_s`` until cancelled (errors logged, retried)."""
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: keep the ranker in use
                log.warning("ranker refresh failed: %s", f"{type(exc).__name__}: {exc}"[:300])
            await asyncio.sleep(self.refresh_s)

    def stats(self) -> dict[str, object]:
        return {"version": self.current.version if self.current else None,
                "swaps": self.swaps, "load_errors": self.errors}


def recent_items(recent: Sequence[RecentEvent]) -> list[str]:
    """The user's recent items, oldest first (what the worker's side keeps)."""
    return [item for item, _ in recent]


#: What a request may order its candidates by (``order=``): the ranker (``ranked``, the
#: default), the FAISS order (``retrieval``, what serving was before the ranking
#: stage), or one source's own order alone (its candidates only). The orders other than
#: ``ranked`` are for comparison (``scripts.eval_pipeline`` reports each side by side).
ORDERS = ("ranked", "retrieval", *SOURCES)


class Ranked:
    """One ranked request: candidates, their features and scores, best first."""

    def __init__(self, cands: Candidates, feats: np.ndarray, scores: np.ndarray,
                 ranker: Ranker | None, seconds: float) -> None:
        self.cands, self.feats, self.scores = cands, feats, scores
        self.ranker = ranker
        self.seconds = seconds
        self.order = np.argsort(-scores, kind="stable")

    def top(self, k: int, keep: set[str] | None = None) -> list[int]:
        """Positions of the best ``k`` candidates (only those in ``keep`` if given; never
        one scored ``-inf``: not proposed by the one source asked for)."""
        out: list[int] = []
        for j in self.order.tolist():
            if self.scores[j] == -np.inf:
                break
            if keep is None or self.cands.ids[j] in keep:
                out.append(j)
                if len(out) == k:
                    break
        return out

    def explain(self, j: int) -> dict[str, object]:
        """The candidate's features (NaN: unknown, left out) and its ranker score."""
        row = self.feats[j]
        return {"features": {name: round(float(v), 6) for name, v in zip(FEATURES, row,
                                                                        strict=True)
                             if not math.isnan(v)},
                "ranker_score": round(float(self.scores[j]), 6) if self.ranker else None}


def rank(ranker: Ranker | None, recent: Sequence[RecentEvent], n_events: int,
         props: Mapping[str, Sequence[tuple[str, float]]],
         neighbours: Mapping[str, Sequence[tuple[str, float]] | None],
         metadata: Mapping[str, Metadata | None],
         popular: Sequence[tuple[str, float]], order: str = "ranked",
         explain: bool = True) -> Ranked:
    """Merge (:func:`ranking.features.proposals` left the seen items out), featurise and
    score by ``order`` (:data:`ORDERS`; the
    retrieval order when ``ranked`` is asked without a ranker). Features are computed
    only when a ranker uses them or ``explain`` shows them: until a ranker is published
    the stage costs a merge."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    t0 = time.perf_counter()
    cands = merge(props)
    used = ranker if order == "ranked" else None
    if used is not None or explain:
        lists = {h: v for h, v in neighbours.items() if v}
        feats = features(UserContext(recent_items(recent), n_events), cands, lists,
                         metadata, popular)
    else:
        feats = np.full((len(cands), len(FEATURES)), np.nan, dtype=np.float32)
    if used is not None:
        scores = used.predict(feats)
    elif order in SOURCES:  # that source's own order, its candidates alone
        rank_of = cands.ranks[:, SOURCES.index(order)]
        scores = np.where(np.isnan(cands.scores[:, SOURCES.index(order)]), -np.inf, -rank_of)
    else:
        scores = retrieval_scores(cands)
    return Ranked(cands, feats, scores, used, time.perf_counter() - t0)
