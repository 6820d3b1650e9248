"""The Faust app: `interactions` and `items` consumers, timers for export and checkpoints.

Run it with ``faust -A streams.app worker -l info`` or ``python -m streams.worker``.
Everything comes from :class:`~common.settings.Settings`; service clients and the model
are created when the worker starts (not at import), by :class:`Runtime`.

Consumers are thin: they gather raw messages in batches (`items` through a Faust agent,
`interactions` through the batch consumer of :mod:`streams.direct`, ~80x cheaper per
event), hand them to the pipelines in :mod:`streams.pipeline`, send rejects to the
dead-letter topic, and acknowledge/commit only after the effects are durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import faust
import torch
from faust.types import EventT

from common.clients import mongo_db, redis_client, statsd_client
from common.errors import RecsysError
from common.kafka import ensure_topics
from common.settings import Settings
from common.stores import ItemCache, UserStore
from faiss_server.client import FaissClient
from models import kernels
from models.base import Recommender
from models.checkpoint import (
    CheckpointError,
    latest_version,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from streams.batching import consume_in_batches
from streams.direct import BatchConsumer
from streams.pipeline import (
    DeadLetter,
    InteractionPipeline,
    ItemPipeline,
    ModelHolder,
    RawMessage,
    process_reliably,
)
from streams.user_writes import UserWriter, WritePolicy

log = logging.getLogger("streams")


def worker_checkpoint_dir(settings: Settings) -> Path:
    return Path(settings.model_dir) / "worker"


def bootstrap_checkpoint_dir(settings: Settings) -> Path:
    """Where ``python -m scripts.bootstrap`` writes its checkpoints by default."""
    return Path(settings.model_dir) / "checkpoints"


def load_model(settings: Settings) -> Recommender:
    """The worker's latest checkpoint, else the bootstrap model, else a fresh model."""
    for folder in (worker_checkpoint_dir(settings), bootstrap_checkpoint_dir(settings)):
        try:
            latest_version(folder)
        except (CheckpointError, FileNotFoundError):
            continue
        model = load_checkpoint(folder)
        log.info("restored model %s from %s", model.version, folder)
        return model
    from models.checkpoint import model_classes

    cls = model_classes()[settings.worker_model]
    log.info("no checkpoint found: starting a fresh %s model", settings.worker_model)
    return cls(history_size=settings.worker_history_size)


def model_dim(settings: Settings) -> int:
    """Retrieval-vector dimension the worker will export (the FAISS index must match)."""
    for folder in (worker_checkpoint_dir(settings), bootstrap_checkpoint_dir(settings)):
        try:
            meta = read_meta(folder)
        except (CheckpointError, FileNotFoundError):
            continue
        dim = meta.get("dim") or meta.get("params", {}).get("dim")
        if dim:
            return int(dim)
        return load_checkpoint(folder).dim
    from models.checkpoint import model_classes

    return model_classes()[settings.worker_model]().dim


class Runtime:
    """Clients, model and pipelines of one worker process."""

    def __init__(self, settings: Settings) -> None:
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
        self.interactions = InteractionPipeline(
            self.holder, UserStore(self.db), self.item_cache, self.metrics,
            topic=settings.topic_interactions, dead_letter_topic=settings.topic_dead_letter,
            history_size=settings.worker_history_size,
            half_life_s=settings.popularity_half_life_s,
            max_event_bytes=settings.max_event_bytes,
            user_writes=UserWriter(UserStore(self.db), self.metrics,
                                   WritePolicy.from_settings(settings)))
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

    async def export(self) -> dict[str, Any] | None:
        """Push every available item vector to the FAISS service as a new index version."""
        t0 = time.perf_counter()
        ids, vectors, version = await self.holder.run(
            lambda m: (*m.item_vectors(), m.version))
        if not ids:
            return None
        unavailable = await asyncio.to_thread(self.item_cache.unavailable)
        keep = [j for j, i in enumerate(ids) if i not in unavailable]
        index_version = f"{version}-{int(time.time())}"
        info = await asyncio.to_thread(
            self.faiss.load_version, ([ids[j] for j in keep], vectors[keep]), index_version)
        self.exported_version = index_version
        self.metrics.timing("export.duration_ms", (time.perf_counter() - t0) * 1000)
        self.metrics.gauge("export.items", len(keep))
        log.info("exported %d item vectors as index version %s", len(keep), index_version)
        return info


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app; clients connect only when the worker starts."""
    app = faust.App(
        settings.worker_app_id,
        broker=settings.kafka_url,
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=6.0,
        broker_commit_every=1000,
        broker_commit_interval=settings.worker_commit_interval_s,
        stream_wait_empty=False,
    )
    items = app.topic(settings.topic_items, value_type=bytes, value_serializer="raw",
                      key_serializer="raw")
    dead_letters = app.topic(settings.topic_dead_letter, value_type=bytes,
                             value_serializer="raw", key_serializer="raw")
    ready = asyncio.Event()
    box: dict[str, Runtime] = {}

    async def runtime() -> Runtime:
        await ready.wait()
        return box["rt"]

    @app.task(on_leader=False)
    async def start_runtime() -> None:
        await ensure_topics(settings, [settings.topic_interactions, settings.topic_items,
                                       settings.topic_dead_letter])
        torch.set_num_threads(1)  # small batches: threads only fight the event loop
        box["rt"] = await asyncio.to_thread(Runtime, settings)
        ready.set()
        log.info("worker runtime ready (model %s)", box["rt"].holder.version)
        try:  # serve the restored model's item vectors at once, not after the first timer
            await box["rt"].export()
        except RecsysError as exc:
            log.warning("initial export to FAISS failed (the timer will retry): %s", exc)

    async def send_dead_letters(letters: list[DeadLetter]) -> None:
        for letter in letters:
            msg = letter.message
            await dead_letters.send(
                key=msg.key, value=msg.value if msg.value is not None else b"",
                headers={"reason": letter.reason.encode(),
                         "source-topic": letter.topic.encode(),
                         "source-partition": str(msg.partition).encode(),
                         "source-offset": str(msg.offset).encode()})
        if letters:
            await app.producer.flush()
            log.warning("%d event(s) sent to %s: e.g. %s", len(letters),
                        settings.topic_dead_letter, letters[0].reason)

    def raw(events: list[EventT]) -> list[RawMessage]:
        return [RawMessage(e.message.value, e.message.key, e.message.partition,
                           e.message.offset, e.message.timestamp or 0.0) for e in events]

    consumers: dict[str, BatchConsumer] = {}

    @app.task(on_leader=False)
    async def consume_interactions() -> None:
        """`interactions` in batches, outside Faust streams (see streams/direct.py)."""
        rt = await runtime()

        async def handle(messages: list[RawMessage]) -> None:
            result = await process_reliably(rt.interactions, messages)
            await send_dead_letters(result.dead_letters)

        consumer = BatchConsumer(settings, settings.topic_interactions,
                                 f"{settings.worker_app_id}-interactions", handle,
                                 settings.worker_batch_size, settings.worker_batch_within_s,
                                 settings.worker_commit_interval_s)
        consumers["interactions"] = consumer
        try:
            await consumer.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.critical("interactions consumer crashed: %r", exc, exc_info=True)
            await app.crash(exc)
            raise

    @app.agent(items)
    async def on_items(stream: faust.StreamT) -> None:
        rt = await runtime()

        async def handle(events: list[EventT]) -> None:
            result = await process_reliably(rt.items, raw(events))
            await send_dead_letters(result.dead_letters)

        await consume_in_batches(stream, 500, 0.05, handle)

    @app.timer(interval=settings.export_interval_s, on_leader=False)
    async def export_index() -> None:
        if not ready.is_set():
            return
        try:
            await box["rt"].export()
        except RecsysError as exc:
            box["rt"].metrics.incr("export.errors")
            log.warning("export to FAISS failed (will retry): %s", exc)

    @app.timer(interval=settings.checkpoint_interval_s, on_leader=False)
    async def checkpoint_model() -> None:
        if ready.is_set():
            await box["rt"].checkpoint()

    progress = {"t": time.monotonic(), "events": 0}

    @app.timer(interval=5.0, on_leader=False)
    async def report_progress() -> None:
        if not ready.is_set():
            return
        rt = box["rt"]
        totals = rt.interactions.totals
        now = time.monotonic()
        rate = (totals["events"] - progress["events"]) / max(now - progress["t"], 1e-9)
        progress.update(t=now, events=totals["events"])
        if rate > 0:
            log.info("interactions totals: %s; %.0f events/s; model %s users, %s items",
                     totals, rate, len(rt.holder.model.user_ids),
                     len(rt.holder.model.item_ids))
        consumer = consumers.get("interactions")
        if consumer is not None:
            for partition, lag in (await consumer.lag()).items():
                rt.metrics.gauge(f"consumer.lag.p{partition}", lag)

    @app.on_before_shutdown.connect  # type: ignore[misc]
    async def checkpoint_on_shutdown(sender: Any, **kwargs: Any) -> None:
        if "interactions" in consumers:
            consumers["interactions"].stop()
        if ready.is_set():
            log.info("shutting down; interactions totals: %s", box["rt"].interactions.totals)
            await box["rt"].checkpoint()

    app.runtime = runtime  # type: ignore[attr-defined]
    return app


app = create_app(Settings.from_env())
