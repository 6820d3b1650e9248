"""Coalesce concurrent user-vector searches of one API worker into batched FAISS calls.

Each FAISS HTTP request costs ~100-150 µs of fixed CPU on both sides (HTTP parsing,
routing, two socket writes per response) next to ~50-100 µs of actual HNSW search per
query; at ≥ 1,000 requests/s on 2 shared cores that overhead matters. The FAISS search
endpoint already takes up to ``max_batch`` query vectors per request, but one
``exclude`` list for all of them, so batched queries carry no exclusions: each asks for
``k + len(history)`` candidates and the caller drops the user's seen items (the same
items an exclusion would skip; FAISS just returns a few more). Users with a longer
history than ``max_history`` are searched alone, with exclusions, as before.

Natural batching, no timer: while fewer than ``max_inflight`` batches are in flight a
query is sent at once; otherwise it waits for the next free slot and goes with every
other query queued meanwhile. Idle, a query costs one round trip as before; under load
batches grow by themselves and a query waits at most one in-flight round trip more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

from common.errors import ServiceUnavailable
from faiss_server.protocol import Hit, SearchResult
from recommender_server.ports import FaissReader

#: What a queued query waits for: ``(index version, its hits)``.
_Answer = asyncio.Future[tuple[str, list[Hit]]]
#: A queued query: ``(vector, candidates wanted, its future, its sparse part or None)``.
_Query = tuple[Sequence[float], int, _Answer, Mapping[str, float] | None]


class SearchBatcher:
    """``await search(vector, k, exclude)`` → :class:`SearchResult` with one row."""

    def __init__(self, faiss: FaissReader, max_batch: int = 64, max_inflight: int = 2,
                 max_history: int = 100, down: Callable[[], bool] = lambda: False) -> None:
        self.faiss = faiss
        #: True while FAISS is known to be down (its breaker is open): queries queued
        #: behind stalled batches then fail at once instead of being sent to wait out
        #: another timeout.
        self.down = down
        self.max_batch, self.max_inflight = max_batch, max_inflight
        self.max_history = max_history
        self._queue: list[_Query] = []
        self._inflight = 0
        self.batches = self.queries = 0

    async def search(self, vector: Sequence[float], k: int, exclude: Sequence[str] = (),
                     boost: Mapping[str, float] | None = None,
                     only: Sequence[str] = ()) -> SearchResult:
        """``boost``: the query's sparse part (``SearchBody.boosts``); a boosted seen
        item the service ranks high is dropped here like any other seen item. A search
        within ``only`` (a filter resolved to ids) goes alone: its ids are its own."""
        if only or len(exclude) > self.max_history:
            return await self.faiss.search(vector, k, exclude, boost, only)
        fut: _Answer = asyncio.get_running_loop().create_future()
        self._queue.append((vector, k + len(exclude), fut, boost or None))
        self._pump()
        version, hits = await fut
        if exclude:
            seen = set(exclude)
            hits = [h for h in hits if h[0] not in seen]
        return SearchResult(version, [hits[:k]])

    def _pump(self) -> None:
        if self._queue and self.down():
            queued, self._queue = self._queue, []
            for _, _, fut, _ in queued:
                if not fut.done():
                    fut.set_exception(ServiceUnavailable("FAISS is down (breaker open)"))
            return
        while self._queue and self._inflight < self.max_inflight:
            # One dimension per batch: a malformed vector (FAISS answers 400) fails only
            # the queries of its own size, never its neighbours'.
            dim = len(self._queue[0][0])
            batch: list[_Query] = []
            rest: list[_Query] = []
            for q in self._queue:
                (batch if len(q[0]) == dim and len(batch) < self.max_batch else rest).append(q)
            self._queue = rest
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight -= 1
        self._pump()

    async def _send(self, batch: list[_Query]) -> None:
        self.batches += 1
        self.queries += len(batch)
        try:
            boosts = [b or {} for _, _, _, b in batch]
            res = await self.faiss.search_many([v for v, _, _, _ in batch],
                                               max(k for _, k, _, _ in batch),
                                               boosts=boosts if any(boosts) else ())
            for (_, k, fut, _), row in zip(batch, res.results, strict=True):
                if not fut.done():
                    fut.set_result((res.version, row[:k]))
        except BaseException as exc:
            for _, _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def stats(self) -> dict[str, float]:
        return {"batches": self.batches, "queries": self.queries,
                "mean_batch": round(self.queries / max(1, self.batches), 2)}
