"""What the worker does with a micro-batch, independent of Faust and Kafka clients.

The consumers (:mod:`streams.direct`) only collect raw messages and commit their
offsets once a batch's effects are durable: when :meth:`InteractionPipeline.process`
returns, popularity and every user's hot serving state (:mod:`common.hot_users`) are in
Redis, and the user documents are handed to :class:`~streams.durable_users.DurableUsers`,
which writes them to MongoDB behind the pipeline; the batch's ``durable_seq`` tells the
consumer when that write has landed (:meth:`InteractionPipeline.durable`). So a crash
redelivers at most events whose effects the watermarks in :mod:`streams.state` (in the
partition's epoch, :mod:`streams.epochs`) will skip.

Blocking work (torch, pymongo, redis) runs in a worker thread so the event loop keeps
heartbeating; one ``asyncio.Lock`` makes this pipeline the single writer of the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pymongo.errors
import redis.exceptions
import statsd

from common.errors import BadEvent, RecsysError, ServiceUnavailable
from common.events import Interaction, ItemEvent
from common.hot_users import HotUsers, pack_rows
from common.session_query import StreamClock, stream_clock
from common.settings import Settings
from common.stores import ItemCache, RecentEvent, UserDoc, UserStore
from models.base import Recommender
from models.events import EventBatch
from ranking.offline import RankInputs
from streams.dead_letters import DeadLetter
from streams.durable_users import DurableUsers
from streams.epochs import Anchor, LogEpochs, RecordLookup
from streams.messages import RawMessage
from streams.ranker_training import RankerTrainer
from streams.state import DecayedPopularity, Seen, UserState
from streams.user_writes import UserWriter, WritePolicy
from streams.validation import parse_interaction, parse_item

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    applied: int = 0
    skipped_duplicates: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    users_written: int = 0
    loss: float = 0.0
    learn_s: float = 0.0
    write_s: float = 0.0
    stale: int = 0
    click_to_vector_s: list[float] = field(default_factory=list)
    #: The batch's number in the durable writer: its offsets may be committed once
    #: ``InteractionPipeline.durable(durable_seq)`` is done (0: nothing to wait for).
    durable_seq: int = 0
    #: Users whose model history ring was reloaded from their document (it disagreed).
    history_reloads: int = 0

    def merge(self, other: BatchResult) -> None:
        """Add ``other``'s counts (after ``process_reliably`` split a batch)."""
        self.applied += other.applied
        self.skipped_duplicates += other.skipped_duplicates
        self.dead_letters.extend(other.dead_letters)
        self.users_written += other.users_written
        self.stale += other.stale
        self.history_reloads += other.history_reloads
        self.click_to_vector_s.extend(other.click_to_vector_s)
        self.durable_seq = max(self.durable_seq, other.durable_seq)


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
    """Validate → de-duplicate → update user state → learn → hot state and popularity
    (Redis) → durable documents (MongoDB, behind the pipeline).

    ``durable_users`` defaults to one over ``user_writes`` with the default limits;
    ``hot_state_ttl_s`` is the lifetime of the hot records (``items``' Redis client and
    key layout). A model exposing ``user_sparse_vectors`` still serves its dense
    ``user_vectors`` here (TODO: carry the sparse query in the hot record when a model
    that needs it becomes the product default).
    """

    def __init__(self, holder: ModelHolder, users: UserStore, items: ItemCache,
                 metrics: statsd.StatsClient, *, topic: str, dead_letter_topic: str,
                 history_size: int = 50, half_life_s: float = 7 * 86400.0,
                 max_event_bytes: int = 65536, lookup: RecordLookup | None = None,
                 user_writes: UserWriter | None = None,
                 durable_users: DurableUsers | None = None,
                 hot_state_ttl_s: float | None = None,
                 max_cached_users: int | None = None,
                 ranker_trainer: RankerTrainer | None = None) -> None:
        defaults = Settings()
        self.ranker_trainer = ranker_trainer
        if history_size < holder.model.history_size:
            raise ValueError(
                f"the users' stored history ({history_size} events) must hold the model's "
                f"recent-history ring ({holder.model.history_size}): the ring is loaded "
                "from it")
        self.holder = holder
        self.users = users
        self.user_writes = user_writes or UserWriter(
            users, metrics, WritePolicy.from_settings(defaults))
        self.durable_users = durable_users or DurableUsers(
            self.user_writes, metrics, max_dirty=defaults.worker_max_dirty_users,
            max_lag_s=defaults.worker_max_write_lag_s)
        ttl_s = hot_state_ttl_s or defaults.worker_hot_state_ttl_s
        if ttl_s <= self.durable_users.max_lag_s:
            raise ValueError(f"hot state TTL ({ttl_s} s) must exceed the durable write lag "
                             f"bound ({self.durable_users.max_lag_s} s)")
        self.hot = HotUsers(items.r, items.keys, ttl_s)
        self.items = items
        self.metrics = metrics
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.history_size = history_size
        self.max_event_bytes = max_event_bytes
        #: users' states, least recently touched first; at most ``max_cached_users``
        #: are kept between batches (an evicted user is reloaded on their next event,
        #: from the durable writer's pending copy or MongoDB, as after ``forget``)
        self.states: OrderedDict[str, UserState] = OrderedDict()
        self.max_cached_users = max_cached_users or defaults.worker_max_cached_users
        self.popularity = DecayedPopularity(half_life_s)
        self.epochs = LogEpochs(lookup=lookup)
        self._popularity_loaded = False
        self._sizes = (len(holder.model.user_ids), len(holder.model.item_ids))
        self.totals: dict[str, float] = {"events": 0, "applied": 0, "duplicates": 0,
                                         "dead_letters": 0, "batches": 0, "learn_s": 0.0,
                                         "write_s": 0.0, "process_s": 0.0}

    async def _load_popularity(self) -> None:
        meta, anchors = await asyncio.to_thread(
            lambda: (self.items.popular_meta(), self.items.popularity_anchors()))
        self.popularity = DecayedPopularity(self.popularity.half_life_s, meta.get("ref_ms"))
        self.epochs.reload({p: Anchor.decode(a) for p, a in anchors.items()})
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
        await self.epochs.resolve(messages)
        await self._apply(parsed, messages, result)
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
                     messages: Sequence[RawMessage], result: BatchResult) -> None:
        await self._load_states(list(dict.fromkeys(ev.user_id for ev, _ in parsed)))
        sampled = self._sample_for_ranker(parsed)
        rank_users: list[str] = []
        rank_inputs: list[RankInputs] = []
        fresh: list[tuple[Interaction, RawMessage]] = []
        pop_events: list[tuple[str, float, int]] = []
        weights = self.holder.model.event_weights
        ring = self.holder.model.history_size
        before: dict[str, Prior] = {}  # each applied user's history before this batch
        for ev, msg in parsed:
            state = self.states[ev.user_id]
            epoch = self.epochs.epoch(msg.partition)
            redelivered = state.redelivered(msg.partition, msg.offset, epoch)
            seen = Seen.NEW if redelivered else state.seen(ev)
            # Popularity has its own watermark (the partition anchor, written with the
            # counts): a redelivered event may be applied to the user but not counted.
            if seen is Seen.NEW and self.epochs.is_new(msg.partition, msg.offset):
                pop_events.append((ev.item_id, float(weights.get(ev.event, 1.0)), int(ev.ts)))
            if seen is Seen.CONFLICT:
                result.dead_letters.append(DeadLetter(
                    msg, f"conflicting duplicate: event_id {ev.event_id!r} was applied "
                    "before with a different item, type, ts or value", self.topic))
                continue
            if redelivered or seen is Seen.DUPLICATE:
                result.skipped_duplicates += 1
                continue
            if ev.user_id not in before:
                doc = state.doc
                before[ev.user_id] = Prior(doc.n_events, doc.recent[-ring:] if ring else [],
                                           doc.last_event_ms)
            state.apply(ev, msg.partition, msg.offset, epoch)
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
            rank_users, rank_inputs = await self._rank_inputs(
                [u for u in sampled if u in before], sampled)
            t0 = time.perf_counter()
            out = await self.holder.run(_learn_and_export, batch, dirty,
                                        [before[u] for u in dirty])
            result.loss, clock = out.loss, out.clock
            result.history_reloads = out.reloads
            result.learn_s = time.perf_counter() - t0
            docs = [self.states[u].doc for u in dirty]
            for j, doc in enumerate(docs):  # rows: lists only when written (as_floats)
                doc.vector, doc.model_version = out.fresh[j], out.version
                doc.long_vector = [] if out.long_term is None else out.long_term[j]
                doc.updated_at = None  # stamped when written
            # the hot records take the same values packed straight from the arrays
            packed = list(zip(pack_rows(out.fresh, len(docs)),
                              pack_rows(out.long_term, len(docs)), strict=True))
        else:
            docs, clock, packed = [], None, []
        t0 = time.perf_counter()
        # Move the decay reference first, so new increments never overflow a double.
        factor = self.popularity.rescale_factor(max((ts for _, _, ts in pop_events), default=0))
        increments = self.popularity.increments(pop_events)
        anchors = self.epochs.advanced(messages)
        # What serving reads (hot state) and popularity: Redis, one thread, before MongoDB.
        await asyncio.to_thread(self._write_redis, docs, packed, increments, anchors, factor,
                                clock)
        self.epochs.update(anchors)
        now = time.time()
        result.click_to_vector_s = [now - msg.timestamp_s for _, msg in fresh
                                    if msg.timestamp_s > 0]
        # MongoDB behind the pipeline: coalesced, one write in flight, bounded backlog.
        result.durable_seq = await self.durable_users.submit(docs)
        result.write_s = time.perf_counter() - t0
        result.users_written = len(docs)
        if fresh and rank_inputs:
            await self._ranker_examples(rank_inputs, rank_users, fresh)
        self._evict()

    def _sample_for_ranker(self, parsed: list[tuple[Interaction, RawMessage]]
                           ) -> dict[str, tuple[list[RecentEvent], int]]:
        """The users whose candidates become ranker examples this batch, with their
        recent events and event count before it (copied: the batch changes them)."""
        trainer = self.ranker_trainer
        if trainer is None:
            return {}
        model = self.holder.model
        users = list(dict.fromkeys(ev.user_id for ev, _ in parsed))
        known = [bool(self.states[u].doc.recent) and model.knows_user(u) for u in users]
        return {u: (list(self.states[u].doc.recent), self.states[u].doc.n_events)
                for u in trainer.pick(users, known)}

    async def _rank_inputs(self, users: list[str],
                           sampled: dict[str, tuple[list[RecentEvent], int]]
                           ) -> tuple[list[str], list[RankInputs]]:
        """The sampled users' candidates before the batch is learned, with the popular
        list re-read first, so an example's popular candidates and its popularity
        features come from one list (none this batch while Redis fails: best effort)."""
        trainer = self.ranker_trainer
        if trainer is None or not users:
            return [], []
        try:
            await trainer.refresh()
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("ranker examples skipped: %s", f"{type(exc).__name__}: {exc}"[:300])
            return [], []
        return users, await self.holder.run(
            trainer.inputs, users, {u: sampled[u][0] for u in users},
            {u: sampled[u][1] for u in users})

    async def _ranker_examples(self, inputs: list[RankInputs], users: list[str],
                               fresh: list[tuple[Interaction, RawMessage]]) -> None:
        """Label the sampled users' candidates with what they chose in the batch; start
        a retraining when due."""
        trainer = self.ranker_trainer
        assert trainer is not None
        chosen: dict[str, set[str]] = {}
        for ev, _ in fresh:
            chosen.setdefault(ev.user_id, set()).add(ev.item_id)
        try:
            kept = await trainer.add(inputs, chosen, users)
        except Exception as exc:  # examples are best effort: the batch is applied
            log.warning("ranker examples skipped: %s", f"{type(exc).__name__}: {exc}"[:300])
            return
        self.metrics.incr("ranker.examples", kept)
        if trainer.due():
            trainer.start_retrain()

    def durable(self, seq: int) -> asyncio.Future[None]:
        """Done once batch ``seq``'s user documents (and every earlier batch's) are
        durable in MongoDB: the consumer commits the batch's offsets then."""
        return self.durable_users.durable(seq)

    def forget(self, messages: Sequence[RawMessage]) -> None:
        """Drop cached state after a failed batch: a retry reloads it from MongoDB.

        Per-user state is applied in memory before the write; if the write fails those
        changes must not look applied, or the retry would skip the events. Documents
        waiting for their durable write belong to batches fully applied before this
        one: they stay, and the reload reads them first (:meth:`_load_states`).
        """
        self.states.clear()
        self._popularity_loaded = False

    def _evict(self) -> None:
        """Drop the least recently touched states beyond ``max_cached_users``: their
        documents were handed to the durable writer with their batch, so a reload
        (:meth:`_load_states`) finds them."""
        states = self.states
        for _ in range(len(states) - self.max_cached_users):
            states.popitem(last=False)

    async def _load_states(self, user_ids: list[str]) -> None:
        """Make ``user_ids`` (in batch order) the most recently touched states, loading
        the missing ones."""
        states = self.states
        for u in user_ids:  # touched now: the last to be evicted
            if u in states:
                states.move_to_end(u)
        missing = [u for u in user_ids if u not in states]
        if not missing:
            return
        # A version not yet durable is newer than MongoDB's: it comes first.
        docs: dict[str, UserDoc] = {}
        for u in missing:
            doc = self.durable_users.latest(u)
            if doc is not None:
                docs[u] = doc
        unknown = [u for u in missing if u not in docs]
        if unknown:
            docs.update(await asyncio.to_thread(self.users.get_many, unknown))
        for u in missing:
            doc = docs.get(u)
            self.states[u] = (UserState(doc, self.history_size) if doc
                              else UserState.new(u, self.history_size))

    def _write_redis(self, docs: list[UserDoc], packed: list[tuple[bytes, bytes]],
                     increments: dict[str, float], anchors: dict[int, Anchor],
                     factor: float | None, clock: StreamClock | None) -> None:
        # Popularity first: if its script fails the batch is retried or split, and no
        # hot record then shows events that are not applied.
        self._write_popularity(increments, anchors, factor)
        self.hot.put_many(docs, clock, packed)

    def _write_popularity(self, increments: dict[str, float], anchors: dict[int, Anchor],
                          factor: float | None) -> None:
        if factor is not None:
            self.items.rescale_popularity(factor, self.popularity.meta())
        if increments or anchors:
            self.items.add_popularity(increments, {p: a.encode() for p, a in anchors.items()},
                                      self.popularity.meta())

    def _emit(self, r: BatchResult, n: int) -> None:
        m = self.metrics
        pipe = m.pipeline()
        pipe.incr("events.interactions", n)
        pipe.incr("events.applied", r.applied)
        if r.skipped_duplicates:
            pipe.incr("events.duplicates", r.skipped_duplicates)
        if r.history_reloads:
            pipe.incr("model.history_reloads", r.history_reloads)
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
        pipe.gauge("users.cached", len(self.states))
        pipe.gauge("model.items", n_items)
        for lat in r.click_to_vector_s:  # every applied event, not one per user
            pipe.timing("latency.click_to_vector_ms", lat * 1000)
        pipe.gauge("epochs.regressions", self.epochs.regressions)
        pipe.send()


#: Errors of an unavailable dependency: retry the same batch until it goes through.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    pymongo.errors.ConnectionFailure, pymongo.errors.NetworkTimeout,
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
    ServiceUnavailable, OSError,
)


class Pipeline(Protocol):
    """What :func:`process_reliably` needs of a pipeline."""

    topic: str
    metrics: statsd.StatsClient

    async def process(self, messages: Sequence[RawMessage]) -> BatchResult: ...

    def forget(self, messages: Sequence[RawMessage]) -> None: ...


async def process_reliably(pipeline: Pipeline, messages: Sequence[RawMessage],
                           max_backoff_s: float = 5.0) -> BatchResult:
    """Process a batch so that nothing is lost, whatever fails.

    This function must not return before every event is either applied durably or in
    the dead-letter list (the caller commits the offsets after it). A dependency
    outage (MongoDB, Redis) is retried with backoff for as long as it lasts (the worker
    stays up; lag grows and shows on the dashboard). Any other error means a poison
    event the validation did not catch: the batch is split in halves, in order, until
    the events that fail on their own are isolated and dead-lettered. One poison event
    in a batch of ``n`` costs about ``2 log2 n`` small batches, not ``n``.
    """
    try:
        return await _retry_transient(pipeline, messages, max_backoff_s)
    except Exception as exc:  # noqa: BLE001 - isolate the poison event below
        if len(messages) == 1:
            reason = f"processing failed: {type(exc).__name__}: {exc}"
            return BatchResult(dead_letters=[DeadLetter(messages[0], reason, pipeline.topic)])
        log.warning("batch of %d failed (%r); splitting it to isolate the poison event",
                    len(messages), exc)
    mid = len(messages) // 2
    combined = await process_reliably(pipeline, messages[:mid], max_backoff_s)
    combined.merge(await process_reliably(pipeline, messages[mid:], max_backoff_s))
    return combined


async def _retry_transient(pipeline: Pipeline,
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


@dataclass(frozen=True)
class Prior:
    """A user's stored history as it was before a batch: what the model's ring must
    hold before it learns the batch's events (:meth:`Recommender.sync_histories`)."""

    n_events: int
    recent: list[tuple[str, str]]
    last_event_ms: int


@dataclass
class Exported:
    """What one learnt batch hands to serving: per user the query right at their last
    event (``fresh``) and, for a session-aware model, the query with the session gone
    (``long_term``; ``None`` otherwise), plus the clock they are as of."""

    loss: float
    fresh: np.ndarray
    long_term: np.ndarray | None
    version: str
    clock: StreamClock
    reloads: int = 0


def _learn_and_export(model: Recommender, batch: EventBatch, users: list[str],
                      prior: list[Prior]) -> Exported:
    # The document owns the history: first make the rings hold it (a no-op unless they
    # disagree: a restart from an older checkpoint, a retried batch)
    reloads = model.sync_histories(users, [p.n_events for p in prior],
                                   [p.recent for p in prior],
                                   [p.last_event_ms for p in prior])
    loss = model.learn_many(batch)
    # a hybrid's sparse part is not written per user: the API recomputes it from the
    # user's recent events and the stored co-occurrence lists (``stream_clock``)
    clock = stream_clock(model)
    if clock.half_life_s <= 0:
        return Exported(loss, model.user_vectors(users), None, model.version, clock, reloads)
    long_term, fresh, _ = model.user_vector_parts(users)
    return Exported(loss, fresh, long_term, model.version, clock, reloads)


class ItemPipeline:
    """Catalogue changes: metadata to Redis, vectors to the model and the FAISS service.

    Item events apply in event-time order, not arrival order: per item, the event with
    the newest ``ts`` wins (ties: the later offset, i.e. the later arrival), and an
    event older than the last one applied (its time is kept in ``items:version``) is
    skipped and counted as ``items.stale``. So a late ``delete`` cannot remove an item
    that was upserted after it, and a late ``upsert`` cannot revive a deleted one.
    """

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
        newest: dict[str, tuple[int, int, ItemEvent]] = {}
        for msg in messages:
            try:
                ev = parse_item(msg.value, self.max_event_bytes)
            except BadEvent as exc:
                result.dead_letters.append(DeadLetter(msg, exc.reason, self.topic))
                continue
            ts = int(ev.ts)
            if ev.item_id not in newest or (ts, msg.offset) >= newest[ev.item_id][:2]:
                if ev.item_id in newest:
                    result.stale += 1  # superseded within the batch
                newest[ev.item_id] = (ts, msg.offset, ev)
            else:
                result.stale += 1
        applied_ts = await asyncio.to_thread(self.items.item_versions, list(newest))
        upserts: dict[str, ItemEvent] = {}
        deletes: dict[str, int] = {}
        for item_id, (ts, _, ev) in newest.items():
            if ts < applied_ts.get(item_id, -1):
                result.stale += 1
            elif ev.op == "upsert":
                upserts[item_id] = ev
            else:
                deletes[item_id] = ts
        if upserts:
            # Metadata first: once the model knows an item, an export may index it, and an
            # indexed item must never lack its metadata.
            await asyncio.to_thread(self.items.put_items,
                                    {i: dict(ev.attributes or {}) for i, ev in upserts.items()},
                                    {i: int(ev.ts) for i, ev in upserts.items()})
            vectors = await self.holder.run(_upsert_items, list(upserts.values()))
            await asyncio.to_thread(self._push_vectors, vectors)
        if deletes:
            await asyncio.to_thread(self.items.mark_unavailable, list(deletes), deletes)
            await asyncio.to_thread(self._remove_vectors, list(deletes))
        result.applied = len(upserts) + len(deletes)
        pipe = self.metrics.pipeline()
        pipe.incr("events.items", len(messages))
        if result.stale:
            pipe.incr("items.stale", result.stale)
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
