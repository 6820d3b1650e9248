"""The API's reader of the worker's hot user state (:mod:`common.hot_users`).

One ``GET`` per recommendation, not cached in process: the hot record is what makes a
click visible before the worker's MongoDB write lands, so a cached copy would only add
back the delay it removes. A Redis ``GET`` of ~1 KB costs a fraction of the FAISS call
that follows it.
"""

from __future__ import annotations

from common import hot_users
from common.session_query import StreamClock
from common.stores import RedisKeys, UserDoc
from recommender_server.ports import AsyncRedis


class HotUserReader:
    """``get(user_id)``: the user's hot record as a :class:`UserDoc`, or ``None``; the
    same round trip (``MGET``) refreshes :attr:`clock`, the worker's stream clock, which
    a session-aware query is blended by (:mod:`common.session_query`).

    Redis errors propagate: the caller guards the read with its Redis breaker and falls
    back to the MongoDB document (and the last clock read). So does
    ``msgspec.DecodeError`` for a record that is not one (written by an older worker,
    until its TTL ends it): the caller serves the MongoDB document.
    """

    def __init__(self, redis: AsyncRedis, keys: RedisKeys) -> None:
        self.r = redis
        self.keys = keys
        self.clock: StreamClock | None = None

    async def get(self, user_id: str) -> UserDoc | None:
        raw, clock = await self.r.mget([self.keys.user_state(user_id),
                                        self.keys.stream_clock])
        if clock is not None:
            self.clock = hot_users.decode_clock(clock)
        return None if raw is None else hot_users.decode(user_id, raw)
