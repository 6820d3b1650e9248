"""Negative samplers: which items a batch's positives are contrasted with.

Uniform sampling treats every item as an equally likely negative; sampling by
popularity^0.75 (word2vec's unigram trick) shows the model more of the popular items
it would otherwise over-rank. Counts grow with the stream; the popularity CDF is
rebuilt every ``max(refresh_every, n_items)`` events so sampling stays O(log items)
per draw and the rebuild O(1) amortised per event.

Between rebuilds the distribution is fixed, so popularity draws are made ahead in pools
of ``POOL`` (one binary search of sorted uniforms, then shuffled: about 4× cheaper per
draw than searching each micro-batch's few hundred draws separately). A rebuild
discards the rest of the pool, so every draw follows the current distribution.
"""

from __future__ import annotations

import numpy as np
import torch


class NegativeSampler:
    """Draws item rows in ``[0, n_items)``; ``kind`` is ``"uniform"`` or ``"popularity"``."""

    #: Draws made at once by the popularity sampler (larger requests are drawn directly).
    POOL = 65536

    def __init__(self, kind: str = "uniform", alpha: float = 0.75,
                 refresh_every: int = 10_000, seed: int = 0) -> None:
        if kind not in ("uniform", "popularity"):
            raise ValueError(f"sampler must be 'uniform' or 'popularity', got {kind!r}")
        self.kind = kind
        self.alpha = alpha
        self.refresh_every = refresh_every
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self._pool = torch.zeros(0, dtype=torch.int64)
        self._pool_pos = 0
        self.counts = np.zeros(1024, dtype=np.float64)
        self.n_items = 0
        self._cdf: np.ndarray | None = None
        self._log_q = torch.zeros(0)
        self._since_refresh = 0

    def resize(self, n_items: int) -> None:
        if n_items > len(self.counts):
            counts = np.zeros(max(n_items, int(len(self.counts) * 1.5)), dtype=np.float64)
            counts[: self.n_items] = self.counts[: self.n_items]
            self.counts = counts
        self.n_items = max(self.n_items, n_items)

    def observe(self, items: np.ndarray) -> None:
        """Count positive events (only the popularity sampler needs them)."""
        if self.kind == "popularity":
            np.add.at(self.counts, items, 1.0)
            self._since_refresh += len(items)

    def sample(self, n: int) -> torch.Tensor:
        """``n`` item rows (int64)."""
        if self.n_items == 0:
            raise ValueError("no items to sample negatives from")
        if self.kind == "uniform":
            return torch.randint(0, self.n_items, (n,), generator=self.gen)
        # a refresh costs O(items); doing it at most every max(refresh_every, items)
        # events keeps it O(1) amortised per event for any catalogue size
        if self._cdf is None or self._since_refresh >= max(self.refresh_every, self.n_items):
            w = (self.counts[: self.n_items] + 1.0) ** self.alpha
            cdf = np.cumsum(w)
            self._cdf = cdf / cdf[-1]
            self._log_q = torch.from_numpy(np.log(w / cdf[-1])).float()
            self._since_refresh = 0
            self._pool_pos = len(self._pool)  # drawn from the old distribution
        if n > self.POOL // 4:
            return self._draw(n)
        if self._pool_pos + n > len(self._pool):
            self._pool, self._pool_pos = self._draw(self.POOL), 0
        self._pool_pos += n
        return self._pool[self._pool_pos - n: self._pool_pos]

    def _draw(self, n: int) -> torch.Tensor:
        """``n`` independent draws from the current popularity CDF, in random order."""
        assert self._cdf is not None
        # sorted uniforms make the binary searches walk the CDF in order (cache-friendly)
        rows = np.searchsorted(self._cdf, np.sort(self.rng.random(n))).clip(max=len(self._cdf) - 1)
        return torch.from_numpy(self.rng.permutation(rows))

    def logit_offset(self, rows: torch.Tensor, loss: str) -> torch.Tensor:
        """What to add to the logits of sampled negatives ``rows`` (float32).

        For ``softmax`` this is the logQ correction ``-log(k·q(row))`` (``k`` =
        ``len(rows)``) that makes the sampled softmax an estimate of the full softmax
        over the catalogue; pairwise/pointwise losses take the logits as they are (0).
        """
        if loss != "softmax":
            return torch.zeros(len(rows))
        k = len(rows)
        if self.kind == "uniform":
            return torch.full((k,), float(np.log(self.n_items / k)))
        # index_select: t[rows] costs several times more per row on CPU
        return self._log_q.index_select(0, rows).neg_().sub_(float(np.log(k)))  # by sample()

    def state(self) -> np.ndarray:
        return self.counts[: self.n_items].copy()

    def load_state(self, counts: np.ndarray) -> None:
        self.counts = np.array(counts, dtype=np.float64)
        self.n_items = len(self.counts)
        self._cdf = None
