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

from models.two_tower import SessionTwoTower


class SessionCooc(SessionTwoTower):
    """:class:`SessionTwoTower` + ``cooc_weight`` × co-occurrence (see the module).

    The co-occurrence itself is :class:`SessionTwoTower`'s (every session model keeps
    one, for similar items); this model also scores with it.
    """

    kind = "hybrid"

    def __init__(self, cooc_weight: float = 3.0, **params: Any) -> None:
        """``params``: any other :class:`SessionTwoTower` hyperparameter."""
        super().__init__(**params)
        if self.cooc_window > self.history_size:
            raise ValueError(f"cooc_window {self.cooc_window} exceeds history_size "
                             f"{self.history_size}")
        self.cooc_weight = cooc_weight

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

    def sparse_query_params(self) -> dict[str, Any] | None:
        return {"weight": self.cooc_weight, "window": self.cooc.window,
                "recency": self.cooc.recency, "event_weights": dict(self.event_weights)}

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

