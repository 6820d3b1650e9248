"""External string ids ↔ dense row numbers.

Ids are opaque strings on the wire; tables are indexed by rows. Rows are handed out in
order of first appearance and never reused, so a row number stays valid for the life of
a model (and across checkpoints, which store the id list in row order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class IdMap:
    """Grow-only mapping of string ids to rows ``0..n-1``.

    >>> m = IdMap()
    >>> m.add(["b", "a", "b"]).tolist()
    [0, 1, 0]
    >>> m.lookup(["a", "zz"]).tolist(), m.ids_of([1, 0])
    ([1, -1], ['a', 'b'])
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self.add(list(ids))

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def add(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (int64), registering unseen ids in order of appearance."""
        keys = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        rows = list(map(self._index.get, keys))  # C-level loop: the hot path of learning
        if None in rows:
            for j, r in enumerate(rows):
                if r is None:
                    key = str(keys[j])
                    r = self._index.get(key)
                    if r is None:
                        r = len(self._ids)
                        self._index[key] = r
                        self._ids.append(key)
                    rows[j] = r
        return np.asarray(rows, dtype=np.int64)

    def lookup(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (int64); ``-1`` for ids never registered."""
        keys = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        rows = list(map(self._index.get, keys))
        if None in rows:
            rows = [-1 if r is None else r for r in rows]
        return np.asarray(rows, dtype=np.int64)

    def ids_of(self, rows: Iterable[int]) -> list[str]:
        """External ids of ``rows``."""
        ids = self._ids
        return [ids[int(r)] for r in rows]

    @property
    def ids(self) -> list[str]:
        """All ids in row order (do not mutate)."""
        return self._ids

    def to_json(self) -> list[str]:
        return list(self._ids)

    @classmethod
    def from_json(cls, ids: list[str]) -> IdMap:
        m = cls(ids)
        if len(m) != len(ids):
            raise ValueError("duplicate ids in saved id map")
        return m
