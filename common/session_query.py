"""The session-aware query at request time, from two stored vectors and a clock.

Why here and not in ``models/``: the API computes it per request and must not load
torch or a model. Session-aware models are linear in their session gate ``g``, so the
query asked ``Δ`` after the user's last event is::

    q = long_term + g · (fresh − long_term),   g = 2^(−Δ / half_life)

where ``fresh`` is the query right at the last event (``g = 1``, what the worker
computes when it applies the event) and ``long_term`` the query with the session gone
(``g = 0``). ``models.base.Recommender.user_vector_parts`` exports both, and
``tests/test_models_session.py`` checks this function against the model's own query.

"Now" is the stream's clock (the latest event time the worker applied) advanced by the
wall time since the worker wrote it: replayed or delayed streams keep their own time,
and a quiet stream still ages its sessions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from common.stores import UserDoc


class StreamClock(msgspec.Struct, frozen=True):
    """What the worker publishes with every applied batch (``RedisKeys.stream_clock``)."""

    event_ms: int  # the latest event time applied
    wall_ms: int  # when that was written (epoch ms, the worker's wall clock)
    half_life_s: float  # the model's session half-life (0: no session part)

    def now_ms(self, wall_now_ms: int) -> int:
        """The stream's "now": its event time plus the wall time since it was written
        (never behind the event time, even if wall clocks disagree).

        >>> StreamClock(1_000, 50_000, 60.0).now_ms(52_500)
        3500
        """
        return self.event_ms + max(0, wall_now_ms - self.wall_ms)


def session_gate(gap_ms: float, half_life_s: float) -> float:
    """``2^(−gap / half_life)``: 1 right after an event, ½ one half-life later; 1 when
    there is no half-life (no session part: the query never fades).

    >>> session_gate(0, 1800.0), session_gate(1_800_000, 1800.0), session_gate(5, 0.0)
    (1.0, 0.5, 1.0)
    """
    if half_life_s <= 0:
        return 1.0
    return math.exp2(-max(gap_ms, 0.0) / (1000.0 * half_life_s))


def query_at(long_term: Sequence[float], fresh: Sequence[float], last_event_ms: int,
             now_ms: int, half_life_s: float) -> list[float]:
    """The query asked at ``now_ms`` (see the module). An empty ``long_term`` means the
    model has no session part: ``fresh`` is the query at any time.

    >>> query_at([0.0, 2.0], [4.0, 2.0], 0, 1_800_000, 1800.0)
    [2.0, 2.0]
    >>> query_at([], [4.0, 2.0], 0, 10**12, 1800.0)
    [4.0, 2.0]
    """
    if not long_term:
        return list(fresh)
    if len(long_term) != len(fresh):
        raise ValueError(f"long-term vector has {len(long_term)} coordinates, the fresh "
                         f"one {len(fresh)}")
    g = session_gate(now_ms - last_event_ms, half_life_s)
    return [a + g * (b - a) for a, b in zip(long_term, fresh, strict=True)]


def served_query(doc: UserDoc, clock: StreamClock | None, wall_now_ms: int) -> list[float]:
    """The query served for a user document now: its two vectors blended at the stream
    ``clock`` (:func:`query_at`), or ``doc.vector`` as it is when the model has no
    session part or no clock is known yet. The API and ``scripts.eval_pipeline`` both
    call it, so the evaluation reads exactly what is served.

    >>> doc = UserDoc("u", [4.0, 2.0], "v", last_event_ms=0, long_vector=[0.0, 2.0])
    >>> served_query(doc, StreamClock(1_800_000, 0, 1800.0), 0)
    [2.0, 2.0]
    >>> served_query(doc, None, 0)
    [4.0, 2.0]
    """
    if not doc.long_vector or clock is None:
        return doc.vector
    return query_at(doc.long_vector, doc.vector, doc.last_event_ms,
                    clock.now_ms(wall_now_ms), clock.half_life_s)
