"""What the embedding models (GMF, two-tower) share: sampled negatives and the loss.

Both score a pair with ``link(q · p)``; the gradient of the loss with respect to the
positive and negative logits is all the model-specific code needs to back-propagate by
hand. Gradients are written out explicitly (not autograd): with tiny micro-batches the
autograd graph costs more than the maths, and explicit row gradients let the tables
stay plain growable tensors updated sparsely, row by row (``models.kernels``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from models.base import Recommender
from models.sampler import NegativeSampler

LOSSES = ("bce", "bpr", "softmax")


def pair_loss_grads(pos: torch.Tensor, neg: torch.Tensor, weights: torch.Tensor,
                    loss: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Mean loss and d(loss)/d(logit) for positive logits ``(B,)`` and negatives ``(B, K)``.

    ``bce``: ``-w·[log σ(pos) + Σ log(1 − σ(neg))]`` (pointwise, GMF's sigmoid output is a
    click probability). ``bpr``: ``-w·Σ log σ(pos − neg)`` (pairwise, only the order
    matters). ``softmax``: sampled softmax ``-w·log(e^pos / (e^pos + Σ e^neg))`` — the
    positive competes with all ``K`` negatives at once, which approximates the full
    softmax over the catalogue and is what full-ranking metrics reward; a negative
    logit of ``-inf`` (an accidental hit masked out by the caller) simply drops out.
    Gradients are per event (summed, not averaged) so that each row's update does not
    depend on how many other events share its batch.
    """
    if loss == "softmax":
        probs = torch.softmax(torch.cat([pos.unsqueeze(1), neg], 1), 1)
        value = -weights * probs[:, 0].clamp(min=1e-30).log()
        probs.mul_(weights.unsqueeze(1))
        g_pos = probs[:, 0] - weights
        g_neg = probs[:, 1:]
    elif loss == "bce":
        g_pos = weights * (torch.sigmoid(pos) - 1.0)
        g_neg = weights.unsqueeze(1) * torch.sigmoid(neg)
        value = weights * (F.softplus(-pos) + F.softplus(neg).sum(1))
    elif loss == "bpr":
        diff = pos.unsqueeze(1) - neg
        if not torch.isfinite(neg).all():  # masked negatives contribute nothing
            diff = torch.where(torch.isfinite(neg), diff, torch.full_like(diff, 50.0))
        g_diff = -weights.unsqueeze(1) * torch.sigmoid(-diff)
        g_pos = g_diff.sum(1)
        g_neg = -g_diff
        value = weights * F.softplus(-diff).sum(1)
    else:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return float(value.mean()), g_pos, g_neg


class FactorModel(Recommender):
    """Base of models learnt by sampled-negative SGD with row-wise Adagrad."""

    def __init__(self, dim: int, lr: float, l2: float, negatives: int, sampler: str,
                 sampler_alpha: float, loss: str, accum_decay: float,
                 event_weights: Mapping[str, float] | None, history_size: int,
                 seed: int) -> None:
        super().__init__(event_weights=event_weights, history_size=history_size, seed=seed)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {negatives}")
        self.dim = dim
        self.lr = lr
        self.l2 = l2
        self.negatives = negatives
        self.sampler = sampler
        self.sampler_alpha = sampler_alpha
        self.loss = loss
        self.accum_decay = accum_decay
        self._sampler = NegativeSampler(sampler, sampler_alpha, seed=seed + 1)

    def _count(self, items: np.ndarray, weights: np.ndarray) -> None:
        self._sampler.observe(items)

    def _resize_tables(self, n_users: int, n_items: int) -> None:
        self._sampler.resize(n_items)

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {**super().state_arrays(), "sampler.counts": self._sampler.state()}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        super().load_state_arrays(arrays)
        self._sampler.load_state(arrays["sampler.counts"])
        self._sampler.resize(len(self.item_ids))
