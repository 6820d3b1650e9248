"""Bounded recent history per user, and the full set of items each user has seen.

The two-tower user tower reads the recent history; every model uses the seen sets to
exclude already-consumed items from recommendations. The ring buffer is one int32
array, so a million users cost ``4 × size`` MB and an append is vectorised per batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from models import kernels


@dataclass(frozen=True)
class HistoryContext:
    """What each event's user had done before it: ``(n, size)`` item rows (``-1``:
    empty slot), their event weights and ages (0 = the event just before).

    Training a session-aware query offline needs it: when epochs visit a log in random
    order, the live ring holds other events than the ones that preceded each event.
    """

    rows: np.ndarray  # int32
    weights: np.ndarray  # float32
    ages: np.ndarray  # int64

    def take(self, idx: np.ndarray | slice) -> HistoryContext:
        return HistoryContext(self.rows[idx], self.weights[idx], self.ages[idx])


class RecentHistory:
    """Last ``size`` item rows per user, in a growable ``(users, size)`` ring buffer.

    >>> h = RecentHistory(size=2)
    >>> h.append(np.array([0, 0, 0]), np.array([5, 6, 7]))
    >>> h.of(0).tolist()
    [6, 7]
    """

    def __init__(self, size: int, capacity: int = 1024, growth: float = 1.5) -> None:
        self.size = size
        self.growth = growth
        self.buf = np.full((max(1, capacity), size), -1, dtype=np.int32)
        #: event weight (by type: a purchase counts more than a view) of each slot
        self.wbuf = np.ones((max(1, capacity), size), dtype=np.float32)
        self.count = np.zeros(max(1, capacity), dtype=np.int64)
        self.n_rows = 0

    def resize(self, n_rows: int) -> None:
        """Make rows for users ``0..n_rows-1`` exist (amortised growth)."""
        if n_rows <= self.n_rows:
            return
        cap = self.buf.shape[0]
        if n_rows > cap:
            new_cap = max(n_rows, int(cap * self.growth) + 1)
            buf = np.full((new_cap, self.size), -1, dtype=np.int32)
            buf[: self.n_rows] = self.buf[: self.n_rows]
            wbuf = np.ones((new_cap, self.size), dtype=np.float32)
            wbuf[: self.n_rows] = self.wbuf[: self.n_rows]
            count = np.zeros(new_cap, dtype=np.int64)
            count[: self.n_rows] = self.count[: self.n_rows]
            self.buf, self.wbuf, self.count = buf, wbuf, count
        self.n_rows = n_rows

    def append(self, users: np.ndarray, items: np.ndarray,
               weights: np.ndarray | None = None) -> None:
        """Record events in order; several events of one user in a batch keep their order.

        ``weights`` are the events' type weights (1 if ``None``): session-aware queries
        weight a recent purchase above a recent view.
        """
        if len(users) == 0 or self.size == 0:
            return
        w = (np.ones(len(users), dtype=np.float32) if weights is None
             else np.asarray(weights, dtype=np.float32))
        kernels.ring_append_weighted(self.buf, self.wbuf, self.count,
                                     np.asarray(users, dtype=np.int64),
                                     np.asarray(items, dtype=np.int32), w)

    def of(self, user: int) -> np.ndarray:
        """Item rows of ``user``, oldest first."""
        n = int(min(self.count[user], self.size))
        start = int(self.count[user]) % self.size if self.count[user] > self.size else 0
        row = self.buf[user]
        return np.concatenate([row[start:], row[:start]]) if n == self.size else row[:n].copy()

    def matrix(self, users: np.ndarray) -> np.ndarray:
        """``(len(users), size)`` item rows, ``-1`` where a user has fewer events."""
        return self.buf[users]

    def contexts(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray
                 ) -> HistoryContext:
        """The context of every event of a time-ordered log, as this ring (from empty)
        would hold it just before the event (does not touch this ring)."""
        n_users = int(users.max()) + 1 if len(users) else 0
        rows, w, ages = kernels.ring_contexts(self.size, n_users,
                                              np.asarray(users, dtype=np.int64),
                                              np.asarray(items, dtype=np.int32),
                                              np.asarray(weights, dtype=np.float32))
        return HistoryContext(rows, w, ages)

    def context(self, users: np.ndarray) -> HistoryContext:
        """The live context of ``users`` (what :meth:`contexts` gives during a replay)."""
        return HistoryContext(self.buf[users], self.wbuf[users], self.ages(users))

    def weights(self, users: np.ndarray) -> np.ndarray:
        """Event weights aligned with :meth:`matrix` (meaningless where it is ``-1``)."""
        return self.wbuf[users]

    def ages(self, users: np.ndarray) -> np.ndarray:
        """``(len(users), size)`` age of each slot of :meth:`matrix`: 0 is the newest
        event, 1 the one before, ... (meaningless where the slot is ``-1``)."""
        count = self.count[users].reshape(-1, 1)
        return (count - 1 - np.arange(self.size)) % max(self.size, 1)

    def ordered(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Item rows and weights of ``users``, oldest first, ``-1`` padding at the end."""
        if self.size == 0:
            return (np.full((len(users), 0), -1, np.int32),
                    np.ones((len(users), 0), np.float32))
        count = self.count[users].reshape(-1, 1)
        n = np.minimum(count, self.size)
        # slot of the j-th oldest event: (count - n + j) mod size
        j = np.arange(self.size)
        slots = (count - n + j) % self.size
        rows = np.take_along_axis(self.buf[users], slots, 1)
        w = np.take_along_axis(self.wbuf[users], slots, 1)
        rows = np.where(j < n, rows, -1)
        return rows, w

    def clear(self) -> None:
        self.buf[: self.n_rows] = -1
        self.wbuf[: self.n_rows] = 1.0
        self.count[: self.n_rows] = 0


class SeenItems:
    """Every item row each user has interacted with (for ``exclude_seen``)."""

    def __init__(self) -> None:
        self.sets: defaultdict[int, set[int]] = defaultdict(set)

    def add(self, users: np.ndarray, items: np.ndarray) -> None:
        sets = self.sets  # one C-level lookup per event (a miss creates the set)
        for u, i in zip(users.tolist(), items.tolist(), strict=True):
            sets[u].add(i)

    def of(self, user: int) -> set[int]:
        return self.sets.get(user, set())

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(user rows, item rows) pairs, for saving without pickle."""
        users = np.fromiter((u for u, s in self.sets.items() for _ in s), dtype=np.int64)
        items = np.fromiter((i for s in self.sets.values() for i in s), dtype=np.int64)
        return users, items

    @classmethod
    def from_arrays(cls, users: np.ndarray, items: np.ndarray) -> SeenItems:
        seen = cls()
        seen.add(users, items)
        return seen
