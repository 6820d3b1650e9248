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

The **sparse part** of a dense + sparse query (the ``hybrid`` model: co-occurrence of the
user's recent items, :class:`SparseQuery`) is computed here too, from the user's
``recent`` events and the co-occurrence lists the worker stores per item
(``RedisKeys.cooc``): :func:`sparse_query`. The FAISS service adds it to the dense inner
products (``SearchBody.boosts``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import msgspec

from common.stores import RecentEvent, UserDoc, as_floats

if TYPE_CHECKING:  # the API imports this module and must not load torch
    from models.base import Recommender


class SparseQuery(msgspec.Struct, frozen=True):
    """How a model scores co-occurrence of the recent items (``weight`` 0: it does not):
    ``weight · g · Σ_age recency^age · w(event) · cos(item, j)`` over the user's last
    ``window`` events, ``g`` the session gate. What ``models.hybrid.SessionCooc`` adds to
    its dense score; the worker publishes it with the clock."""

    weight: float
    window: int
    recency: float
    event_weights: dict[str, float]


class StreamClock(msgspec.Struct, frozen=True):
    """What the worker publishes with every applied batch (``RedisKeys.stream_clock``)."""

    event_ms: int  # the latest event time applied
    wall_ms: int  # when that was written (epoch ms, the worker's wall clock)
    half_life_s: float  # the model's session half-life (0: no session part)
    sparse: SparseQuery | None = None  # the model's sparse part (None: it has none)

    def now_ms(self, wall_now_ms: int) -> int:
        """The stream's "now": its event time plus the wall time since it was written
        (never behind the event time, even if wall clocks disagree).

        >>> StreamClock(1_000, 50_000, 60.0).now_ms(52_500)
        3500
        """
        return self.event_ms + max(0, wall_now_ms - self.wall_ms)


def stream_clock(model: Recommender, wall_ms: int | None = None) -> StreamClock:
    """The clock the worker (and ``scripts.publish``) writes for ``model`` now: its
    latest event time, its session half-life and its sparse part (if any)."""
    params = model.sparse_query_params()
    return StreamClock(model.clock_ms(), int(time.time() * 1000) if wall_ms is None
                       else wall_ms, float(model.session_half_life_s),
                       None if params is None else SparseQuery(**params))


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
    fresh, long_term = as_floats(doc.vector), as_floats(doc.long_vector)
    if not long_term or clock is None:
        return fresh
    return query_at(long_term, fresh, doc.last_event_ms,
                    clock.now_ms(wall_now_ms), clock.half_life_s)


def served_sparse(doc: UserDoc, clock: StreamClock | None,
                  lists: Mapping[str, Sequence[tuple[str, float]] | None],
                  wall_now_ms: int) -> dict[str, float]:
    """The sparse part served with :func:`served_query` for ``doc`` now (``{}`` when the
    clock's model has none): :func:`sparse_query` over ``lists`` (the stored lists of
    :func:`sparse_sources`), gated like the dense part. The API and
    ``scripts.eval_pipeline`` both call it.

    >>> doc = UserDoc("u", [], "", recent=[("a", "click")], last_event_ms=0)
    >>> sq = SparseQuery(1.0, 10, 0.5, {"click": 1.0})
    >>> served_sparse(doc, StreamClock(1_800_000, 0, 1800.0, sq), {"a": [("x", 1.0)]}, 0)
    {'x': 0.5}
    """
    if clock is None or clock.sparse is None:
        return {}
    gate = session_gate(clock.now_ms(wall_now_ms) - doc.last_event_ms, clock.half_life_s)
    return sparse_query(doc.recent, lists, clock.sparse, gate)


def sparse_sources(recent: Sequence[RecentEvent], sparse: SparseQuery) -> list[str]:
    """The items whose co-occurrence lists :func:`sparse_query` reads: those of the last
    ``window`` events, once each.

    >>> sparse_sources([("a", "click"), ("b", "view"), ("a", "click")],
    ...                SparseQuery(1.0, 2, 0.9, {}))
    ['a', 'b']
    """
    return list(dict.fromkeys(item for item, _ in reversed(recent[-sparse.window:])))


def sparse_query(recent: Sequence[RecentEvent],
                 lists: Mapping[str, Sequence[tuple[str, float]] | None],
                 sparse: SparseQuery, gate: float) -> dict[str, float]:
    """``{item: weight · gate · Σ_age recency^age · w(event) · cos(h, item)}`` over the
    last ``window`` events ``h`` of ``recent`` (newest last; age 0 is the newest), from
    ``lists[h]`` = ``h``'s stored ``(partner, cosine)`` pairs. It is the model's own score
    (``models.cooc.cooc_scores``) when the lists hold every partner the model keeps
    (``RECSYS_WORKER_COOC_SERVED`` ≥ ``cooc_neighbours``);
    ``tests/test_models_session.py`` checks that against the model.

    >>> sparse_query([("a", "click"), ("b", "click")], {"a": [("x", 0.5)], "b": [("x", 1.0)]},
    ...              SparseQuery(2.0, 10, 0.5, {"click": 1.0}), 1.0)
    {'x': 2.5}
    """
    if sparse.weight == 0.0 or gate == 0.0:
        return {}
    total: dict[str, float] = {}
    for age, (item, event) in enumerate(reversed(recent[-sparse.window:])):
        partners = lists.get(item)
        w = sparse.event_weights.get(event, 0.0)
        if not partners or w == 0.0:
            continue
        base = sparse.recency ** age * w
        for j, cos in partners:
            total[j] = total.get(j, 0.0) + base * cos
    scale = sparse.weight * gate
    return {j: scale * v for j, v in total.items() if v > 0.0}
