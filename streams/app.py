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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import redis.exceptions
import torch
from aiokafka import AIOKafkaProducer

from common.compression import missing_codecs
from common.errors import RecsysError
from common.gc_tuning import freeze_startup_heap, tune_gc
from common.kafka import ensure_topics
from common.settings import Settings
from streams.dead_letters import DeadLetterSink
from streams.direct import BatchConsumer, Durable
from streams.messages import RawMessage
from streams.pipeline import Pipeline, process_reliably
from streams.runtime import Runtime

log = logging.getLogger("streams")


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

        async def handle(messages: list[RawMessage]) -> Durable:
            rt = await runtime()
            if name == "interactions":
                result = await process_reliably(rt.interactions, messages)
                durable: Durable = rt.interactions.durable(result.durable_seq)
            else:
                pipeline: Pipeline = rt.items
                result = await process_reliably(pipeline, messages)
                durable = None
            await box["sink"].send(result.dead_letters)
            return durable

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
        tune_gc(settings.gc_gen0_threshold)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await producer.start()
        box["producer"] = producer
        rt = await asyncio.to_thread(Runtime, settings,
                                     consumers["interactions"].fingerprint_at)
        box["sink"] = DeadLetterSink(producer, settings.topic_dead_letter, rt.metrics,
                                     settings.dead_letter_max_payload_bytes)
        box["rt"] = rt
        freeze_startup_heap()  # the restored model and its id maps are never garbage
        ready.set()
        log.info("worker runtime ready (model %s)", rt.holder.version)
        if rt.ranker_trainer is not None:  # the API serves the saved ranker at once
            try:
                await rt.ranker_trainer.publish_current()
            except Exception as exc:  # noqa: BLE001 - Redis down: the next retrain publishes
                log.warning("publishing the saved ranker failed: %s", exc)
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

    async def exporting(what: str, export: Callable[[Runtime], Awaitable[Any]]) -> None:
        """Run one periodic export once the runtime is up; a failure is counted and
        logged, and the next tick retries."""
        if not ready.is_set():
            return
        try:
            await export(box["rt"])
        except (RecsysError, redis.exceptions.RedisError) as exc:
            box["rt"].metrics.incr("export.errors")
            log.warning("export of %s failed (will retry): %s", what, exc)

    @app.timer(interval=settings.export_interval_s, on_leader=False)
    async def export_index() -> None:
        await exporting("item vectors to FAISS", Runtime.export)

    @app.timer(interval=settings.worker_cooc_export_interval_s, on_leader=False)
    async def export_similar() -> None:
        await exporting("co-occurring items", Runtime.export_similar)

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
