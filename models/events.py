"""The unit of learning: a micro-batch of positive events, stored as columns.

The streaming worker builds one :class:`EventBatch` per ``stream.take(n, within=s)``
and hands it to ``Recommender.learn_many``; the bootstrap and the evaluation build
them from :class:`datasets.types.Interactions` slices. Columns (not objects) keep the
per-event Python work out of the learning hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from common.events import EVENT_TYPES as WIRE_EVENT_TYPES
from datasets.types import Interactions

#: Event types the models understand, weakest signal first (the wire schema's).
EVENT_TYPES: tuple[str, ...] = WIRE_EVENT_TYPES

#: Default weight of one event of each type in the loss. A view is a weak hint of
#: interest, a purchase a strong one. MovieLens ratings count as plain positives
#: (weight 1, whatever the star value): the evaluation protocols treat every rating as
#: an interaction, and weighting by stars measured no better in validation.
DEFAULT_EVENT_WEIGHTS: Mapping[str, float] = {
    "view": 0.5,
    "click": 1.0,
    "add_to_cart": 2.0,
    "purchase": 4.0,
    "rating": 1.0,
}


#: Type code of an event type not in :data:`EVENT_TYPES` (kept in recent-history rings).
UNKNOWN_TYPE = -1


def type_codes(events: np.ndarray | list[str]) -> np.ndarray:
    """``int8`` index of each event type in :data:`EVENT_TYPES` (:data:`UNKNOWN_TYPE` if
    not one): how a recent-history ring keeps the types of its events.

    >>> type_codes(["click", "purchase", "nope"]).tolist()
    [1, 3, -1]
    """
    names = np.asarray(EVENT_TYPES)
    order = np.argsort(names)
    events = np.asarray(events, dtype=str)
    at = np.searchsorted(names[order], events).clip(max=len(names) - 1)
    codes = order[at].astype(np.int8)
    codes[names[codes] != events] = UNKNOWN_TYPE
    return codes


def type_names(codes: np.ndarray | list[int]) -> list[str]:
    """Inverse of :func:`type_codes` (``"click"`` for an unknown code: the default
    event of a producer)."""
    return [EVENT_TYPES[c] if 0 <= c < len(EVENT_TYPES) else "click" for c in codes]


@dataclass(frozen=True)
class EventBatch:
    """Positive events, row ``i`` is one event (``user`` did ``event`` on ``item``).

    ``values`` carries the optional event value (a rating's stars; 1.0 otherwise);
    ``ts_ms`` is epoch milliseconds.
    """

    users: np.ndarray  # str
    items: np.ndarray  # str
    events: np.ndarray  # str
    values: np.ndarray  # float32
    ts_ms: np.ndarray  # int64

    def __post_init__(self) -> None:
        n = len(self.users)
        for name in ("items", "events", "values", "ts_ms"):
            got = len(getattr(self, name))
            if got != n:
                raise ValueError(f"column {name!r} has {got} rows, users has {n}")

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def from_interactions(cls, inter: Interactions) -> EventBatch:
        """Columns of an interaction log; a log without events is all ``"rating"``.

        >>> from datasets.types import Interactions
        >>> log = Interactions(np.array(["u1"]), np.array(["i1"]),
        ...                    np.array([4.0], np.float32), np.array([5], np.int64))
        >>> EventBatch.from_interactions(log).events.tolist()
        ['rating']
        """
        return cls(
            users=np.asarray(inter.users).astype(str),
            items=np.asarray(inter.items).astype(str),
            events=np.asarray(inter.event_types()).astype(str),
            values=np.asarray(inter.ratings, dtype=np.float32),
            ts_ms=np.asarray(inter.ts_ms, dtype=np.int64),
        )

    @classmethod
    def of(cls, users: list[str], items: list[str], event: str = "click",
           ts_ms: int = 0) -> EventBatch:
        """A small batch of one event type (tests, examples, ad-hoc updates)."""
        n = len(users)
        return cls(np.array(users, dtype=str), np.array(items, dtype=str),
                   np.full(n, event), np.ones(n, np.float32), np.full(n, ts_ms, np.int64))

    def take(self, rows: np.ndarray | slice) -> EventBatch:
        """A subset of rows (index array, boolean mask or slice)."""
        return EventBatch(self.users[rows], self.items[rows], self.events[rows],
                          self.values[rows], self.ts_ms[rows])
