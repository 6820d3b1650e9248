"""Embedding tables that grow for unseen ids, with row-wise optimiser state.

Streams keep introducing users and items, so tables are over-allocated and grown in
amortised steps (capacity × ``growth``): the trained rows and their optimiser state are
copied once per step, never per new id. Updates are sparse: a batch touches only its
own rows, so learning cost does not depend on table size.

The optimiser is row-wise Adagrad (one accumulator per row, as FBGEMM's rowwise
Adagrad): half the memory of per-coordinate state and one fused update per row. With
``decay < 1`` the accumulator is an exponential average (RMSprop-like), so the step size
never decays to zero — a fixed schedule that suits a never-ending stream.
"""

from __future__ import annotations

import torch

from models import kernels


class GrowableTable:
    """A ``(rows, dim)`` float32 parameter plus its per-row accumulator.

    Only ``weight[:n_rows]`` is meaningful; rows beyond are spare capacity.

    >>> t = GrowableTable(dim=4, init_std=0.1, capacity=2, seed=0)
    >>> t.resize(3); (t.n_rows, t.capacity >= 3)
    (3, True)
    """

    def __init__(self, dim: int, init_std: float, capacity: int = 1024,
                 growth: float = 1.5, seed: int = 0, init_value: float | None = None) -> None:
        if growth <= 1.0:
            raise ValueError(f"growth must be > 1, got {growth}")
        self.dim = dim
        self.init_std = init_std
        self.init_value = init_value
        self.growth = growth
        self.n_rows = 0
        self.weight = torch.zeros(max(1, capacity), dim)
        self.accum = torch.zeros(max(1, capacity))
        self._gen = torch.Generator().manual_seed(seed)
        self.grow_count = 0

    @property
    def capacity(self) -> int:
        return self.weight.shape[0]

    def resize(self, n_rows: int) -> None:
        """Make rows ``0..n_rows-1`` exist; new rows get their initial values.

        Capacity grows to ``max(n_rows, capacity × growth)`` when exceeded, so adding
        ids one at a time costs amortised O(dim) per id.
        """
        if n_rows <= self.n_rows:
            return
        if n_rows > self.capacity:
            new_cap = max(n_rows, int(self.capacity * self.growth) + 1)
            weight = torch.empty(new_cap, self.dim)
            weight[: self.n_rows] = self.weight[: self.n_rows]
            accum = torch.zeros(new_cap)
            accum[: self.n_rows] = self.accum[: self.n_rows]
            self.weight, self.accum = weight, accum
            self.grow_count += 1
        fresh = self.weight[self.n_rows: n_rows]
        if self.init_value is not None:
            fresh.fill_(self.init_value)
        else:
            fresh.normal_(0.0, self.init_std, generator=self._gen)
        self.accum[self.n_rows: n_rows] = 0.0
        self.n_rows = n_rows

    def rows(self) -> torch.Tensor:
        """The meaningful rows (a view, no copy)."""
        return self.weight[: self.n_rows]

    def step(self, rows: torch.Tensor, grads: torch.Tensor, lr: float,
             decay: float = 1.0, eps: float = 1e-8) -> None:
        """Row-wise Adagrad/RMSprop step on ``rows`` (may repeat; gradients are summed).

        ``grads[j]`` is the gradient contribution of occurrence ``j`` of ``rows[j]``.
        For each distinct row, ``accum += mean(g²)`` (after ``accum *= decay``) and
        ``weight -= lr · g / sqrt(accum + eps²)``; one compiled pass does it
        (``kernels.rowwise_adagrad``) instead of a dozen gather/scatter calls.
        """
        kernels.rowwise_adagrad(self.weight.numpy(), self.accum.numpy(),
                                rows.to(torch.int64).contiguous().numpy(),
                                grads.float().contiguous().numpy(),
                                lr, decay, eps)

    def bag_step(self, bags: torch.Tensor, bag_w: torch.Tensor, grads: torch.Tensor,
                 l2: torch.Tensor, lr: float, decay: float = 1.0, eps: float = 1e-8) -> None:
        """:meth:`step` on pooled rows with L2, in one compiled pass.

        ``bags`` ``(n, m)`` rows pooled by event ``i`` with weights ``bag_w`` (entries
        ``<= 0`` are not part of the pool); ``grads[i]`` is the gradient of event
        ``i``'s pooled vector, so occurrence ``(i, j)`` gets ``bag_w[i, j]·grads[i] +
        l2[i]·weight[bags[i, j]]`` (``kernels.bag_adagrad``). A plain row update with
        L2 is ``bags = rows.view(-1, 1)`` with unit weights.
        """
        kernels.bag_adagrad(self.weight.numpy(), self.accum.numpy(),
                            bags.contiguous().numpy(), bag_w.float().contiguous().numpy(),
                            grads.float().contiguous().numpy(),
                            l2.float().contiguous().numpy(), lr, decay, eps)

    def dense_step(self, g: torch.Tensor, lr: float, decay: float = 1.0,
                   eps: float = 1e-8) -> None:
        """Step on every row at once (small shared parameters such as GMF's ``w``)."""
        self.step(torch.arange(self.n_rows), g, lr, decay, eps)

    # --- persistence (plain tensors; no pickle) -----------------------------------
    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": self.weight[: self.n_rows].clone(),
                f"{prefix}.accum": self.accum[: self.n_rows].clone()}

    def load_state(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        weight, accum = tensors[f"{prefix}.weight"], tensors[f"{prefix}.accum"]
        if weight.ndim != 2 or weight.shape[1] != self.dim or accum.shape != weight.shape[:1]:
            raise ValueError(f"{prefix}: saved shape {tuple(weight.shape)} does not fit "
                             f"dim {self.dim}")
        n = weight.shape[0]
        cap = max(n, self.capacity)
        self.weight = torch.zeros(cap, self.dim)
        self.accum = torch.zeros(cap)
        self.weight[:n] = weight.float()
        self.accum[:n] = accum.float()
        self.n_rows = n
