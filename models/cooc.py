"""Item-to-item co-occurrence kept by the stream: incremental, decayed, bounded.

Why: on MovieLens the strongest signal of what a user does next is what they did just
before (users rate in sittings), and a plain count of "item ``j`` followed item ``h``
in someone's recent history" reaches a prequential recall@10 the embedding models did
not (issue 11). It needs no gradient, so a click changes the next list at once.

* **Incremental**: each event ``(u, i)`` adds ``w_event · recency^age`` to the pairs
  ``(h, i)`` and ``(i, h)`` for the user's ``window`` most recent items ``h`` (``age`` 0
  is the newest), and ``w_event`` to the item's own count.
* **Decayed in event time**: an event at time ``ts`` adds its amount times
  ``2^((ts − ref) / half_life)``; weights are stored relative to the reference time
  ``ref_ms`` and rescaled (all divided, ``ref`` moved) before the factor overflows, so
  old co-occurrences fade relative to new ones without touching every row per event.
  ``half_life_days=0`` means no decay.
* **Bounded**: each item keeps at most ``neighbours`` (``M``) partners in a fixed
  ``(items, M)`` array pair, maintained like the Space-Saving heavy-hitter sketch: a
  pair already present is incremented; a new pair takes a free slot, else replaces the
  lightest partner with ``lightest + amount`` (an over-estimate that keeps every
  frequent partner). Memory is ``12·M`` bytes per item: 1.2 GB at 1M items × M=100,
  or ``M=32`` for 384 MB.
* **Scoring** a user: ``s(j) = Σ_h recency^age · w_h · W[h, j] / √(c_h · c_j)``
  over the user's recent items ``h`` (cosine normalisation by the decayed counts).

Everything here is arrays; the loops are numba kernels (``models.kernels`` style).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numba
import numpy as np
import torch

from models.base import Recommender
from models.history import RecentHistory

_compiled = numba.njit(cache=True, nogil=True)

#: A weight factor above this is folded into the reference time (float32 headroom).
_RESCALE_AT = 2.0 ** 30
_DAY_MS = 86_400_000.0


@_compiled
def _add_pair(nbr: np.ndarray, wt: np.ndarray, dirty: np.ndarray, a: int, b: int,
              amount: float) -> None:
    """Add ``amount`` to partner ``b`` of item ``a`` (Space-Saving replacement); mark
    row ``a`` changed."""
    dirty[a] = True
    m = nbr.shape[1]
    free = -1
    lightest = 0
    for s in range(m):
        x = nbr[a, s]
        if x == b:
            wt[a, s] += amount
            return
        if x < 0:
            if free < 0:
                free = s
        elif wt[a, s] < wt[a, lightest] or nbr[a, lightest] < 0:
            lightest = s
    if free >= 0:
        nbr[a, free] = b
        wt[a, free] = amount
    elif amount >= wt[a, lightest]:
        nbr[a, lightest] = b
        wt[a, lightest] = amount


@_compiled
def cooc_update(nbr: np.ndarray, wt: np.ndarray, cnt: np.ndarray, dirty: np.ndarray,
                hist: np.ndarray, hist_count: np.ndarray, users: np.ndarray,
                items: np.ndarray, amounts: np.ndarray, window: int, recency: float) -> None:
    """Apply events in order. The context of event ``j`` is the user's earlier events
    in this batch (newest first), then the ring ``hist`` (not yet holding the batch).
    Rows whose partners changed are marked in ``dirty``."""
    size = hist.shape[1]
    if len(dirty) < len(cnt) or nbr.shape[0] < len(cnt) or wt.shape[0] < len(cnt):
        raise IndexError("cooc_update: shapes do not match")
    for j in range(len(users)):
        u, i, amt = users[j], items[j], amounts[j]
        if i < 0 or i >= len(cnt) or u < 0 or u >= len(hist_count):
            raise IndexError("cooc_update: row out of range")
        cnt[i] += amt
        dirty[i] = True
        age = 0
        for k in range(j - 1, -1, -1):  # earlier events of the same user in the batch
            if age >= window:
                break
            if users[k] == u:
                h = items[k]
                if h != i:
                    inc = amt * recency ** age
                    _add_pair(nbr, wt, dirty, h, i, inc)
                    _add_pair(nbr, wt, dirty, i, h, inc)
                age += 1
        c = hist_count[u]
        n = min(c, size)
        for back in range(n):
            if age >= window:
                break
            h = hist[u, (c - 1 - back) % size]
            if h >= 0 and h != i and h < len(cnt):
                inc = amt * recency ** age
                _add_pair(nbr, wt, dirty, h, i, inc)
                _add_pair(nbr, wt, dirty, i, h, inc)
            age += 1


@_compiled
def cooc_scores(nbr: np.ndarray, wt: np.ndarray, cnt: np.ndarray, hist: np.ndarray,
                hist_w: np.ndarray, n_items: int, window: int, recency: float
                ) -> np.ndarray:
    """``(len(hist), n_items)`` scores; ``hist`` rows are item rows oldest first
    (``-1`` pads at the end), ``hist_w`` their event weights."""
    out = np.zeros((hist.shape[0], n_items), dtype=np.float64)
    for r in range(hist.shape[0]):
        last = -1
        for s in range(hist.shape[1]):
            if hist[r, s] >= 0:
                last = s
        age = 0
        for s in range(last, -1, -1):
            if age >= window:
                break
            h = hist[r, s]
            if h < 0 or cnt[h] <= 0.0:
                age += 1
                continue
            base = recency ** age * hist_w[r, s] / math.sqrt(cnt[h])
            for m in range(nbr.shape[1]):
                j = nbr[h, m]
                if 0 <= j < n_items and cnt[j] > 0.0:
                    out[r, j] += base * wt[h, m] / math.sqrt(cnt[j])
            age += 1
    return out


class CoOccurrence:
    """Bounded, decayed item-to-item co-occurrence (see the module docstring).

    >>> from models.history import RecentHistory
    >>> c, h = CoOccurrence(neighbours=4), RecentHistory(size=5)
    >>> c.resize(3); h.resize(1)
    >>> c.update(np.array([0, 0]), np.array([0, 1]), np.ones(2, np.float32),
    ...          np.zeros(2, np.int64), h)
    >>> c.similar(0, 2)[0].tolist()
    [1]
    """

    def __init__(self, neighbours: int = 100, window: int = 10, recency: float = 0.95,
                 half_life_days: float = 0.0, capacity: int = 1024,
                 growth: float = 1.5) -> None:
        if neighbours < 1 or window < 1:
            raise ValueError(f"neighbours and window must be >= 1, got {neighbours}, "
                             f"{window}")
        if not 0.0 < recency <= 1.0:
            raise ValueError(f"recency must be in (0, 1], got {recency}")
        self.neighbours = neighbours
        self.window = window
        self.recency = recency
        self.half_life_days = half_life_days
        self.growth = growth
        self.n_items = 0
        self.nbr = np.full((max(1, capacity), neighbours), -1, dtype=np.int32)
        self.wt = np.zeros((max(1, capacity), neighbours), dtype=np.float32)
        self.cnt = np.zeros(max(1, capacity), dtype=np.float64)
        #: rows whose partners changed since :meth:`take_changed` (what to re-serve)
        self.dirty = np.zeros(max(1, capacity), dtype=np.bool_)
        self.ref_ms: int | None = None

    def resize(self, n_items: int) -> None:
        """Make rows for items ``0..n_items-1`` exist (amortised growth)."""
        if n_items <= self.n_items:
            return
        cap = len(self.cnt)
        if n_items > cap:
            new_cap = max(n_items, int(cap * self.growth) + 1)
            nbr = np.full((new_cap, self.neighbours), -1, dtype=np.int32)
            wt = np.zeros((new_cap, self.neighbours), dtype=np.float32)
            cnt = np.zeros(new_cap, dtype=np.float64)
            dirty = np.zeros(new_cap, dtype=np.bool_)
            nbr[: self.n_items] = self.nbr[: self.n_items]
            wt[: self.n_items] = self.wt[: self.n_items]
            cnt[: self.n_items] = self.cnt[: self.n_items]
            dirty[: self.n_items] = self.dirty[: self.n_items]
            self.nbr, self.wt, self.cnt, self.dirty = nbr, wt, cnt, dirty
        self.n_items = n_items

    def _time_factors(self, ts_ms: np.ndarray) -> np.ndarray:
        """``2^((ts − ref)/half_life)`` per event, rescaling stored weights first if
        the newest event would push the factor past :data:`_RESCALE_AT`."""
        if self.half_life_days <= 0 or len(ts_ms) == 0:
            return np.ones(len(ts_ms))
        half_life = self.half_life_days * _DAY_MS
        newest = int(ts_ms.max())
        if self.ref_ms is None:
            self.ref_ms = newest
        if (newest - self.ref_ms) / half_life > math.log2(_RESCALE_AT):
            shrink = 2.0 ** (-(newest - self.ref_ms) / half_life)
            n = self.n_items
            self.wt[:n] *= np.float32(shrink)
            self.cnt[:n] *= shrink
            self.ref_ms = newest
        return np.exp2((ts_ms.astype(np.float64) - self.ref_ms) / half_life)

    def update(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray,
               ts_ms: np.ndarray, history: RecentHistory) -> None:
        """Count a micro-batch of events (user rows, item rows, event weights, times)
        against ``history``, which must not hold these events yet."""
        if len(users) == 0:
            return
        amounts = (weights.astype(np.float64) * self._time_factors(ts_ms))
        cooc_update(self.nbr, self.wt, self.cnt, self.dirty, history.buf, history.count,
                    np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64),
                    amounts, self.window, self.recency)

    def scores(self, hist: np.ndarray, hist_w: np.ndarray) -> np.ndarray:
        """``(n, n_items)`` float64 co-occurrence scores of ``n`` recent histories."""
        return cooc_scores(self.nbr, self.wt, self.cnt, np.ascontiguousarray(hist),
                           np.ascontiguousarray(hist_w, dtype=np.float32), self.n_items,
                           self.window, self.recency)

    def user_scores(self, history: RecentHistory, users: np.ndarray) -> np.ndarray:
        """``(n, n_items)`` scores of user rows from their recent ``history``, rounded
        to float32 once (so exported float32 values rank exactly like them)."""
        rows, w = history.ordered(np.asarray(users, dtype=np.int64))
        return _f32(self.scores(rows, w))

    def pair_scores(self, history: RecentHistory, users: np.ndarray, items: np.ndarray
                    ) -> np.ndarray:
        """:meth:`user_scores` of ``(users[j], items[j])`` pairs, in bounded blocks."""
        uniq, inverse = np.unique(users, return_inverse=True)
        out = np.empty(len(users))
        for start in range(0, len(uniq), 256):  # (256, n_items) at a time
            block = self.user_scores(history, uniq[start: start + 256])
            sel = (inverse >= start) & (inverse < start + 256)
            out[sel] = block[inverse[sel] - start, items[sel]]
        return out

    def recount(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray,
                ts_ms: np.ndarray, history_size: int) -> None:
        """Forget every count and count a time-ordered log again (after offline epochs
        that visited it in random order)."""
        self.nbr[:] = -1
        self.wt[:] = 0.0
        self.cnt[:] = 0.0
        self.ref_ms = None
        ring = RecentHistory(history_size)
        ring.resize(int(users.max()) + 1 if len(users) else 0)
        for start in range(0, len(users), 256):
            part = slice(start, start + 256)
            self.update(users[part], items[part], weights[part], ts_ms[part], ring)
            ring.append(users[part], items[part], weights[part])

    def similar(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` partners of item row ``item`` by cosine: ``(rows, scores)``.

        What ``GET /v1/items/{id}/similar?source=cooc`` serves.
        """
        rows, sims = self.similar_many(np.array([item]), k)
        ok = rows[0] >= 0
        return rows[0][ok], sims[0][ok]

    def similar_many(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`similar` of many item rows at once: ``(len(items), k)`` partner rows
        (``-1`` pads) and cosines (``-inf`` pads), best first."""
        items = np.asarray(items, dtype=np.int64)
        nbr = self.nbr[items].astype(np.int64)
        ok = nbr >= 0
        cnt_j = self.cnt[np.maximum(nbr, 0)]
        denom = np.sqrt(self.cnt[items][:, None] * cnt_j).clip(min=1e-30)
        sim = np.where(ok, self.wt[items].astype(np.float64) / denom, -np.inf)
        order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        rows = np.take_along_axis(nbr, order, 1)
        sims = np.take_along_axis(sim, order, 1)
        return np.where(np.isfinite(sims), rows, -1), sims

    def take_changed(self, limit: int | None = None) -> np.ndarray:
        """Rows whose partners changed since the last call (then forgotten); at most
        ``limit`` of them, the others stay marked for the next call."""
        rows = np.flatnonzero(self.dirty[: self.n_items])[:limit]
        self.dirty[rows] = False
        return rows

    # --- persistence (numpy arrays, no pickle) --------------------------------------
    def state_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        n = self.n_items
        return {f"{prefix}.nbr": self.nbr[:n].copy(), f"{prefix}.wt": self.wt[:n].copy(),
                f"{prefix}.cnt": self.cnt[:n].copy(),
                f"{prefix}.ref_ms": np.array([-1 if self.ref_ms is None else self.ref_ms],
                                             dtype=np.int64)}

    def load_state_arrays(self, prefix: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore the counts; every restored row counts as changed (to be re-served)."""
        nbr = arrays[f"{prefix}.nbr"]
        if nbr.ndim != 2 or nbr.shape[1] != self.neighbours:
            raise ValueError(f"{prefix}: saved shape {nbr.shape} does not fit "
                             f"{self.neighbours} neighbours")
        n = len(nbr)
        self.resize(n)
        self.nbr[:n] = nbr
        self.wt[:n] = arrays[f"{prefix}.wt"]
        self.cnt[:n] = arrays[f"{prefix}.cnt"]
        ref = int(arrays[f"{prefix}.ref_ms"][0])
        self.ref_ms = None if ref < 0 else ref
        self.dirty[:n] = self.cnt[:n] > 0


class WithCooc(Recommender):
    """What every model holding a :class:`CoOccurrence` as ``self.cooc`` shares: the
    similar-items lookup and its part of the checkpoint."""

    cooc: CoOccurrence

    def similar_items(self, item: str, k: int) -> tuple[list[str], np.ndarray]:
        """Top-``k`` co-occurring items of ``item`` by cosine (``[]`` if unknown); what
        ``GET /v1/items/{id}/similar?source=cooc`` serves."""
        row = int(self.item_ids.lookup([item])[0])
        if row < 0:
            return [], np.zeros(0)
        rows, sims = self.cooc.similar(row, k)
        return self.item_ids.ids_of(rows.tolist()), sims

    def changed_similar(self, k: int, limit: int | None = None
                        ) -> dict[str, tuple[list[str], list[float]]]:
        """The top-``k`` co-occurring items of the items whose partners changed since
        the last call, at most ``limit`` of them (the rest wait for the next call, so
        one call holds the model for a bounded time), as ``(partner ids, cosines)``
        best first (cosines rounded to 6 digits, as stored): what the worker re-serves
        (``RedisKeys.cooc``). Built with array gathers, not per-pair tuples: with many
        users clicking every row changes between two exports (1,682 × 100 pairs in
        Python took ~6% of the worker)."""
        rows = self.cooc.take_changed(limit)
        out: dict[str, tuple[list[str], list[float]]] = {}
        ids = self.item_ids.ids
        names = np.asarray(ids, dtype=object)
        for start in range(0, len(rows), 4096):  # bounded (4096, neighbours) blocks
            part = rows[start:start + 4096]
            nbr, sims = self.cooc.similar_many(part, k)
            counts = (nbr >= 0).sum(1).tolist()  # valid partners come first
            partners = names[np.maximum(nbr, 0)]
            cosines = np.round(np.where(nbr >= 0, sims, 0.0), 6)
            for n, (r, m) in enumerate(zip(part.tolist(), counts, strict=True)):
                out[ids[r]] = (partners[n, :m].tolist(), cosines[n, :m].tolist())
        return out

    def mark_changed(self, items: list[str]) -> None:
        """Have :meth:`changed_similar` list these items again (a write that failed)."""
        rows = self.item_ids.lookup(items)
        self.cooc.dirty[rows[rows >= 0]] = True

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {**super().state_arrays(), **self.cooc.state_arrays("cooc")}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        super().load_state_arrays(arrays)
        if "cooc.nbr" in arrays:  # a checkpoint written before the model kept them: none
            self.cooc.load_state_arrays("cooc", arrays)


class Cooc(WithCooc):
    """Co-occurrence of a user's recent items as a recommender of its own.

    ``score(u, j)`` is the :class:`CoOccurrence` score of ``u``'s recent history plus
    ``popularity_weight`` × ``j``'s decayed count share (breaks the ties among items no
    recent item co-occurred with, and serves users whose items have no partners yet).
    No gradient: ``learn_many`` counts. Defaults chosen on the prequential validation
    slice (``python -m scripts.tune --record session``): a window of 20 recent items
    (0.170 vs 0.1605 at 10), no time decay, 100 neighbours. Retrieval form: the query
    has one coordinate per item (its score), item vectors are one-hot, so ``dim`` is
    the catalogue size and inner products rank exactly like ``score``; that form is for
    the contract and small catalogues. At scale, its retrieval is :meth:`similar_items`
    of the recent items.
    """

    kind = "cooc"
    learns_in_order = True

    def __init__(self, neighbours: int = 100, window: int = 20, recency: float = 0.95,
                 half_life_days: float = 0.0, popularity_weight: float = 1e-3,
                 event_weights: Mapping[str, float] | None = None,
                 history_size: int = 20, seed: int = 0) -> None:
        if window > history_size:
            raise ValueError(f"window {window} exceeds history_size {history_size}")
        super().__init__(event_weights=event_weights, history_size=history_size, seed=seed)
        self.neighbours = neighbours
        self.window = window
        self.recency = recency
        self.half_life_days = half_life_days
        self.popularity_weight = popularity_weight
        self.cooc = CoOccurrence(neighbours, window, recency, half_life_days)
        self.dim = 0

    def _resize_tables(self, n_users: int, n_items: int) -> None:
        self.cooc.resize(n_items)
        self.dim = n_items

    def _observe_sequence(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray,
                          ts_ms: np.ndarray) -> None:
        self.cooc.update(users, items, weights, ts_ms, self.history)

    def _learn(self, users: np.ndarray, items: np.ndarray, weights: torch.Tensor) -> float:
        return 0.0  # counting happens in _observe_sequence (also for observe())

    def _popularity(self, items: np.ndarray | None = None) -> np.ndarray:
        cnt = self.cooc.cnt[: len(self.item_ids)]
        share = cnt / max(float(cnt.max(initial=0.0)), 1e-30)
        return share if items is None else share[items]

    def _inner_all(self, users: np.ndarray) -> torch.Tensor:
        s = self.cooc.user_scores(self.history, users)
        # the popularity share, rounded to float32 like the rest of the query
        pop = (self.popularity_weight * self._popularity()).astype(np.float32)
        return torch.from_numpy(_f32(s + pop))

    def _inner_pairs(self, users: np.ndarray, items: np.ndarray) -> torch.Tensor:
        s = self.cooc.pair_scores(self.history, users, items)
        pop = (self.popularity_weight * self._popularity(items)).astype(np.float32)
        return torch.from_numpy(_f32(s + pop))

    def _query(self, users: np.ndarray) -> torch.Tensor:
        return self._inner_all(users)

    def _item_matrix(self, items: np.ndarray | None = None) -> torch.Tensor:
        n = len(self.item_ids)
        rows = np.arange(n) if items is None else np.asarray(items, dtype=np.int64)
        out = torch.zeros(len(rows), n, dtype=torch.float64)
        out[torch.arange(len(rows)), torch.from_numpy(rows)] = 1.0
        return out



def _f32(values: np.ndarray) -> np.ndarray:
    """Float64 values rounded to float32 once: the exported float32 vectors then hold
    exactly the values ``score`` ranks by."""
    return values.astype(np.float32).astype(np.float64)
