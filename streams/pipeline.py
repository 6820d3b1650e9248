"""What the worker does with a micro-batch, independent of Faust.

The Faust agents (``streams/agents.py``) only collect raw messages and acknowledge them
after :meth:`InteractionPipeline.process` returns: by then every effect is durable
(user documents in MongoDB, popularity in Redis), so a crash redelivers at most
events whose effects the watermarks in :mod:`streams.state` will skip.

Blocking work (torch, pymongo, redis) runs in a worker thread so the event loop keeps
heartbeating; one ``asyncio.Lock`` makes this pipeline the single writer of the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pymongo.errors
import redis.exceptions
import statsd

from common.errors import BadEvent, RecsysError, ServiceUnavailable
from common.settings import Settings
from common.stores import ItemCache, UserStore
from models.base import Recommender
from models.events import EventBatch
from streams.records import Interaction, ItemEvent
from streams.state import DecayedPopularity, UserState
from streams.user_writes import UserWriter, WritePolicy
from streams.validation import parse_interaction, parse_item

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawMessage:
    """A Kafka record as the pipeline needs it (no Faust types)."""

    value: bytes | None
    key: bytes | None
    partition: int
    offset: int
    timestamp_s: float  # broker/producer timestamp: when the click was published


@dataclass(frozen=True)
class DeadLetter:
    message: RawMessage
    reason: str
    topic: str


@dataclass
class BatchResult:
    applied: int = 0
    skipped_duplicates: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    users_written: int = 0
    loss: float = 0.0
    learn_s: float = 0.0
    write_s: float = 0.0
    click_to_vector_s: list[float] = field(default_factory=list)


class ModelHolder:
    """The one model instance, its lock and its version; shared by agents and timers."""

    def __init__(self, model: Recommender) -> None:
        self.model = model
        self.lock = asyncio.Lock()

    @property
    def version(self) -> str:
        return self.model.version

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(model, *args)`` in a thread while holding the model lock."""
        async with self.lock:
            return await asyncio.to_thread(fn, self.model, *args)


class InteractionPipeline:
    """Validate → de-duplicate → update user state and popularity → learn → write."""

    def __init__(self, holder: ModelHolder, users: UserStore, items: ItemCache,
                 metrics: statsd.StatsClient, *, topic: str, dead_letter_topic: str,
                 history_size: int = 50, half_life_s: float = 7 * 86400.0,
                 max_event_bytes: int = 65536, user_writes: UserWriter | None = None) -> None:
        self.holder = holder
        self.users = users
        self.user_writes = user_writes or UserWriter(
            users, metrics, WritePolicy.from_settings(Settings()))
        self.items = items
        self.metrics = metrics
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.history_size = history_size
        self.max_event_bytes = max_event_bytes
        self.states: dict[str, UserState] = {}
        self.popularity = DecayedPopularity(half_life_s)
        self._popularity_loaded = False
        self.last_offsets: dict[int, int] = {}
        self._sizes = (len(holder.model.user_ids), len(holder.model.item_ids))
        self.totals: dict[str, float] = {"events": 0, "applied": 0, "duplicates": 0,
                                         "dead_letters": 0, "batches": 0, "learn_s": 0.0,
                                         "write_s": 0.0, "process_s": 0.0}

    async def _load_popularity(self) -> None:
        meta, offsets = await asyncio.to_thread(
            lambda: (self.items.popular_meta(), self.items.popularity_offsets()))
        self.popularity = DecayedPopularity(self.popularity.half_life_s,
                                            meta.get("ref_ms"), offsets)
        self._popularity_loaded = True

    async def process(self, messages: Sequence[RawMessage]) -> BatchResult:
        if not self._popularity_loaded:
            await self._load_popularity()
        t_start = time.perf_counter()
        result = BatchResult()
        parsed: list[tuple[Interaction, RawMessage]] = []
        for msg in messages:
            try:
                parsed.append((parse_interaction(msg.value, self.max_event_bytes), msg))
            except BadEvent as exc:
                result.dead_letters.append(DeadLetter(msg, exc.reason, self.topic))
        if parsed:
            await self._apply(parsed, result)
        for msg in messages:
            self.last_offsets[msg.partition] = max(self.last_offsets.get(msg.partition, -1),
                                                   msg.offset)
        self._emit(result, len(messages))
        self.totals["events"] += len(messages)
        self.totals["applied"] += result.applied
        self.totals["duplicates"] += result.skipped_duplicates
        self.totals["dead_letters"] += len(result.dead_letters)
        self.totals["batches"] += 1
        self.totals["learn_s"] += result.learn_s
        self.totals["write_s"] += result.write_s
        self.totals["process_s"] += time.perf_counter() - t_start
        return result

    async def _apply(self, parsed: list[tuple[Interaction, RawMessage]],
                     result: BatchResult) -> None:
        await self._load_states({ev.user_id for ev, _ in parsed})
        fresh: list[tuple[Interaction, RawMessage]] = []
        pop_events: list[tuple[str, float, int]] = []
        pop_offsets: dict[int, int] = {}
        weights = self.holder.model.event_weights
        for ev, msg in parsed:
            state = self.states[ev.user_id]
            redelivered = state.redelivered(msg.partition, msg.offset)
            producer_dup = not redelivered and state.duplicate_id(ev)
            if self.popularity.counts_event(msg.partition, msg.offset):
                pop_offsets[msg.partition] = max(pop_offsets.get(msg.partition, -1), msg.offset)
                if not producer_dup:
                    pop_events.append((ev.item_id, float(weights.get(ev.event, 1.0)), ev.ts))
            if redelivered or producer_dup:
                result.skipped_duplicates += 1
                continue
            state.apply(ev, msg.partition, msg.offset)
            fresh.append((ev, msg))
        result.applied = len(fresh)
        dirty = list(dict.fromkeys(ev.user_id for ev, _ in fresh))
        if fresh:
            batch = EventBatch(
                users=np.array([ev.user_id for ev, _ in fresh], dtype=str),
                items=np.array([ev.item_id for ev, _ in fresh], dtype=str),
                events=np.array([ev.event for ev, _ in fresh], dtype=str),
                values=np.array([1.0 if ev.value is None else ev.value for ev, _ in fresh],
                                dtype=np.float32),
                ts_ms=np.array([ev.ts for ev, _ in fresh], dtype=np.int64),
            )
            t0 = time.perf_counter()
            result.loss, vectors, version = await self.holder.run(_learn_and_export, batch,
                                                                  dirty)
            result.learn_s = time.perf_counter() - t0
            docs = [self.states[u].to_doc(vec.tolist(), version)
                    for u, vec in zip(dirty, vectors, strict=True)]
        else:
            docs = []
        t0 = time.perf_counter()
        # Move the decay reference first, so new increments never overflow a double.
        factor = self.popularity.rescale_factor(max((ts for _, _, ts in pop_events), default=0))
        increments = self.popularity.increments(pop_events)
        # MongoDB and Redis are independent stores: write both at once.
        await asyncio.gather(self.user_writes.write(docs),  # bounded, one write in flight
                             asyncio.to_thread(self._write_popularity, increments,
                                               pop_offsets, factor))
        self.popularity.offsets.update(pop_offsets)
        result.write_s = time.perf_counter() - t0
        result.users_written = len(docs)
        now = time.time()
        newest_per_user: dict[str, float] = {}
        for ev, msg in fresh:
            newest_per_user[ev.user_id] = max(newest_per_user.get(ev.user_id, 0.0),
                                              msg.timestamp_s)
        result.click_to_vector_s = [now - ts for ts in newest_per_user.values() if ts > 0]

    def forget(self, messages: Sequence[RawMessage]) -> None:
        """Drop cached state after a failed batch: a retry reloads it from MongoDB.

        Per-user state is applied in memory before the write; if the write fails those
        changes must not look applied, or the retry would skip the events.
        """
        self.states.clear()
        self._popularity_loaded = False

    async def _load_states(self, user_ids: set[str]) -> None:
        missing = [u for u in user_ids if u not in self.states]
        if not missing:
            return
        docs = await asyncio.to_thread(self.users.get_many, missing)
        for u in missing:
            doc = docs.get(u)
            self.states[u] = (UserState.from_doc(doc, self.history_size) if doc
                              else UserState.new(u, self.history_size))

    def _write_popularity(self, increments: dict[str, float], offsets: dict[int, int],
                          factor: float | None) -> None:
        if factor is not None:
            self.items.rescale_popularity(factor, self.popularity.meta())
        if increments or offsets:
            self.items.add_popularity(increments, offsets, self.popularity.meta())

    def _emit(self, r: BatchResult, n: int) -> None:
        m = self.metrics
        pipe = m.pipeline()
        pipe.incr("events.interactions", n)
        pipe.incr("events.applied", r.applied)
        if r.skipped_duplicates:
            pipe.incr("events.duplicates", r.skipped_duplicates)
        if r.dead_letters:
            pipe.incr("dead_letters", len(r.dead_letters))
        pipe.gauge("batch.size", n)
        pipe.timing("batch.learn_ms", r.learn_s * 1000)
        pipe.timing("batch.write_ms", r.write_s * 1000)
        if r.applied:
            pipe.gauge("model.loss", r.loss)
        n_users, n_items = len(self.holder.model.user_ids), len(self.holder.model.item_ids)
        if n_users > self._sizes[0]:
            pipe.incr("model.new_users", n_users - self._sizes[0])
        if n_items > self._sizes[1]:
            pipe.incr("model.new_items", n_items - self._sizes[1])
        self._sizes = (n_users, n_items)
        pipe.gauge("model.users", n_users)
        pipe.gauge("model.items", n_items)
        for lat in r.click_to_vector_s:
            pipe.timing("latency.click_to_vector_ms", lat * 1000)
        pipe.send()


#: Errors of an unavailable dependency: retry the same batch until it goes through.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    pymongo.errors.ConnectionFailure, pymongo.errors.NetworkTimeout,
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
    ServiceUnavailable, OSError,
)


async def process_reliably(pipeline: InteractionPipeline | ItemPipeline,
                           messages: Sequence[RawMessage],
                           max_backoff_s: float = 5.0) -> BatchResult:
    """Process a batch so that nothing is lost, whatever fails.

    Faust acknowledges a ``take_events`` batch when the agent's loop body returns, even
    if it raised, so this function must not return before every event is either applied
    durably or in the dead-letter list. A dependency outage (MongoDB, Redis) is retried
    with backoff for as long as it lasts (the worker stays up; lag grows and shows on the
    dashboard). Any other error is a poison event: the batch is retried one event at a
    time and only the events that fail on their own go to the dead-letter topic.
    """
    try:
        return await _retry_transient(pipeline, messages, max_backoff_s)
    except Exception as exc:  # noqa: BLE001 - isolate the poison event below
        log.exception("batch of %d failed (%s); retrying event by event", len(messages), exc)
    combined = BatchResult()
    for msg in messages:
        try:
            one = await _retry_transient(pipeline, [msg], max_backoff_s)
        except Exception as exc:  # noqa: BLE001 - this event is the poison
            reason = f"processing failed: {type(exc).__name__}: {exc}"
            combined.dead_letters.append(DeadLetter(msg, reason, pipeline.topic))
            continue
        combined.applied += one.applied
        combined.skipped_duplicates += one.skipped_duplicates
        combined.dead_letters.extend(one.dead_letters)
    return combined


async def _retry_transient(pipeline: InteractionPipeline | ItemPipeline,
                           messages: Sequence[RawMessage], max_backoff_s: float) -> BatchResult:
    """``pipeline.process`` retried while dependencies are down; other errors propagate."""
    delay = 0.1
    while True:
        try:
            return await pipeline.process(messages)
        except TRANSIENT_ERRORS as exc:
            pipeline.forget(messages)
            pipeline.metrics.incr("retries")
            log.warning("dependency unavailable, retrying %d event(s) in %.1fs: %s",
                        len(messages), delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)
        except Exception:
            pipeline.forget(messages)
            raise


def _learn_and_export(model: Recommender, batch: EventBatch,
                      users: list[str]) -> tuple[float, np.ndarray, str]:
    loss = model.learn_many(batch)
    return loss, model.user_vectors(users), model.version


class ItemPipeline:
    """Catalogue changes: metadata to Redis, vectors to the model and the FAISS service."""

    def __init__(self, holder: ModelHolder, items: ItemCache, faiss: Any,
                 metrics: statsd.StatsClient, *, topic: str, max_event_bytes: int = 65536) -> None:
        self.holder = holder
        self.items = items
        self.faiss = faiss
        self.metrics = metrics
        self.topic = topic
        self.max_event_bytes = max_event_bytes

    async def process(self, messages: Sequence[RawMessage]) -> BatchResult:
        result = BatchResult()
        upserts: dict[str, ItemEvent] = {}
        deletes: list[str] = []
        for msg in messages:
            try:
                ev = parse_item(msg.value, self.max_event_bytes)
            except BadEvent as exc:
                result.dead_letters.append(DeadLetter(msg, exc.reason, self.topic))
                continue
            if ev.op == "upsert":
                upserts[ev.item_id] = ev
                if ev.item_id in deletes:
                    deletes.remove(ev.item_id)
            else:
                upserts.pop(ev.item_id, None)
                deletes.append(ev.item_id)
        if upserts:
            # Metadata first: once the model knows an item, an export may index it, and an
            # indexed item must never lack its metadata.
            await asyncio.to_thread(self.items.put_items,
                                    {i: dict(ev.attributes or {}) for i, ev in upserts.items()})
            vectors = await self.holder.run(_upsert_items, list(upserts.values()))
            await asyncio.to_thread(self._push_vectors, vectors)
        if deletes:
            await asyncio.to_thread(self.items.mark_unavailable, deletes)
            await asyncio.to_thread(self._remove_vectors, deletes)
        result.applied = len(upserts) + len(deletes)
        pipe = self.metrics.pipeline()
        pipe.incr("events.items", len(messages))
        if result.dead_letters:
            pipe.incr("dead_letters", len(result.dead_letters))
        pipe.send()
        return result

    def forget(self, messages: Sequence[RawMessage]) -> None:
        """Nothing cached per batch: item effects are plain overwrites."""

    def _push_vectors(self, vectors: dict[str, np.ndarray]) -> None:
        for n, (item_id, vec) in enumerate(vectors.items()):
            try:
                self.faiss.upsert(item_id, vec)
            except ServiceUnavailable as exc:  # the next periodic export brings them in
                self.metrics.incr("faiss.errors")
                log.warning("FAISS service unavailable; %d item vector(s) wait for the next "
                            "export: %s", len(vectors) - n, exc)
                return
            except RecsysError as exc:
                self.metrics.incr("faiss.errors")
                log.warning("FAISS upsert of %s failed: %s", item_id, exc)

    def _remove_vectors(self, item_ids: list[str]) -> None:
        for item_id in item_ids:
            try:
                self.faiss.delete(item_id)
            except ServiceUnavailable as exc:  # Redis hides it; the next export drops it
                log.warning("FAISS service unavailable for deletes: %s", exc)
                return
            except RecsysError as exc:  # e.g. never indexed
                log.info("FAISS delete of %s: %s", item_id, exc)


def _upsert_items(model: Recommender, events: list[ItemEvent]) -> dict[str, np.ndarray]:
    return {ev.item_id: model.upsert_item(ev.item_id, ev.attributes or {}) for ev in events}
