"""The Faust app: `interactions` and `items` consumers, timers for export and checkpoints.

Run it with ``faust -A streams.app worker -l info`` or ``python -m streams.worker``.
Everything comes from :class:`~common.settings.Settings`; service clients and the model
are created when the worker starts (not at import), by :class:`Runtime`. Importing this
module builds nothing: ``streams.app.app`` is created on first access (for Faust's
``-A``), and tests call :func:`create_app` with their own settings.

Consumers are thin: both topics are read in batches by the consumer of
:mod:`streams.direct` (~80x cheaper per event than a Faust agent), handed to the
pipelines in :mod:`streams.pipeline`, rejects go to the dead-letter topic through
:class:`streams.dead_letters.DeadLetterSink`, and offsets are committed only after the
effects are durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import faust
import torch
from aiokafka import AIOKafkaProducer

from common.clients import mongo_db, redis_client, statsd_client
from common.compression import missing_codecs
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
from streams.dead_letters import DeadLetterSink
from streams.direct import BatchConsumer
from streams.messages import RawMessage
from streams.pipeline import (
    InteractionPipeline,
    ItemPipeline,
    ModelHolder,
    Pipeline,
    process_reliably,
)

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

    def __init__(self, settings: Settings,
                 lookup: Any = None) -> None:
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
            max_event_bytes=settings.max_event_bytes, lookup=lookup)
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


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app; clients connect only when the worker starts.

    Faust's data directory goes under the local state folder (its default is
    ``<app id>-data`` in the current directory, which littered the repository root).
    """
    datadir = Path(settings.local_dir) / "faust" / settings.worker_app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.worker_app_id,
        broker=settings.kafka_url,
        datadir=str(datadir),
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
    ready = asyncio.Event()
    box: dict[str, Any] = {}
    consumers: dict[str, BatchConsumer] = {}

    async def runtime() -> Runtime:
        await ready.wait()
        return box["rt"]

    def consumer_for(topic: str, name: str, max_batch: int) -> BatchConsumer:
        """A batch consumer whose batches go through a pipeline, rejects to the sink."""

        async def handle(messages: list[RawMessage]) -> None:
            rt = await runtime()
            pipeline: Pipeline = rt.interactions if name == "interactions" else rt.items
            result = await process_reliably(pipeline, messages)
            await box["sink"].send(result.dead_letters)

        consumer = BatchConsumer(settings, topic, f"{settings.worker_app_id}-{name}", handle,
                                 max_batch, settings.worker_batch_within_s,
                                 settings.worker_commit_interval_s)
        consumers[name] = consumer
        return consumer

    consumer_for(settings.topic_interactions, "interactions", settings.worker_batch_size)
    consumer_for(settings.topic_items, "items", 500)

    @app.task(on_leader=False)
    async def start_runtime() -> None:
        missing = missing_codecs()
        if missing:  # compressed batches from producers would crash the consumer later
            raise RuntimeError(f"Kafka compression codecs not installed: {missing} "
                               "(install aiokafka[snappy,lz4,zstd])")
        await ensure_topics(settings, [settings.topic_interactions, settings.topic_items,
                                       settings.topic_dead_letter])
        torch.set_num_threads(1)  # small batches: threads only fight the event loop
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await producer.start()
        box["producer"] = producer
        rt = await asyncio.to_thread(Runtime, settings,
                                     consumers["interactions"].fingerprint_at)
        box["sink"] = DeadLetterSink(producer, settings.topic_dead_letter, rt.metrics,
                                     settings.dead_letter_max_payload_bytes)
        box["rt"] = rt
        ready.set()
        log.info("worker runtime ready (model %s)", rt.holder.version)
        try:  # serve the restored model's item vectors at once, not after the first timer
            await rt.export()
        except RecsysError as exc:
            log.warning("initial export to FAISS failed (the timer will retry): %s", exc)

    async def run_consumer(name: str) -> None:
        await ready.wait()
        try:
            await consumers[name].run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.critical("%s consumer crashed: %r", name, exc, exc_info=True)
            await app.crash(exc)
            raise

    @app.task(on_leader=False)
    async def consume_interactions() -> None:
        await run_consumer("interactions")

    @app.task(on_leader=False)
    async def consume_items() -> None:
        await run_consumer("items")

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
        for partition, lag in (await consumers["interactions"].lag()).items():
            rt.metrics.gauge(f"consumer.lag.p{partition}", lag)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def checkpoint_on_shutdown(sender: Any, **kwargs: Any) -> None:
        for consumer in consumers.values():
            consumer.stop()
        if ready.is_set():
            log.info("shutting down; interactions totals: %s", box["rt"].interactions.totals)
            await box["rt"].checkpoint()
        if "producer" in box:
            await box["producer"].stop()

    app.runtime = runtime  # type: ignore[attr-defined]
    return app


def __getattr__(name: str) -> faust.App:
    """``streams.app.app``, built from the environment on first access (Faust's ``-A``)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    built = create_app(Settings.from_env())
    globals()["app"] = built
    return built
