"""External string ids ↔ dense row numbers.

Ids are opaque strings on the wire; tables are indexed by rows. Rows are handed out in
order of first appearance and never reused, so a row number stays valid for the life of
a model (and across checkpoints, which store the id list in row order).

Why not a ``dict``: mapping a micro-batch is the hot path of online learning, and a
Python dict of a million ids costs about 0.8 µs per lookup here (its cache misses are
taken one at a time by the interpreter): 0.4 ms of a learning step for 2 × 256 ids.
:class:`IdMap` hashes a batch's code points in one compiled call and probes an
open-addressing table of fingerprints (``models.kernels``): about 20 µs for 256 ids.
pandas' ``Index.get_indexer`` measured slower than the dict on this workload.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from models import kernels

#: Keep the table at most half full: linear probing then needs ~1.5 probes per hit.
_MAX_LOAD = 0.5


class IdMap:
    """Grow-only mapping of string ids to rows ``0..n-1``.

    An id is recognised by a 128-bit fingerprint of its code points (two keyed
    multilinear hashes with random keys per process, see ``kernels.fingerprints``):
    two distinct ids share one with probability below 2⁻⁸⁰ for any pair, so the map
    compares fingerprints, not strings — as content-addressed stores compare digests.
    Ids are taken as numpy strings (``str`` of anything else; a trailing NUL would be
    dropped, which the stream validation rules out by accepting printable ids only).

    >>> m = IdMap()
    >>> m.add(["b", "a", "b"]).tolist()
    [0, 1, 0]
    >>> m.lookup(["a", "zz"]).tolist(), m.ids_of([1, 0])
    ([1, -1], ['a', 'b'])
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str] = []
        self._table = kernels.empty_table(32)  # slots of [row or -1, fingerprint]
        self._shift = 64 - 5  # slot = top log2(len(table)) bits of the fingerprint
        self._keys = np.zeros((0, 2), dtype=np.uint64)  # one pair per code point position
        self._rng = np.random.default_rng()
        self.add(list(ids))

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return bool(self.lookup([str(item_id)])[0] >= 0)

    def _fingerprints(self, ids: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids as a numpy str array, (n, 2) int64 fingerprints)``."""
        arr = np.ascontiguousarray(ids, dtype=str).reshape(-1)
        width = arr.dtype.itemsize // 4
        if width > len(self._keys):
            extra = self._rng.integers(0, 2**64, (width - len(self._keys), 2),
                                       dtype=np.uint64, endpoint=False)
            self._keys = np.concatenate([self._keys, extra | np.uint64(1)])
        codes = arr.view(np.uint32).reshape(len(arr), width)
        return arr, kernels.fingerprints(codes, self._keys[:width])

    def _reserve(self, n_rows: int) -> None:
        """Room for ``n_rows`` ids under the load limit (doubling the table)."""
        cap = len(self._table)
        while n_rows > _MAX_LOAD * cap:
            cap *= 2
        if cap != len(self._table):
            table = kernels.empty_table(cap)
            self._shift = 64 - (cap.bit_length() - 1)
            kernels.table_rehash(self._table, table, self._shift)
            self._table = table

    # --- public ----------------------------------------------------------------------
    def add(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (int64), registering unseen ids in order of appearance."""
        arr, fps = self._fingerprints(ids)
        rows = kernels.table_find(self._table, fps, self._shift)
        if (rows < 0).any():
            n = len(self._ids)
            self._reserve(n + int((rows < 0).sum()))
            firsts = kernels.table_add(self._table, fps, rows, n, self._shift)
            self._ids.extend(arr[firsts].tolist())
        return rows

    def lookup(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (int64); ``-1`` for ids never registered."""
        _, fps = self._fingerprints(ids)
        return kernels.table_find(self._table, fps, self._shift)

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
