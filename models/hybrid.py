"""The session-aware two-tower plus co-occurrence of the recent items, in one score.

Why both: the dense query generalises (similar items, cold items through attributes),
co-occurrence memorises exactly which titles follow which (issue 11: each alone is
about 0.19–0.20 prequential recall@10 on MovieLens). The score is

    σ(q(u) · p(i) + cooc_weight · cooc(u, i) + b)

where ``cooc(u, i)`` is :class:`models.cooc.CoOccurrence`'s score of the user's recent
history. Retrieval stays exact as a dense + sparse query: ``user_vectors`` is ``q(u)``
(for the ANN index over ``item_vectors``) and ``user_sparse_vectors`` lists the items
with a co-occurrence score and ``cooc_weight · cooc(u, i)``; the inner product of the
two with an item (dense dot product + its sparse value) is exactly what ``score`` ranks
by. Both parts follow every applied event at once (history and counts), before any
gradient step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models.cooc import CoOccurrence, WithCooc
from models.events import EventBatch
from models.two_tower import SessionTwoTower


class SessionCooc(WithCooc, SessionTwoTower):
    """:class:`SessionTwoTower` + ``cooc_weight`` × co-occurrence (see the module).

    ``cooc_neighbours``, ``cooc_window``, ``cooc_recency``, ``cooc_half_life_days`` are
    :class:`CoOccurrence`'s ``neighbours``, ``window``, ``recency``, ``half_life_days``.
    Offline epochs (random order, in context) do not count co-occurrences;
    ``reset_history`` recounts them once over the time-ordered log.
    """

    kind = "hybrid"

    def __init__(self, cooc_weight: float = 3.0, cooc_neighbours: int = 100,
                 cooc_window: int = 10, cooc_recency: float = 0.95,
                 cooc_half_life_days: float = 0.0, **params: Any) -> None:
        """``params``: any other :class:`SessionTwoTower` hyperparameter."""
        super().__init__(**params)
        if cooc_window > self.history_size:
            raise ValueError(f"cooc_window {cooc_window} exceeds history_size "
                             f"{self.history_size}")
        self.cooc_weight = cooc_weight
        self.cooc_neighbours = cooc_neighbours
        self.cooc_window = cooc_window
        self.cooc_recency = cooc_recency
        self.cooc_half_life_days = cooc_half_life_days
        self.cooc = CoOccurrence(cooc_neighbours, cooc_window, cooc_recency,
                                 cooc_half_life_days)

    def _resize_tables(self, n_users: int, n_items: int) -> None:
        super()._resize_tables(n_users, n_items)
        self.cooc.resize(n_items)

    def _observe_sequence(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray,
                          ts_ms: np.ndarray) -> None:
        self.cooc.update(users, items, weights, ts_ms, self.history)

    def reset_history(self, batch: EventBatch) -> None:
        super().reset_history(batch)
        self.cooc.recount(self.user_ids.lookup(batch.users), self.item_ids.lookup(batch.items),
                          self.event_weights_of(batch), batch.ts_ms, self.history_size)

    def _inner_all(self, users: np.ndarray) -> torch.Tensor:
        dense = super()._inner_all(users)
        if self.cooc_weight == 0.0:
            return dense
        return dense + torch.from_numpy(self._sparse(self.cooc.user_scores(self.history,
                                                                           users), users))

    def _inner_pairs(self, users: np.ndarray, items: np.ndarray) -> torch.Tensor:
        dense = super()._inner_pairs(users, items)
        if self.cooc_weight == 0.0:
            return dense
        return dense + torch.from_numpy(
            self._sparse(self.cooc.pair_scores(self.history, users, items)[:, None],
                         users)[:, 0])

    def _sparse(self, scores: np.ndarray, users: np.ndarray) -> np.ndarray:
        """``cooc_weight`` × session gate × scores, rounded to float32 as exported (the
        co-occurrence of the recent items is session evidence: it fades with the
        session, like the history part of the dense query)."""
        weight = self.cooc_weight * self._live_gate(users)
        return (weight[:, None] * scores).astype(np.float32).astype(np.float64)

    def user_sparse_vectors(self, users: Sequence[str]) -> list[tuple[list[str], np.ndarray]]:
        rows = self._user_rows(users)
        out: list[tuple[list[str], np.ndarray]] = []
        for start in range(0, len(rows), 256):
            part = rows[start: start + 256]
            block = self._sparse(self.cooc.user_scores(self.history, part), part)
            for values in block:
                nz = np.flatnonzero(values)
                out.append((self.item_ids.ids_of(nz.tolist()), values[nz].astype(np.float32)))
        return out

