"""One worker process's clients, model and pipelines (built when the worker starts)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from common.clients import mongo_db, redis_client, statsd_client
from common.settings import Settings
from common.stores import ItemCache, UserStore
from faiss_server.client import FaissClient
from models import kernels
from models.checkpoint import save_checkpoint
from models.cooc import WithCooc
from ranking.offline import SourceSizes
from streams.durable_users import DurableUsers
from streams.epochs import RecordLookup
from streams.model_files import load_model, ranker_dir, worker_checkpoint_dir
from streams.pipeline import InteractionPipeline, ItemPipeline, ModelHolder
from streams.ranker_training import RankerTrainer
from streams.user_writes import UserWriter, WritePolicy

log = logging.getLogger(__name__)


class Runtime:
    """Clients, model and pipelines of one worker process."""

    def __init__(self, settings: Settings, lookup: RecordLookup | None = None) -> None:
        self.settings = settings
        self.metrics = statsd_client(settings, "worker")
        self.redis = redis_client(settings, timeout_s=5.0)
        self.db = mongo_db(settings)
        self.faiss = FaissClient.from_settings(settings, read_timeout_s=5.0)
        model = load_model(settings)
        log.info("learning kernels ready in %.2fs", kernels.warm_up())
        model.stop_tracking_seen()  # unbounded per-user sets have no place in a stream
        self.holder = ModelHolder(model)
        self.item_cache = ItemCache(self.redis, settings.redis_prefix)
        self.ranker_trainer = RankerTrainer(
            self.item_cache, ranker_dir(settings), metrics=self.metrics,
            per_batch=settings.worker_ranker_examples_per_batch,
            retrain_s=settings.worker_ranker_retrain_s,
            min_examples=settings.worker_ranker_min_examples,
            window=settings.worker_ranker_window,
            served=settings.worker_cooc_served,
            sizes=SourceSizes(settings.rank_ann, settings.rank_cooc, settings.rank_popular),
        ) if settings.worker_ranker else None
        self.interactions = InteractionPipeline(
            self.holder, UserStore(self.db), self.item_cache, self.metrics,
            topic=settings.topic_interactions, dead_letter_topic=settings.topic_dead_letter,
            history_size=settings.worker_history_size,
            half_life_s=settings.popularity_half_life_s,
            max_event_bytes=settings.max_event_bytes, lookup=lookup,
            durable_users=DurableUsers(
                UserWriter(UserStore(self.db), self.metrics,
                           WritePolicy.from_settings(settings)),
                self.metrics, max_dirty=settings.worker_max_dirty_users,
                max_lag_s=settings.worker_max_write_lag_s,
                min_interval_s=settings.worker_min_flush_interval_s),
            hot_state_ttl_s=settings.worker_hot_state_ttl_s,
            max_cached_users=settings.worker_max_cached_users,
            ranker_trainer=self.ranker_trainer)
        self.items = ItemPipeline(self.holder, self.item_cache, self.faiss, self.metrics,
                                  topic=settings.topic_items,
                                  max_event_bytes=settings.max_event_bytes)
        self.exported_version: str | None = None

    async def checkpoint(self) -> str:
        folder = worker_checkpoint_dir(self.settings)
        version: str = await self.holder.run(lambda m: save_checkpoint(m, folder))
        self.metrics.incr("checkpoints")
        log.info("checkpoint %s written to %s", version, folder)
        return version

    async def export_similar(self) -> int:
        """Write the co-occurring items of every item whose partners changed since the
        last call to Redis (``RedisKeys.cooc``); returns how many items were written.

        Only catalogue items are served, as in :meth:`export` (a ghost's partners are
        kept for counting, never listed); a model without co-occurrence writes nothing.
        """
        if not isinstance(self.holder.model, WithCooc):
            return 0
        t0 = time.perf_counter()
        k, limit = self.settings.worker_cooc_served, self.settings.worker_cooc_export_max_items
        lists = await self.holder.run(lambda m: m.changed_similar(k, limit))
        if not lists:
            return 0

        def write() -> None:
            ids = sorted({j for partners, _ in lists.values() for j in partners} | set(lists))
            known = self.item_cache.known_among(ids)
            self.item_cache.put_similar({i: _known_only(partners, sims, known)
                                         for i, (partners, sims) in lists.items()
                                         if i in known})

        try:
            await asyncio.to_thread(write)
        except Exception:
            # written next time: the lists are re-computed then (the counts moved on)
            await self.holder.run(lambda m: m.mark_changed(list(lists)))
            raise
        self.metrics.timing("export.cooc_ms", (time.perf_counter() - t0) * 1000)
        self.metrics.incr("export.cooc_items", len(lists))
        return len(lists)

    async def export(self) -> dict[str, Any] | None:
        """Push the vectors of the catalogue's available items to FAISS as a new version.

        Items the model learned from clicks but that never had an upsert ("ghosts", e.g.
        a click on ``../../etc/passwd``) are left out: nothing without metadata is served.
        """
        t0 = time.perf_counter()
        ids, vectors, version = await self.holder.run(
            lambda m: (*m.item_vectors(), m.version))
        if not ids:
            return None
        unavailable, known = await asyncio.to_thread(
            lambda: (self.item_cache.unavailable(), self.item_cache.known_among(ids)))
        keep = [j for j, i in enumerate(ids) if i in known and i not in unavailable]
        index_version = f"{version}-{int(time.time())}"
        info = await asyncio.to_thread(
            self.faiss.load_version, ([ids[j] for j in keep], vectors[keep]), index_version)
        self.exported_version = index_version
        self.metrics.timing("export.duration_ms", (time.perf_counter() - t0) * 1000)
        self.metrics.gauge("export.items", len(keep))
        log.info("exported %d item vectors as index version %s", len(keep), index_version)
        return info


def _known_only(partners: list[str], sims: list[float], known: set[str]
                ) -> tuple[list[str], list[float]]:
    """The catalogue's items among ``partners`` (all of them, usually: checked in C)."""
    if known.issuperset(partners):
        return partners, sims
    keep = [n for n, j in enumerate(partners) if j in known]
    return [partners[n] for n in keep], [sims[n] for n in keep]
