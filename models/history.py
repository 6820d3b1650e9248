"""Bounded recent history per user, and the full set of items each user has seen.

The two-tower user tower reads the recent history; every model uses the seen sets to
exclude already-consumed items from recommendations. The ring buffer is one int32
array, so a million users cost ``4 × size`` MB and an append is vectorised per batch.

In the streaming worker the ring is not the owner of a user's history: the user
document's ``recent`` events are (:class:`common.stores.UserDoc`). Each ring row keeps
the ``version`` (the document's event count ``n_events``) it reflects, and the worker
reloads a row from the document whenever the two differ (after a restart from an older
checkpoint, a retried batch, a document written behind the checkpoint), so the model
never learns from a history the document does not hold.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from models import kernels
from models.events import UNKNOWN_TYPE


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
    #: ms from the user's previous event to this one (``inf``: none, or not known):
    #: session-aware queries weigh the history by how recent the session is
    gaps_ms: np.ndarray | None = None  # float64

    def take(self, idx: np.ndarray | slice) -> HistoryContext:
        gaps = None if self.gaps_ms is None else self.gaps_ms[idx]
        return HistoryContext(self.rows[idx], self.weights[idx], self.ages[idx], gaps)


#: ``last_ts`` of a user with no timed event yet.
NO_TS = np.iinfo(np.int64).min


def gaps_since(last_ts: np.ndarray, now_ms: np.ndarray | int) -> np.ndarray:
    """Milliseconds from each ``last_ts`` to ``now_ms`` (``inf`` where there is none;
    never negative: an event older than the last one is "now")."""
    gaps = np.maximum(np.asarray(now_ms, dtype=np.float64) - last_ts.astype(np.float64), 0.0)
    return np.where(last_ts == NO_TS, np.inf, gaps)


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
        #: event type code of each slot (:func:`models.events.type_codes`)
        self.tbuf = np.full((max(1, capacity), size), UNKNOWN_TYPE, dtype=np.int8)
        self.count = np.zeros(max(1, capacity), dtype=np.int64)
        #: event time (epoch ms) of each user's latest event, :data:`NO_TS` if none
        self.last_ts = np.full(max(1, capacity), NO_TS, dtype=np.int64)
        #: the stored history's event count each row reflects (-1: not tied to one);
        #: every appended event adds one to a tied row
        self.version = np.full(max(1, capacity), -1, dtype=np.int64)
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
            tbuf = np.full((new_cap, self.size), UNKNOWN_TYPE, dtype=np.int8)
            tbuf[: self.n_rows] = self.tbuf[: self.n_rows]
            count = np.zeros(new_cap, dtype=np.int64)
            count[: self.n_rows] = self.count[: self.n_rows]
            last_ts = np.full(new_cap, NO_TS, dtype=np.int64)
            last_ts[: self.n_rows] = self.last_ts[: self.n_rows]
            version = np.full(new_cap, -1, dtype=np.int64)
            version[: self.n_rows] = self.version[: self.n_rows]
            self.buf, self.wbuf, self.tbuf = buf, wbuf, tbuf
            self.count, self.last_ts, self.version = count, last_ts, version
        self.n_rows = n_rows

    def append(self, users: np.ndarray, items: np.ndarray,
               weights: np.ndarray | None = None, ts_ms: np.ndarray | None = None,
               types: np.ndarray | None = None) -> None:
        """Record events in order; several events of one user in a batch keep their order.

        ``weights`` are the events' type weights (1 if ``None``): session-aware queries
        weight a recent purchase above a recent view; ``types`` their type codes. ``ts_ms``
        (event times) move each user's :attr:`last_ts` forward (never back: a late
        event is not a new session). A row tied to a stored history (:attr:`version`)
        counts the events.
        """
        if len(users) == 0:
            return
        users = np.asarray(users, dtype=np.int64)
        tied = users[self.version[users] >= 0]
        if len(tied):
            np.add.at(self.version, tied, 1)
        if ts_ms is not None:
            np.maximum.at(self.last_ts, users, np.asarray(ts_ms, dtype=np.int64))
        if self.size == 0:
            return
        w = (np.ones(len(users), dtype=np.float32) if weights is None
             else np.asarray(weights, dtype=np.float32))
        t = (np.full(len(users), UNKNOWN_TYPE, dtype=np.int8) if types is None
             else np.asarray(types, dtype=np.int8))
        kernels.ring_append_weighted(self.buf, self.wbuf, self.tbuf, self.count, users,
                                     np.asarray(items, dtype=np.int32), w, t)

    def load(self, user: int, items: np.ndarray, weights: np.ndarray, types: np.ndarray,
             last_ts: int, version: int) -> None:
        """Replace ``user``'s row by a stored history (oldest first; the newest ``size``
        events are kept), its last event time and the ``version`` it reflects.

        >>> h = RecentHistory(size=2)
        >>> h.resize(1)
        >>> h.load(0, np.array([4, 5, 6]), np.ones(3), np.zeros(3), 9, version=3)
        >>> h.of(0).tolist(), int(h.version[0]), int(h.last_ts[0])
        ([5, 6], 3, 9)
        """
        n = min(len(items), self.size)
        self.buf[user] = -1
        self.wbuf[user] = 1.0
        self.tbuf[user] = UNKNOWN_TYPE
        if n:
            self.buf[user, :n] = np.asarray(items, dtype=np.int32)[-n:]
            self.wbuf[user, :n] = np.asarray(weights, dtype=np.float32)[-n:]
            self.tbuf[user, :n] = np.asarray(types, dtype=np.int8)[-n:]
        self.count[user] = n
        self.last_ts[user] = last_ts
        self.version[user] = version

    def of(self, user: int) -> np.ndarray:
        """Item rows of ``user``, oldest first."""
        return self._oldest_first(self.buf, user)

    def types_of(self, user: int) -> np.ndarray:
        """Event type codes of ``user``'s ring, aligned with :meth:`of`."""
        return self._oldest_first(self.tbuf, user)

    def _oldest_first(self, ring: np.ndarray, user: int) -> np.ndarray:
        n = int(min(self.count[user], self.size))
        start = int(self.count[user]) % self.size if self.count[user] > self.size else 0
        row = ring[user]
        return np.concatenate([row[start:], row[:start]]) if n == self.size else row[:n].copy()

    def matrix(self, users: np.ndarray) -> np.ndarray:
        """``(len(users), size)`` item rows, ``-1`` where a user has fewer events."""
        return self.buf[users]

    def contexts(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray,
                 ts_ms: np.ndarray | None = None) -> HistoryContext:
        """The context of every event of a time-ordered log, as this ring (from empty)
        would hold it just before the event (does not touch this ring); with ``ts_ms``,
        also the gap since the user's previous event in the log."""
        users = np.asarray(users, dtype=np.int64)
        n_users = int(users.max()) + 1 if len(users) else 0
        rows, w, ages = kernels.ring_contexts(self.size, n_users, users,
                                              np.asarray(items, dtype=np.int32),
                                              np.asarray(weights, dtype=np.float32))
        gaps = None
        if ts_ms is not None:
            ts = np.asarray(ts_ms, dtype=np.int64)
            order = np.argsort(users, kind="stable")  # time order kept within a user
            su, st = users[order], ts[order]
            prev = np.full(len(users), NO_TS, dtype=np.int64)
            same = np.flatnonzero(su[1:] == su[:-1]) + 1
            prev[order[same]] = st[same - 1]
            gaps = gaps_since(prev, ts)
        return HistoryContext(rows, w, ages, gaps)

    def context(self, users: np.ndarray, ts_ms: np.ndarray | int | None = None
                ) -> HistoryContext:
        """The live context of ``users`` (what :meth:`contexts` gives during a replay);
        with ``ts_ms`` (event or query time), the gap since each user's last event."""
        gaps = None if ts_ms is None else gaps_since(self.last_ts[users], ts_ms)
        rows, w, ages = kernels.ring_context(self.buf, self.wbuf, self.count,
                                             np.asarray(users, dtype=np.int64))
        return HistoryContext(rows, w, ages, gaps)

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
        self.tbuf[: self.n_rows] = UNKNOWN_TYPE
        self.count[: self.n_rows] = 0
        self.last_ts[: self.n_rows] = NO_TS
        self.version[: self.n_rows] = -1


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
