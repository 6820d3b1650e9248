"""User documents written to MongoDB behind the pipeline: coalesced, overlapped, bounded.

Why: the pipeline used to await every batch's MongoDB write before applying the next
one, so with many distinct users per second (5,000 users clicking at once) the local
MongoDB-wire server (~500–1,800 document writes/s) bounded the worker at ~2,000
events/s. Serving no longer waits on that write (the hot state in Redis,
:mod:`common.hot_users`, is written first), so the durable write can run behind:

- **Overlapped.** :meth:`DurableUsers.submit` records a batch's documents and returns a
  sequence number at once; one flusher task writes them while the pipeline applies the
  next batches.
- **Coalesced.** Documents wait in a dict keyed by user: a user touched by ten batches
  while a write is in flight is written once, in its latest version. A flush takes every
  waiting document, so when it lands, every batch submitted before it started is
  durable (a document overwritten by a later batch is subsumed by the later version).
- **Committed only when durable.** :meth:`durable` gives a future per sequence number;
  the consumer commits a batch's offsets only once it is done, so at-least-once
  delivery and the idempotent replays of the watermarks are unchanged.
- **Spaced.** A flush starts at least ``min_interval_s`` after the previous one started
  (unless :meth:`drain` or the back-pressure below needs it now): the more events per
  user a flush covers, the fewer documents the database writes. With 5,000 users
  clicking 10,000 times a second, flushing back to back wrote a document for every ~2
  events and the local MongoDB-wire server took ~60% of a core next to the worker.
- **Bounded.** When more than ``max_dirty`` users wait (in flight included) or the
  oldest waits longer than ``max_lag_s``, :meth:`submit` waits for the writes: memory
  and the replay after a crash stay bounded, and a slow database slows the worker down
  instead of growing a backlog.
- **The write rules of issue 15 stay whole.** Every flush goes through one
  :class:`~streams.user_writes.UserWriter` (bounded chunks, one write in flight, probe
  before re-sending), and flushes run one after the other, so an older version of a
  document can never land after a newer one.

Documents are copied when submitted: the pipeline keeps mutating its own copies while
an older version is being written (and probed) in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import statsd

from common.stores import UserDoc

log = logging.getLogger(__name__)


class DocWriter(Protocol):
    """What :class:`DurableUsers` needs: :class:`~streams.user_writes.UserWriter`."""

    async def write(self, docs: Sequence[UserDoc]) -> None: ...


#: Fields the pipeline replaces, never changes in place: a snapshot may share them.
SHARED_FIELDS = frozenset({"vector", "long_vector", "watermark"})


def snapshot(doc: UserDoc) -> UserDoc:
    """A copy of ``doc`` that shares no list or dict the pipeline mutates.

    ``recent`` and ``event_ids`` are copied (:meth:`streams.state.UserState.apply`
    appends to them and trims them in place); their entries are shared (tuples, and
    lists never changed). The :data:`SHARED_FIELDS` are shared as they are: each batch
    assigns new query vectors (``InteractionPipeline._apply``) and each event a new
    watermark dict, and copying two 96-float lists per user per batch was most of this
    function's cost. (Built directly: this runs once per user per batch, and
    ``dataclasses.replace`` with deep copies of the entries cost ~22 µs a document, a
    tenth of the worker's time with 5,000 users at once.)
    """
    return UserDoc(doc.user_id, doc.vector, doc.model_version, list(doc.recent),
                   doc.n_events, doc.last_event_ms, doc.updated_at, doc.watermark,
                   list(doc.event_ids), doc.long_vector)


class DurableUsers:
    """Coalescing, overlapped, bounded writer of user documents (module docstring)."""

    def __init__(self, writer: DocWriter, metrics: statsd.StatsClient, *, max_dirty: int,
                 max_lag_s: float, min_interval_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_dirty < 1 or max_lag_s <= 0:
            raise ValueError("max_dirty and max_lag_s must be positive")
        if not 0.0 <= min_interval_s < max_lag_s:
            raise ValueError(f"min_interval_s must be in [0, max_lag_s), got {min_interval_s}")
        self.writer = writer
        self.metrics = metrics
        self.max_dirty = max_dirty
        self.max_lag_s = max_lag_s
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last_start = -float("inf")  # when the last flush started (``clock``)
        self._hurry = asyncio.Event()  # set: the next flush starts now (drain, back-pressure)
        self._dirty: dict[str, UserDoc] = {}
        self._dirty_since = 0.0
        self._inflight: dict[str, UserDoc] = {}
        self._inflight_since = 0.0
        self.submitted = 0  # sequence number of the last submitted batch
        self.durable_seq = 0  # every batch up to this one is durable
        self.flushes = 0
        self.docs_written = 0
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._progress: list[asyncio.Future[None]] = []

    # --- what the pipeline calls -------------------------------------------------------
    def latest(self, user_id: str) -> UserDoc | None:
        """A copy of the newest not-yet-durable document of ``user_id`` (``None`` if every
        version is durable): after a failed batch the pipeline reloads state from here
        first, because MongoDB may not hold the batches applied before it yet."""
        doc = self._dirty.get(user_id) or self._inflight.get(user_id)
        return None if doc is None else snapshot(doc)

    @property
    def pending(self) -> int:
        """Users whose newest document is not durable yet (waiting or in flight)."""
        return len(self._dirty) + len(self._inflight)

    def lag_s(self) -> float:
        """Age of the oldest document not durable yet (0 when none)."""
        since = [t for t, d in ((self._inflight_since, self._inflight),
                                (self._dirty_since, self._dirty)) if d]
        return self.clock() - min(since) if since else 0.0

    async def submit(self, docs: Sequence[UserDoc]) -> int:
        """Record ``docs`` (copied) for the durable write; return the batch's sequence
        number. Waits while the back-pressure limits are exceeded."""
        self._raise_if_failed()
        if docs:
            if not self._dirty:
                self._dirty_since = self.clock()
            for doc in docs:
                self._dirty.pop(doc.user_id, None)  # re-inserted: oldest first stays true
                self._dirty[doc.user_id] = snapshot(doc)
        self.submitted += 1
        seq = self.submitted
        if not docs and not self.pending:
            self.durable_seq = seq  # nothing to write, nothing before it pending
        else:
            self._start()
        waited = False
        t0 = self.clock()
        while self.pending > self.max_dirty or self.lag_s() > self.max_lag_s:
            waited = True
            self._hurry.set()
            await self._next_progress()
        if waited:
            pipe = self.metrics.pipeline()
            pipe.incr("users.durable.backpressure")
            pipe.timing("users.durable.backpressure_ms", (self.clock() - t0) * 1000)
            pipe.send()
        return seq

    def durable(self, seq: int) -> asyncio.Future[None]:
        """A future done once batch ``seq`` (and every batch before it) is durable; it
        raises the writer's error if the writes stopped."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._error is not None:
            fut.set_exception(self._error)
        elif seq <= self.durable_seq:
            fut.set_result(None)
        else:
            self._waiters.append((seq, fut))
        return fut

    async def drain(self) -> None:
        """Return once everything submitted is durable (shutdown, rebalance, tests);
        a flush waiting out ``min_interval_s`` starts at once."""
        self._hurry.set()
        await self.durable(self.submitted)

    # --- the flusher ---------------------------------------------------------------------
    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _spacing(self) -> None:
        """Wait until ``min_interval_s`` after the last flush started, or a hurry."""
        wait = self._last_start + self.min_interval_s - self.clock()
        if wait > 0 and not self._hurry.is_set():
            try:
                await asyncio.wait_for(self._hurry.wait(), wait)
            except TimeoutError:
                pass

    async def _flush_loop(self) -> None:
        try:
            while self._dirty:
                await self._spacing()
                self._hurry.clear()
                self._last_start = self.clock()
                self._inflight, self._dirty = self._dirty, {}
                self._inflight_since = self._dirty_since
                upto = self.submitted
                t0 = self.clock()
                await self.writer.write(list(self._inflight.values()))
                now = self.clock()
                n = len(self._inflight)
                pipe = self.metrics.pipeline()
                pipe.incr("users.durable.written", n)
                pipe.timing("users.durable.flush_ms", (now - t0) * 1000)
                pipe.timing("users.durable.lag_ms", (now - self._inflight_since) * 1000)
                pipe.gauge("users.durable.pending", len(self._dirty))
                pipe.send()
                self.flushes += 1
                self.docs_written += n
                self._inflight = {}
                self.durable_seq = upto
                self._notify()
            self.durable_seq = self.submitted  # batches with no documents, nothing pending
            self._notify()
        except BaseException as exc:
            # Not transient (UserWriter waits out outages): stop writing, fail the waiters;
            # the consumer crashes without committing, and a restart replays from there.
            log.critical("durable user writes stopped: %r", exc)
            self._error = exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
            self._notify()
            if not isinstance(exc, Exception):
                raise

    def _notify(self) -> None:
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for seq, fut in self._waiters:
            if fut.done():
                continue
            if self._error is not None:
                fut.set_exception(self._error)
            elif seq <= self.durable_seq:
                fut.set_result(None)
            else:
                keep.append((seq, fut))
        self._waiters = keep
        progress, self._progress = self._progress, []
        for fut in progress:
            if not fut.done():
                fut.set_result(None)

    async def _next_progress(self) -> None:
        self._raise_if_failed()
        self._start()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._progress.append(fut)
        await fut
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError("durable user writes stopped") from self._error
