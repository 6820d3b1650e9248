"""A user's hot serving state in Redis: what the API needs, written before MongoDB.

Why: the API used to read the query vector and recent history only from the MongoDB
user document, so a click reached recommendations only once the worker's MongoDB write
had landed, and with thousands of distinct users per second the local MongoDB-wire
server (~500–1,800 document writes/s) bounded the whole worker. Now the worker writes
this small record for every user of an applied batch in one pipelined Redis round trip,
and writes MongoDB (the durable state, the source of truth after a restart) behind the
pipeline, coalesced (:mod:`streams.durable_users`).

The record holds only what serving reads: the query vector (float32 bytes), the user's
recent events (the one history: the seen/recent filter derives its items from it, as
from the MongoDB document), the model version, the last event time and a
**version**, the user's event count ``n_events``. Both the hot record and the MongoDB
document carry ``n_events``; a reader takes the higher one (:func:`newest`), so a hot
record that expired, or one left behind by a failed write, can never hide a newer
document, and a document can never hide a newer hot record.

The key is ``RedisKeys.user_state`` (the one place key names are spelled); values are
JSON (``msgspec``; the vector base64-encoded) so clients decoding replies as text, like
the API's, read them as they are.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Sequence

import msgspec
import numpy as np
import redis

from common.session_query import StreamClock
from common.stores import RedisKeys, UserDoc, as_floats


class HotUser(msgspec.Struct, array_like=True, frozen=True):
    """The hot record of one user (compact: encoded as a JSON array)."""

    n_events: int
    last_event_ms: int
    model_version: str
    vector: bytes  # float32, little-endian
    recent: list[tuple[str, str]]  # (item_id, event type), newest last
    long_vector: bytes = b""  # float32; empty: the model has no session part


_BIG_ENDIAN = sys.byteorder == "big"
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(HotUser)


def _pack(values: list[float]) -> bytes:
    vector = array.array("f", values)
    if _BIG_ENDIAN:
        vector.byteswap()
    return vector.tobytes()


def _unpack(raw: bytes) -> list[float]:
    vector = array.array("f", raw)
    if _BIG_ENDIAN:
        vector.byteswap()
    return vector.tolist()


def encode(doc: UserDoc, packed: tuple[bytes, bytes] | None = None) -> bytes:
    """The hot record of ``doc`` as stored in Redis; ``packed``: its two vectors already
    packed (:func:`pack_rows`), the same values as ``doc.vector`` and ``doc.long_vector``.

    >>> doc = UserDoc("u1", [0.5, -1.0], "v3", recent=[("a", "view"), ("b", "click")],
    ...               n_events=7)
    >>> back = decode("u1", encode(doc))
    >>> back.vector, back.recent, back.history, back.n_events, back.model_version
    ([0.5, -1.0], [('a', 'view'), ('b', 'click')], ['a', 'b'], 7, 'v3')
    """
    vector, long_vector = packed or (_pack(as_floats(doc.vector)),
                                     _pack(as_floats(doc.long_vector)))
    return _encoder.encode(HotUser(doc.n_events, doc.last_event_ms, doc.model_version,
                                   vector, doc.recent, long_vector))


def pack_rows(rows: np.ndarray | None, n: int) -> list[bytes]:
    """Each row of a float array as the hot record's little-endian float32 bytes
    (``n`` empty ones for ``None``): the worker packs its query vectors straight from
    the model's array, ~0.1 µs a row against ~3.7 µs for a list of 96 floats.

    >>> pack_rows(np.array([[0.5, -1.0]]), 1) == [_pack([0.5, -1.0])]
    True
    """
    if rows is None:
        return [b""] * n
    f32 = np.ascontiguousarray(rows, dtype="<f4")
    return [row.tobytes() for row in f32]


def decode(user_id: str, raw: bytes | str) -> UserDoc:
    """A :class:`UserDoc` holding the served fields of a hot record.

    Raises ``msgspec.DecodeError`` for a record that is not one (e.g. written by an
    older worker, whose records held item ids only): readers treat it as missing.
    """
    hot = _decoder.decode(raw)
    return UserDoc(user_id=user_id, vector=_unpack(hot.vector),
                   model_version=hot.model_version, recent=hot.recent,
                   n_events=hot.n_events, last_event_ms=hot.last_event_ms,
                   long_vector=_unpack(hot.long_vector))


_clock_decoder = msgspec.json.Decoder(StreamClock)


def decode_clock(raw: bytes | str | None) -> StreamClock | None:
    """The stream clock as stored (``None`` if there is none yet).

    >>> decode_clock(_encoder.encode(StreamClock(5, 6, 1800.0)))
    StreamClock(event_ms=5, wall_ms=6, half_life_s=1800.0, sparse=None)
    """
    return None if raw is None else _clock_decoder.decode(raw)


def newest(hot: UserDoc | None, stored: UserDoc | None) -> UserDoc | None:
    """The newer of a hot record and a stored document: the higher ``n_events``; on a tie
    the hot one (same events applied; the hot vector is never older).

    >>> old, new = UserDoc("u", [], "", n_events=3), UserDoc("u", [], "", n_events=4)
    >>> newest(new, old) is new, newest(old, new) is new, newest(None, old) is old
    (True, True, True)
    """
    if hot is None or (stored is not None and stored.n_events > hot.n_events):
        return stored
    return hot


#: ``SET`` each key to its value with the TTL. KEYS: user-state keys. ARGV: TTL in ms,
#: then one value per key. One command per chunk instead of one per user: redis-py
#: spent ~20 µs packing and parsing each pipelined ``SET`` (0.1 s for 5,000 users).
_SET_ALL = """
local ttl = ARGV[1]
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ttl) end
return #KEYS
"""


class HotUsers:
    """Writes (worker) and reads (tools, tests) hot records through a sync Redis client."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, ttl_s: float,
                 chunk: int = 1000) -> None:
        if ttl_s <= 0:
            raise ValueError(f"hot state TTL must be positive, got {ttl_s}")
        self.r = client
        self.keys = keys
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.chunk = chunk  # users per script call: bounds how long Redis is busy with one
        self._set_all = client.register_script(_SET_ALL)

    def put_many(self, docs: Sequence[UserDoc], clock: StreamClock | None = None,
                 packed: Sequence[tuple[bytes, bytes]] | None = None) -> None:
        """Write the hot records of ``docs`` in one pipelined round trip (each with its
        TTL, so an idle user's record goes away on its own), and the stream ``clock``
        their vectors are as of (what the API blends a session query by). ``packed``:
        each document's two vectors already packed (see :func:`encode`)."""
        if not docs:
            return
        pipe = self.r.pipeline(transaction=False)
        if clock is not None:
            pipe.set(self.keys.stream_clock, _encoder.encode(clock))
        for start in range(0, len(docs), self.chunk):
            part = docs[start:start + self.chunk]
            values = (map(encode, part) if packed is None else
                      map(encode, part, packed[start:start + self.chunk]))
            self._set_all(keys=[self.keys.user_state(d.user_id) for d in part],
                          args=[self.ttl_ms, *values], client=pipe)
        pipe.execute()

    def put_clock(self, clock: StreamClock) -> None:
        """Set the stream clock alone (a bootstrap publishes its model's)."""
        self.r.set(self.keys.stream_clock, _encoder.encode(clock))

    def clock(self) -> StreamClock | None:
        """The stream clock the worker wrote last (``None`` before its first batch)."""
        return decode_clock(self.r.get(self.keys.stream_clock))

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserDoc]:
        """Hot records of the ``user_ids`` that have one."""
        if not user_ids:
            return {}
        raw = self.r.mget([self.keys.user_state(u) for u in user_ids])
        return {u: decode(u, v) for u, v in zip(user_ids, raw, strict=True)
                if v is not None}
