"""Most-popular baseline: score = (event-weighted) number of positive events on the item.

The floor every personalised model must beat, and the fallback the API serves to users
nobody has seen. Retrieval form: query ``[1]``, item vector ``[count]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from models.base import Recommender


class Popularity(Recommender):
    """Counts of positive events per item; serves any user, known or not."""

    kind = "popularity"
    serves_unknown_users = True

    def __init__(self, event_weights: Mapping[str, float] | None = None,
                 history_size: int = 20, seed: int = 0) -> None:
        super().__init__(event_weights=event_weights, history_size=history_size, seed=seed)
        self.dim = 1
        self.counts = np.zeros(0, dtype=np.float64)

    def _resize_tables(self, n_users: int, n_items: int) -> None:
        if n_items > len(self.counts):
            counts = np.zeros(max(n_items, int(len(self.counts) * 1.5)), dtype=np.float64)
            counts[: len(self.counts)] = self.counts
            self.counts = counts

    def _learn(self, users: np.ndarray, items: np.ndarray, weights: torch.Tensor) -> float:
        return 0.0  # counting happens in _count, also for observe()

    def _count(self, items: np.ndarray, weights: np.ndarray) -> None:
        np.add.at(self.counts, items, weights.astype(np.float64))

    def _query(self, users: np.ndarray) -> torch.Tensor:
        return torch.ones(len(users), 1, dtype=torch.float64)

    def _item_matrix(self, items: np.ndarray | None = None) -> torch.Tensor:
        counts = self.counts[: len(self.item_ids)] if items is None else self.counts[items]
        return torch.from_numpy(np.ascontiguousarray(counts)).unsqueeze(1)

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {**super().state_arrays(), "counts": self.counts[: len(self.item_ids)].copy()}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        super().load_state_arrays(arrays)
        self.counts[: len(arrays["counts"])] = arrays["counts"]
