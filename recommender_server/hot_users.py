"""The API's reader of the worker's hot user state (:mod:`common.hot_users`).

One ``GET`` per recommendation, not cached in process: the hot record is what makes a
click visible before the worker's MongoDB write lands, so a cached copy would only add
back the delay it removes. A Redis ``GET`` of ~1 KB costs a fraction of the FAISS call
that follows it.
"""

from __future__ import annotations

from common import hot_users
from common.stores import RedisKeys, UserDoc
from recommender_server.ports import AsyncRedis


class HotUserReader:
    """``get(user_id)``: the user's hot record as a :class:`UserDoc`, or ``None``.

    Redis errors propagate: the caller guards the read with its Redis breaker and falls
    back to the MongoDB document.
    """

    def __init__(self, redis: AsyncRedis, keys: RedisKeys) -> None:
        self.r = redis
        self.keys = keys

    async def get(self, user_id: str) -> UserDoc | None:
        raw = await self.r.get(self.keys.user_state(user_id))
        return None if raw is None else hot_users.decode(user_id, raw)
