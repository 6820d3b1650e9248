"""What the API needs of each dependency, as Protocols (and the shapes it answers with).

Production passes the real clients (pymongo's ``AsyncCollection``, ``redis.asyncio``,
:class:`~faiss_server.aclient.AsyncFaissClient`, a ``statsd`` client); tests pass small
fakes. Each Protocol lists only the calls the API makes, so a fake that satisfies it is
enough, and mypy checks that the real clients do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from types import TracebackType
from typing import Protocol

from common.session_query import StreamClock
from common.stores import UserDoc
from faiss_server.protocol import SearchResult, SimilarResult

#: A JSON object as the API answers it (encoded by msgspec).
Body = dict[str, object]
#: One item's display attributes (the JSON object stored at ``item:{id}``).
Metadata = dict[str, object]
#: A raw MongoDB document or change event.
Document = Mapping[str, object]


# --- MongoDB ``users`` --------------------------------------------------------------------
class UserCursor(Protocol):
    def limit(self, limit: int) -> UserCursor: ...

    def __aiter__(self) -> AsyncIterator[Document]: ...


class ChangeStream(Protocol):
    """An open change stream (``async with``)."""

    async def __aenter__(self) -> ChangeStream: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...

    async def try_next(self) -> Document | None: ...

    @property
    def resume_token(self) -> Mapping[str, object] | None: ...

    @property
    def alive(self) -> bool: ...


class UsersCollection(Protocol):
    """The async ``users`` collection: point reads, a warm-up scan, the change stream."""

    async def find_one(self, filter: Mapping[str, object],
                       projection: Mapping[str, int]) -> Document | None: ...

    def find(self, filter: Mapping[str, object], projection: Mapping[str, int], *,
             batch_size: int) -> UserCursor: ...

    async def watch(self, pipeline: Sequence[Mapping[str, object]], *, full_document: str,
                    resume_after: Mapping[str, object] | None,
                    max_await_time_ms: int) -> ChangeStream: ...


class UserLookup(Protocol):
    """User documents by id (:class:`~recommender_server.caches.UserCache`; a test fake
    may offer only this)."""

    async def get(self, user_id: str) -> UserDoc | None: ...


# --- Redis ----------------------------------------------------------------------------------
class RedisPipeline(Protocol):
    def zrevrange(self, name: str, start: int, end: int,
                  withscores: bool = False) -> object: ...

    def smembers(self, name: str) -> object: ...

    def execute(self) -> Awaitable[Sequence[object]]: ...


class AsyncRedis(Protocol):
    """``redis.asyncio.Redis`` with ``decode_responses=True``, as the catalog reads it."""

    def pipeline(self, transaction: bool = True) -> RedisPipeline: ...

    def mget(self, keys: list[str]) -> Awaitable[Sequence[str | bytes | None]]: ...

    def get(self, name: str) -> Awaitable[str | bytes | None]: ...


class HotLookup(Protocol):
    """Users' hot serving state (:class:`~recommender_server.hot_users.HotUserReader`)."""

    async def get(self, user_id: str) -> UserDoc | None: ...

    #: The worker's stream clock as last read (``None``: not known yet).
    clock: StreamClock | None


# --- FAISS service ------------------------------------------------------------------------
class Searcher(Protocol):
    """One user-vector search (the FAISS client, or the batcher in front of it)."""

    async def search(self, vector: Sequence[float], k: int, exclude: Sequence[str] = (),
                     boost: Mapping[str, float] | None = None,
                     only: Sequence[str] = ()) -> SearchResult: ...


class FaissReader(Searcher, Protocol):
    """The read endpoints of the FAISS service the API calls."""

    async def search_many(self, vectors: Sequence[Sequence[float]], k: int = 10,
                          exclude: Sequence[str] = (),
                          boosts: Sequence[Mapping[str, float]] = (),
                          only: Sequence[str] = ()) -> SearchResult: ...

    async def similar(self, item_id: str, k: int = 10,
                      exclude: Sequence[str] = ()) -> SimilarResult: ...

    async def health(self) -> Mapping[str, object]: ...


# --- statsd -------------------------------------------------------------------------------
class StatsPipeline(Protocol):
    def incr(self, stat: str, count: int = 1, rate: float = 1) -> None: ...

    def timing(self, stat: str, delta: float, rate: float = 1) -> None: ...

    def send(self) -> None: ...


class Stats(Protocol):
    """A ``statsd.StatsClient``: the API sends only through pipelines (one packet)."""

    def pipeline(self) -> StatsPipeline: ...
