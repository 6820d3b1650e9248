"""The worker's side of the ranking stage: examples from the stream, retraining, publishing.

For a sample of each batch's users (at most ``per_batch``, users the model already
knows), the candidates and features are computed exactly as the API would serve them
*before* the batch is learned (:func:`ranking.offline.model_inputs`, then
:func:`ranking.features.features`); the items the user touched in the batch are the
positives, the other candidates the negatives. Every ``retrain_s`` seconds, once at least
``min_examples`` examples are in the window, a new ranker is fitted in a thread (LightGBM
releases the GIL; the event loop keeps consuming) on all but the newest 20% of the
window. If it ranks those held-out examples better than the retrieval order
(:meth:`ranking.ranker.Ranker.beats_retrieval`) it is published: written to
``<model_dir>/rankers/<version>.json`` (``latest`` names it) and to Redis
(``RedisKeys.ranker`` and ``ranker_version`` in one transaction), where every API worker
picks it up within ``RECSYS_API_RANKER_REFRESH_S``.

Why a sample: an example costs ~1-2 ms of CPU (a few hundred candidates), and the
worker applies 10,000+ events/s; a few per batch keep the window fresh at ~1-2% of
the worker's time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.stores import ItemCache, RecentEvent
from models.base import Recommender
from ranking.features import features
from ranking.offline import RankInputs, SourceSizes, model_inputs
from ranking.ranker import Examples, Ranker, RankerError, RankerParams

log = logging.getLogger(__name__)

#: Popular items the features read (the API reads the same depth: ``POPULAR_DEPTH``).
POPULAR_DEPTH = 1000


def save_ranker(folder: Path, ranker: Ranker) -> Path:
    """Write ``<folder>/<version>.json`` then point ``latest`` at it (atomic renames)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ranker.version}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(ranker.to_text())
    os.replace(tmp, path)
    latest_tmp = folder / "latest.tmp"
    latest_tmp.write_text(ranker.version)
    os.replace(latest_tmp, folder / "latest")
    return path


def load_latest_ranker(folder: Path) -> Ranker | None:
    """The ranker ``latest`` names, or None (none saved, or it does not load: logged)."""
    try:
        version = (folder / "latest").read_text().strip()
        return Ranker.from_text((folder / f"{version}.json").read_text())
    except FileNotFoundError:
        return None
    except RankerError as exc:
        log.error("saved ranker in %s does not load: %s", folder, exc)
        return None


def publish_ranker(items: ItemCache, ranker: Ranker) -> None:
    """Make ``ranker`` the one every API worker serves with (one transaction)."""
    pipe = items.r.pipeline(transaction=True)
    pipe.set(items.keys.ranker, ranker.to_text())
    pipe.set(items.keys.ranker_version, ranker.version)
    pipe.execute()


class RankerTrainer:
    """Collects examples from the worker's batches and retrains the ranker."""

    def __init__(self, items: ItemCache, folder: Path, *, metrics: Any = None,
                 per_batch: int = 8,
                 retrain_s: float = 300.0, min_examples: int = 2000, window: int = 20_000,
                 served: int = 100, params: RankerParams = RankerParams(),
                 sizes: SourceSizes = SourceSizes(), refresh_s: float = 5.0) -> None:
        self.items = items
        self.metrics = metrics  # statsd client (None: no metrics)
        self.folder = folder
        self.per_batch = per_batch
        self.retrain_s = retrain_s
        self.min_examples = min_examples
        self.served = served
        self.sizes = sizes
        self.params = params
        self.refresh_s = refresh_s
        self.examples = Examples(window, params.negatives)
        self.current: Ranker | None = load_latest_ranker(folder)
        self._popular: list[tuple[str, float]] = []
        self._popular_at = -1e18
        self._meta: dict[str, dict[str, object] | None] = {}
        self._trained_at = time.monotonic()
        self._training: asyncio.Task[None] | None = None

    def pick(self, users: Sequence[str], known: Sequence[bool]) -> list[str]:
        """At most ``per_batch`` of the batch's users the model knows, at random."""
        pool = [u for u, k in zip(users, known, strict=True) if k]
        return pool if len(pool) <= self.per_batch else random.sample(pool, self.per_batch)

    def inputs(self, model: Recommender, users: list[str],
               recent: dict[str, list[RecentEvent]], n_events: dict[str, int]
               ) -> list[RankInputs]:
        """The candidates of ``users`` as served now (call with the model lock held,
        before the batch is learned)."""
        items = {u: [i for i, _ in recent[u]] for u in users}
        return model_inputs(model, users, items, n_events,
                            {u: set(v) for u, v in items.items()}, self._popular,
                            self.sizes, self.served)

    async def refresh(self) -> None:
        """Re-read the popular list when it is older than ``refresh_s``."""
        now = time.monotonic()
        if now - self._popular_at >= self.refresh_s:
            self._popular = await asyncio.to_thread(self.items.popular, POPULAR_DEPTH)
            self._popular_at = now

    async def add(self, inputs: list[RankInputs], chosen: dict[str, set[str]],
                  users: list[str]) -> int:
        """Label each user's candidates with the items they chose; examples kept."""
        need = {i for x in inputs for i in [*x.cands.ids, *x.user.recent]
                if i not in self._meta}
        if need:
            found = await asyncio.to_thread(self.items.get_items, sorted(need))
            if len(self._meta) + len(need) > 500_000:
                self._meta.clear()
            self._meta.update({i: found.get(i) for i in need})
        kept = 0
        for user, x in zip(users, inputs, strict=True):
            feats = features(x.user, x.cands, x.neighbours, self._meta, self._popular)
            picks = chosen.get(user, set())
            kept += self.examples.add(feats, np.array([c in picks for c in x.cands.ids]))
        return kept

    def due(self) -> bool:
        return (self._training is None and len(self.examples) >= self.min_examples
                and time.monotonic() - self._trained_at >= self.retrain_s)

    def start_retrain(self) -> None:
        """Fit and publish a new ranker in the background (one at a time)."""
        self._trained_at = time.monotonic()
        self._training = asyncio.ensure_future(self._retrain())

    async def _retrain(self) -> None:
        try:
            t0 = time.perf_counter()
            ranker = await asyncio.to_thread(self.examples.fit, self.params)
            if not ranker.beats_retrieval():
                if self.metrics is not None:
                    self.metrics.incr("ranker.rejected")
                log.info("ranker %s not published: held-out %s", ranker.version,
                         ranker.info.get("held_out"))
                return
            await asyncio.to_thread(save_ranker, self.folder, ranker)
            await asyncio.to_thread(publish_ranker, self.items, ranker)
            self.current = ranker
            if self.metrics is not None:
                self.metrics.incr("ranker.trained")
            log.info("ranker %s trained on %s examples in %.1fs and published",
                     ranker.version, ranker.info.get("examples"), time.perf_counter() - t0)
        except Exception:  # the next interval retries; serving keeps the last one
            log.exception("ranker retraining failed")
        finally:
            self._training = None

    async def publish_current(self) -> None:
        """Re-publish the saved ranker (a restarted worker, an emptied Redis)."""
        if self.current is not None:
            await asyncio.to_thread(publish_ranker, self.items, self.current)
