"""Writing user documents to a slow or frozen MongoDB without making it slower.

Tracker issue 15, defect 3: the worker wrote a whole micro-batch (up to 5,000 documents)
in one ``bulk_write`` with a 5 s socket timeout and no server-side limit. When the
database slowed down, the client gave up, the batch was retried, and every abandoned
copy kept running on the server: the database stayed busy for half an hour after the
worker had stopped. :class:`UserWriter` replaces that write with these rules:

- **Bounded.** Each write (at most ``chunk`` documents) runs under ``pymongo.timeout``:
  the socket wait is bounded and the server receives ``maxTimeMS`` (under a timeout
  pymongo leaves ``wtimeout`` out of the write concern: the driver specification for
  client-side operation timeouts relies on ``maxTimeMS`` for that wait too).
- **One write in flight per worker.** Calls are serialised by a lock, and a timed-out
  write is *in doubt*: it may still be running, or be queued in the server's socket
  buffer, and may land later. Nothing is written again until it cannot run any more.
- **Probe, then resend only what is missing.** After a timeout: back off (exponential,
  full jitter), then read the in-doubt documents' versions (watermark and event count)
  under the same bound. A document whose stored version is ours has landed. When probes
  ``timeout_s / 4`` apart, each answered promptly, see the same set landed for
  ``timeout_s``, the server ran through that window and the old write has ended: on
  MongoDB ``maxTimeMS`` has killed it by then, and on a server that only enforces it
  cooperatively (SecantusDB does not stop upserts of new documents) an operation still
  running would have landed more. Only then are the missing documents sent again.
  Resending earlier could let the abandoned copy land *after* a later batch's write of
  the same user and undo applied events.
- **Smaller under pressure.** The chunk size halves after a timeout and grows back
  additively after each success (AIMD, as TCP does), so a slow server gets writes it can
  finish within the bound instead of ever larger retries.

The caller (``InteractionPipeline``) awaits :meth:`UserWriter.write`, which returns only
when every document is durable, so offsets are still committed after the effects are
(at-least-once delivery, idempotent whole-document replaces keyed by ``_id``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pymongo.errors
import statsd

from common.settings import Settings
from common.stores import UserDoc

log = logging.getLogger(__name__)


class UserDocStore(Protocol):
    """What :class:`UserWriter` needs from the user store (``common.stores.UserStore``)."""

    def upsert_many(self, docs: Sequence[UserDoc], timeout_s: float | None = None) -> int:
        """Write ``docs``; raise a timeout error if that takes longer than ``timeout_s``."""
        ...

    def landed(self, docs: Sequence[UserDoc], timeout_s: float | None = None) -> set[str]:
        """Ids of ``docs`` whose stored version is the one in ``docs``."""
        ...


@dataclass(frozen=True)
class WritePolicy:
    """The limits of :class:`UserWriter`; the first three come from settings."""

    max_chunk: int
    timeout_s: float
    backoff_max_s: float
    min_chunk: int = 16
    backoff_base_s: float = 0.1

    def __post_init__(self) -> None:
        if self.max_chunk < 1 or self.timeout_s <= 0 or self.backoff_max_s <= 0:
            raise ValueError(f"write policy limits must be positive: {self}")

    @classmethod
    def from_settings(cls, settings: Settings) -> WritePolicy:
        return cls(max_chunk=settings.worker_write_chunk,
                   timeout_s=settings.worker_write_timeout_s,
                   backoff_max_s=settings.worker_write_backoff_max_s)


class ChunkSize:
    """Documents per write: halved after a timeout, grown by an eighth of the maximum
    after each success (additive increase, multiplicative decrease).

    >>> size = ChunkSize(maximum=500, minimum=16)
    >>> size.shrink(); size.shrink(); size.value
    125
    >>> size.grow(); size.value
    187
    >>> for _ in range(10): size.grow()
    >>> size.value
    500
    """

    def __init__(self, maximum: int, minimum: int) -> None:
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.value = maximum

    def shrink(self) -> None:
        self.value = max(self.minimum, self.value // 2)

    def grow(self) -> None:
        self.value = min(self.maximum, self.value + max(1, self.maximum // 8))


def backoff_s(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**failures))``.

    Full jitter spreads the retries of many workers that timed out together.

    >>> rng = random.Random(0)
    >>> all(0 <= backoff_s(n, 0.1, 5.0, rng) <= min(5.0, 0.1 * 2 ** n) for n in range(12))
    True
    """
    return rng.uniform(0.0, min(cap_s, base_s * 2.0 ** min(failures, 30)))


def in_doubt(exc: BaseException) -> bool:
    """Whether a failed write may still have been, or may still be, applied.

    Timeouts (client or ``maxTimeMS``) and lost connections: the request may have reached
    the server. Other errors (a document too large, a bad update) are not transient and
    go to the pipeline's poison handling.
    """
    return isinstance(exc, pymongo.errors.ConnectionFailure) or (
        isinstance(exc, pymongo.errors.PyMongoError) and bool(getattr(exc, "timeout", False)))


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


class UserWriter:
    """Writes user documents in bounded chunks, at most one write in flight.

    ``sleep``, ``clock`` and ``run`` (how a blocking store call is awaited; a thread by
    default) are parameters so the policy can be tested on a fake store and a fake clock.
    """

    def __init__(self, store: UserDocStore, metrics: statsd.StatsClient, policy: WritePolicy,
                 *, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 run: Callable[..., Awaitable[Any]] = _in_thread) -> None:
        self.store = store
        self.metrics = metrics
        self.policy = policy
        self.chunk = ChunkSize(policy.max_chunk, policy.min_chunk)
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.clock = clock
        self.run = run
        self.failures = 0  # timeouts (writes and probes) since the last successful write
        self._lock = asyncio.Lock()

    async def write(self, docs: Sequence[UserDoc]) -> None:
        """Return once every document in ``docs`` is durable; wait out any outage.

        Non-transient errors propagate (the pipeline isolates the poison event).
        """
        if not docs:
            return
        async with self._lock:
            pending = list(docs)
            while pending:
                chunk = pending[:self.chunk.value]
                rest = pending[len(chunk):]
                if await self._attempt(chunk):
                    pending = rest
                else:
                    pending = await self._settle(chunk) + rest

    async def _attempt(self, chunk: list[UserDoc]) -> bool:
        """One bounded write; False if its outcome is in doubt."""
        try:
            await self.run(self.store.upsert_many, chunk, self.policy.timeout_s)
        except pymongo.errors.PyMongoError as exc:
            if not in_doubt(exc):
                raise
            self.failures += 1
            self.chunk.shrink()
            pipe = self.metrics.pipeline()
            pipe.incr("users.write.timeouts")
            pipe.gauge("users.write.chunk_size", self.chunk.value)
            pipe.send()
            log.warning("write of %d user documents in doubt (%s: %s); chunk now %d",
                        len(chunk), type(exc).__name__, exc, self.chunk.value)
            return False
        self.failures = 0
        if self.chunk.value < self.chunk.maximum:
            self.chunk.grow()
            self.metrics.gauge("users.write.chunk_size", self.chunk.value)
        return True

    async def _probe(self, chunk: list[UserDoc]) -> frozenset[str] | None:
        """Ids of ``chunk`` that have landed, or None if the server did not answer."""
        self.metrics.incr("users.write.probes")
        try:
            return frozenset(await self.run(self.store.landed, chunk, self.policy.timeout_s))
        except pymongo.errors.PyMongoError as exc:
            if not in_doubt(exc):
                raise
            return None

    async def _settle(self, chunk: list[UserDoc]) -> list[UserDoc]:
        """Wait until the in-doubt write of ``chunk`` cannot run any more; return the
        documents it did not land (to be written again).

        "Cannot run any more" is observed, not assumed: a quiet window of ``timeout_s``
        covered by probes at most ``timeout_s / 4`` apart, each answered within that
        gap, all seeing the same documents landed. A server frozen in between would have
        held a probe (the window starts again), so the window is one it ran through.
        """
        t_doubt = self.clock()
        quiet_s = self.policy.timeout_s
        gap = quiet_s / 4
        window: tuple[float, frozenset[str]] | None = None  # start, landed throughout
        delay = backoff_s(self.failures, self.policy.backoff_base_s,
                          self.policy.backoff_max_s, self.rng)
        while True:
            await self.sleep(delay)
            sent = self.clock()
            landed = await self._probe(chunk)
            now = self.clock()
            if landed is None:  # frozen or down: the old write may still be queued
                self.failures += 1
                window = None
                delay = backoff_s(self.failures, self.policy.backoff_base_s,
                                  self.policy.backoff_max_s, self.rng)
                continue
            missing = [d for d in chunk if d.user_id not in landed]
            if not missing:
                break
            if window is None or window[1] != landed or now - sent > gap:
                window = (now, landed)  # first answer, progress, or a stall: start again
            elif now - window[0] >= quiet_s:  # ran through the window, nothing landed
                pipe = self.metrics.pipeline()
                pipe.incr("users.write.retries")
                pipe.incr("users.write.resent", len(missing))
                pipe.timing("users.write.in_doubt_ms", (now - t_doubt) * 1000)
                pipe.send()
                log.info("re-sending %d of %d in-doubt user documents (%d landed)",
                         len(missing), len(chunk), len(landed))
                return missing
            delay = gap
        self.metrics.timing("users.write.in_doubt_ms", (self.clock() - t_doubt) * 1000)
        log.info("in-doubt write of %d user documents had landed", len(chunk))
        return []
