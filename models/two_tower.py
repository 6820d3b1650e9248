"""Two-tower model: dot product of a user tower and an item tower.

* User tower: ``U[user] + mean(H[item] for item in the user's recent history)`` — the
  history part moves a user's vector as soon as they click, before their own row has
  been trained much (fresh and new users).
* Item tower: ``E[item] + Σ_t w_t · C[hash(token_t)] + normalised(numeric) @ A`` —
  categorical attributes (``"genres=Comedy"``) are hashed into a fixed bucket table,
  numeric ones (``year``) are z-scored over the catalogue. An item that has attributes
  but no clicks yet still gets a vector close to items sharing its attributes.

Score ``σ(q · p + b)``; retrieval vectors are ``q`` and ``p`` (σ is increasing).
Gradients are explicit, like GMF (see ``models.factor``).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models import kernels
from models.cooc import CoOccurrence, WithCooc
from models.events import EventBatch
from models.factor import FactorModel, pair_loss_grads
from models.growable import GrowableTable
from models.history import HistoryContext, gaps_since


class TwoTower(FactorModel):
    """Two-tower retrieval model learnt from positive events with sampled negatives.

    ``n_buckets`` hashed categorical embeddings, at most ``max_tokens`` per item;
    ``numeric_attributes`` are z-scored; ``ignore_attributes`` are free text that
    hashing would turn into per-item noise. ``share_negatives``: one set of
    ``negatives`` items per micro-batch (see ``GMF``), so the item tower runs on
    ``n + k`` rows instead of ``n·(k + 1)`` — what makes 256 softmax negatives
    affordable. Defaults are GMF's (chosen the same way, on validation splits).
    """

    kind = "two_tower"

    def __init__(self, dim: int = 64, lr: float = 0.05, lr_dense: float = 0.005,
                 l2: float = 0.1, negatives: int = 256, sampler: str = "popularity",
                 sampler_alpha: float = 0.75, loss: str = "softmax", accum_decay: float = 1.0,
                 init_std: float = 0.1, growth: float = 1.25, share_negatives: bool = True,
                 n_buckets: int = 4096,
                 max_tokens: int = 16, numeric_attributes: Sequence[str] = ("year",),
                 ignore_attributes: Sequence[str] = ("title",),
                 event_weights: Mapping[str, float] | None = None,
                 history_size: int = 20, seed: int = 0, recency: float = 1.0,
                 history_weight: float = 1.0, session_half_life_s: float = 0.0,
                 content_dims: int = 0,
                 content_weight: float = 0.0, content_lift: float = 0.0,
                 session_dropout: float = 0.0) -> None:
        super().__init__(dim, lr, l2, negatives, sampler, sampler_alpha, loss, accum_decay,
                         event_weights, history_size, seed)
        if not 0.0 < recency <= 1.0:
            raise ValueError(f"recency must be in (0, 1], got {recency}")
        if session_half_life_s < 0:
            raise ValueError(f"session_half_life_s must be >= 0, got {session_half_life_s}")
        self.recency = recency
        self.history_weight = history_weight
        self.session_half_life_s = session_half_life_s
        if content_dims < 0 or (content_weight and not content_dims):
            raise ValueError(f"content_weight {content_weight} needs content_dims > 0, "
                             f"got {content_dims}")
        self.content_dims = content_dims
        self.content_weight = content_weight
        self.content_lift = content_lift
        if not 0.0 <= session_dropout < 1.0:
            raise ValueError(f"session_dropout must be in [0, 1), got {session_dropout}")
        self.session_dropout = session_dropout
        self._drop_rng = np.random.default_rng(seed + 7)
        self.lr_dense = lr_dense
        self.init_std = init_std
        self.growth = growth
        self.share_negatives = share_negatives
        self.n_buckets = n_buckets
        self.max_tokens = max_tokens
        self.numeric_attributes = list(numeric_attributes)
        self.ignore_attributes = list(ignore_attributes)
        self.users_t = GrowableTable(dim, init_std, growth=growth, seed=seed + 2)
        self.items_t = GrowableTable(dim, init_std, growth=growth, seed=seed + 3)
        self.hist_t = GrowableTable(dim, init_std, growth=growth, seed=seed + 4)
        self.cats_t = GrowableTable(dim, init_std, capacity=n_buckets, seed=seed + 5)
        self.cats_t.resize(n_buckets)
        n_num = max(1, len(self.numeric_attributes))
        self.num_t = GrowableTable(dim, init_std, capacity=n_num, seed=seed + 6)
        self.num_t.resize(n_num)
        self.b = GrowableTable(1, 0.0, capacity=1, init_value=0.0)
        self.b.resize(1)
        self.history.growth = growth
        # per-item attribute features (rows follow item rows)
        self.tok = torch.zeros(0, max_tokens, dtype=torch.int64)
        self.tokw = torch.zeros(0, max_tokens)
        self.num_raw = torch.zeros(0, n_num, dtype=torch.float64)
        self.num_has = torch.zeros(0, n_num, dtype=torch.bool)
        self.num_z = torch.zeros(0, n_num)  # see _numeric
        self._num_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self._width: int | None = None  # see _token_width
        self._decay: np.ndarray | None = None  # see _recency_table

    # --- tables ---------------------------------------------------------------------
    def _resize_tables(self, n_users: int, n_items: int) -> None:
        super()._resize_tables(n_users, n_items)
        self.users_t.resize(n_users)
        self.items_t.resize(n_items)
        self.hist_t.resize(n_items)
        if n_items > len(self.tok):
            cap = max(n_items, int(len(self.tok) * self.growth) + 1)
            self.tok = _grow(self.tok, cap)
            self.tokw = _grow(self.tokw, cap)
            self.num_raw = _grow(self.num_raw, cap)
            self.num_has = _grow(self.num_has, cap)
            self.num_z = _grow(self.num_z, cap)

    # --- attributes -----------------------------------------------------------------
    def _tokens(self, attributes: Mapping[str, object]) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        skip = set(self.ignore_attributes) | set(self.numeric_attributes)
        for key in sorted(attributes):
            if key in skip:
                continue
            value = attributes[key]
            if isinstance(value, list | tuple | set):
                values = [str(v) for v in value]
            elif isinstance(value, str | int | float | bool):
                values = [str(value)]
            else:
                continue
            for v in values:
                token = f"{key}={v}".encode()
                out.append((zlib.crc32(token) % (self.n_buckets - 1) + 1, 1.0 / len(values)))
        return out[: self.max_tokens]

    def _set_attributes(self, row: int, attributes: Mapping[str, object]) -> None:
        tokens = self._tokens(attributes)
        self.tok[row] = 0
        self.tokw[row] = 0.0
        if tokens:
            self.tok[row, : len(tokens)] = torch.tensor([t for t, _ in tokens])
            self.tokw[row, : len(tokens)] = torch.tensor([w for _, w in tokens])
        for j, key in enumerate(self.numeric_attributes):
            value = attributes.get(key)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            self.num_has[row, j] = ok
            self.num_raw[row, j] = float(value) if ok else 0.0  # type: ignore[arg-type]
        self._num_stats = None
        self._width = None

    def _numeric(self, rows: torch.Tensor | None) -> torch.Tensor:
        """z-scored numeric attributes (0 where missing), stats over the catalogue.

        Kept z-scored (float32) per item until an item's attributes change: a learning
        step then gathers them, where it took five float64 operations on its rows."""
        n = len(self.item_ids)
        if self._num_stats is None:
            has, raw = self.num_has[:n], self.num_raw[:n]
            cnt = has.sum(0).clamp(min=1)
            mean = (raw * has).sum(0) / cnt
            var = (((raw - mean) * has) ** 2).sum(0) / cnt
            self._num_stats = (mean, var.sqrt().clamp(min=1e-6))
            # rows past n stay 0: items registered later have no numeric attributes
            # until _set_attributes, which makes this run again
            self.num_z[:n] = (((raw - mean) / self._num_stats[1]) * has).float()
        return self.num_z[:n] if rows is None else self.num_z.index_select(0, rows)

    def _features(self, rows: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attribute tokens, their weights (the used slots, see :meth:`_token_width`)
        and the z-scored numeric attributes of item ``rows`` (``None``: all items).

        Gathered once per learning step: the item tower and its update both read them.
        ``index_select``, not ``t[rows]``: torch's advanced indexing costs ~7× more per
        row on CPU, and a step gathers ~500 rows from each of these tables."""
        n, width = len(self.item_ids), self._token_width()
        if rows is None:
            return self.tok[:n, :width], self.tokw[:n, :width], self._numeric(None)
        return (self.tok[:, :width].index_select(0, rows),
                self.tokw[:, :width].index_select(0, rows), self._numeric(rows))

    # --- towers ---------------------------------------------------------------------
    def _item_tower(self, rows: torch.Tensor | None,
                    features: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                    ) -> torch.Tensor:
        """``E[item] + Σ_t w_t C[token_t] + numeric @ A`` of item ``rows`` (``None``:
        all); ``features``: :meth:`_features` of ``rows`` when the caller has them."""
        tok, tokw, num = self._features(rows) if features is None else features
        if rows is None:
            # weighted sum of token embeddings in one fused kernel (no (n, width, dim) copy)
            cats = F.embedding_bag(tok, self.cats_t.weight, per_sample_weights=tokw,
                                   mode="sum")
            e = self.items_t.rows() + cats
        else:  # a learning step's rows: gather and pool in one pass
            e = torch.from_numpy(kernels.pooled_rows(
                self.items_t.weight.numpy(), rows.numpy(), self.cats_t.weight.numpy(),
                tok.numpy(), tokw.numpy()))
        return torch.addmm(e, num, self.num_t.weight[: self.num_t.n_rows])

    def _token_width(self) -> int:
        """Token slots any item uses (tokens fill slots from 0): the item tower gathers
        only these, not all ``max_tokens`` (MovieLens: 6 of 16)."""
        if self._width is None:
            used = (self.tokw[: len(self.item_ids)] > 0).sum(1)
            self._width = max(1, int(used.max())) if len(used) else 1
        return self._width

    def _session_weights(self, users: np.ndarray, exclude: torch.Tensor | None,
                         context: HistoryContext | None, gated: float | None = None,
                         dropout: float = 0.0
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """History item rows ``(n, size)``, their session weights ``w_event ·
        recency^age`` normalised to sum to 1, their plain event weights (0 on empty
        slots and on the excluded positive), and the session gate ``(n,)``.

        ``gated``: the session weights come multiplied by ``gated × gate`` instead,
        and by 0 for a ``dropout`` share of events (see :meth:`_user_tower`). One
        compiled pass (``kernels.session_weights``) instead of a dozen small torch ops
        and a float64 power per slot."""
        ctx = self.history.context(users) if context is None else context
        gate = np.ones(len(users), dtype=np.float32)
        if self.session_half_life_s > 0:
            gate = (self._live_gate(users) if ctx.gaps_ms is None
                    else self.session_gate(ctx.gaps_ms)).astype(np.float32)
        factor = np.ones(len(users), dtype=np.float32)
        if gated is not None:
            factor = gate * np.float32(gated)
        if dropout:
            keep = self._drop_rng.random(len(users)) >= dropout
            factor = factor * keep
        excl = (np.full(len(users), -1, dtype=np.int64) if exclude is None
                else exclude.numpy().astype(np.int64, copy=False))
        hist, omega, base = kernels.session_weights(ctx.rows, ctx.weights, ctx.ages, excl,
                                                    self._recency_table(ctx.rows.shape[1]),
                                                    factor.astype(np.float32, copy=False))
        return (torch.from_numpy(hist), torch.from_numpy(omega), torch.from_numpy(base),
                torch.from_numpy(gate))

    def _recency_table(self, size: int) -> np.ndarray:
        """``recency^age`` for ages ``0..size-1`` (float32; the float64 power is
        rounded once, as when it was taken per slot)."""
        if self._decay is None or len(self._decay) != size:
            self._decay = (self.recency ** np.arange(size, dtype=np.float64)).astype(
                np.float32)
        return self._decay

    def _history_weights(self, users: np.ndarray, exclude: torch.Tensor | None,
                         context: HistoryContext | None, dropout: float = 0.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """History item rows and their pooling weights ``(n, size)``: ``history_weight``
        × the gated session weights (:meth:`_session_weights`)."""
        hist, omega, _, _ = self._session_weights(users, exclude, context,
                                                  self.history_weight, dropout)
        return hist, omega

    def _content(self, rows: torch.Tensor | None) -> torch.Tensor:
        """``(n, content_dims)`` unit vectors of the items' attribute tokens, hashed
        into ``content_dims`` non-negative coordinates (fixed, not learnt; the lift of
        :meth:`_query` is clipped per coordinate): items that share attributes (genres)
        have a large inner product."""
        n, width = len(self.item_ids), self._token_width()
        tok = self.tok[:n, :width] if rows is None else self.tok[rows, :width]
        tokw = self.tokw[:n, :width] if rows is None else self.tokw[rows, :width]
        g = torch.zeros(len(tok), self.content_dims)
        g.scatter_add_(1, tok % self.content_dims, tokw * (tok > 0))
        return g / g.norm(dim=1, keepdim=True).clamp(min=1e-12)

    def _live_gate(self, users: np.ndarray) -> np.ndarray:
        """:meth:`session_gate` of ``users`` (rows) at their :meth:`query_times`."""
        users = np.asarray(users, dtype=np.int64)
        return self.session_gate(gaps_since(self.history.last_ts[users],
                                            self.query_times(users)))

    def session_gate(self, gaps_ms: np.ndarray) -> np.ndarray:
        """Weight of the session part of the query, ``2^(−gap / half-life)``: 1 right
        after an event, ½ one half-life later, 0 with no event (``gap = inf``).

        Why: a query dominated by the last few events predicts the *next* event of a
        session well and a user's taste in general badly (issue 11's ``full``
        protocol); once a session has gone quiet the long-term row ``U[user]`` speaks.
        ``session_half_life_s = 0`` keeps the history part at full weight always."""
        if self.session_half_life_s <= 0:
            return np.ones(len(gaps_ms))
        return np.exp2(-np.asarray(gaps_ms, dtype=np.float64)
                       / (1000.0 * self.session_half_life_s))

    def _user_tower(self, users: np.ndarray, exclude: torch.Tensor | None = None,
                    context: HistoryContext | None = None, dropout: float = 0.0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query ``U[user] + Σ_h ω_h · H[h]`` over the recent history (see
        :meth:`_history_weights`): the history part moves with every recorded event.

        ``dropout`` (training only): the share of events whose history part is left out,
        so ``U[user]`` also learns to stand alone — what the query is once a session
        has gone quiet (the session gate)."""
        users = np.asarray(users, dtype=np.int64)
        hist, omega = self._history_weights(users, exclude, context, dropout)
        return self._pool_user(users, hist, omega), hist, omega

    def _pool_user(self, users: np.ndarray, hist: torch.Tensor, omega: torch.Tensor
                   ) -> torch.Tensor:
        """``U[user] + Σ_h ω_h H[h]`` in one compiled gather-and-pool pass."""
        return torch.from_numpy(kernels.pooled_rows(
            self.users_t.weight.numpy(), np.asarray(users, dtype=np.int64),
            self.hist_t.weight.numpy(), hist.numpy(), omega.numpy()))

    def _query(self, users: np.ndarray) -> torch.Tensor:
        users = np.asarray(users, dtype=np.int64)
        if not self.content_dims:
            return self._user_tower(users)[0]
        # one pass of session weights serves both parts of the query
        hist, omega, base, gate = self._session_weights(users, None, None)
        q = self._pool_user(users, hist, omega * (gate * self.history_weight).unsqueeze(1))
        # "more like what I just did": the session-weighted mean of the recent items'
        # attribute vectors (scoring only; the towers learn without it)
        g = self._content(hist.reshape(-1)).view(*hist.shape, self.content_dims)
        now = (omega.unsqueeze(2) * g).sum(1)
        if self.content_lift:
            # the lift over the history's plain mean: only what is *new* in the session
            plain = base / base.sum(1, keepdim=True).clamp(min=1e-12)
            now = (now - (plain.unsqueeze(2) * g).sum(1)).clamp(min=0.0) ** self.content_lift
        # gated last, so that the whole query is linear in the gate (see user_vector_parts)
        return torch.cat([q, (self.content_weight * gate).unsqueeze(1) * now], 1)

    def _item_matrix(self, items: np.ndarray | None = None) -> torch.Tensor:
        rows = None if items is None else torch.from_numpy(np.asarray(items, dtype=np.int64))
        p = self._item_tower(rows)
        return torch.cat([p, self._content(rows)], 1) if self.content_dims else p

    @property
    def vector_dim(self) -> int:
        """Width of the exported retrieval vectors: ``dim`` + ``content_dims``."""
        return self.dim + self.content_dims

    def _link(self, inner: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(inner + float(self.b.weight[0, 0]))

    # --- learning -------------------------------------------------------------------
    def _learn(self, users: np.ndarray, items: np.ndarray, weights: torch.Tensor) -> float:
        return self._step(users, items, weights, None)

    def _learn_in_context(self, users: np.ndarray, items: np.ndarray, weights: torch.Tensor,
                          context: HistoryContext) -> float:
        return self._step(users, items, weights, context)

    def _step(self, users: np.ndarray, items: np.ndarray, weights: torch.Tensor,
              context: HistoryContext | None) -> float:
        n, k, d, l2 = len(users), self.negatives, self.dim, self.l2
        u_rows = torch.from_numpy(users)
        i_rows = torch.from_numpy(items)
        n_neg = k if self.share_negatives else n * k
        neg_rows = self._sampler.sample(n_neg)
        offset = self._sampler.logit_offset(neg_rows, self.loss)
        all_rows = torch.cat([i_rows, neg_rows])
        q, hist, omega = self._user_tower(users, exclude=i_rows, context=context,
                                          dropout=self.session_dropout)
        features = self._features(all_rows)
        p = self._item_tower(all_rows, features)
        pp = p[:n]
        b = self.b.weight[0, 0]
        pos = (q * pp).sum(1) + b
        if self.share_negatives:
            # one set of k negatives for the batch: GEMMs, and the item tower runs on
            # n + k rows instead of n·(k + 1)
            pn = p[n:]
            neg = torch.addmm(offset, q, pn.T)
            kernels.mask_hits(neg.numpy(), neg_rows.numpy(), i_rows.numpy())
            neg.add_(b)
            loss, g_pos, g_neg = pair_loss_grads(pos, neg, weights, self.loss)
            g_q = torch.addmm(g_pos.unsqueeze(1) * pp, g_neg, pn)
            g_p = torch.cat([g_pos.unsqueeze(1) * q, g_neg.T @ q])
            # L2 per occurrence; a shared negative counts n/k times (see GMF)
            reg = torch.cat([torch.ones(n), torch.full((k,), n / k)]).unsqueeze(1)
        else:
            pn3 = p[n:].view(n, k, d)
            neg = torch.bmm(pn3, q.unsqueeze(2)).squeeze(2) + offset.view(n, k) + b
            loss, g_pos, g_neg = pair_loss_grads(pos, neg, weights, self.loss)
            g_q = g_pos.unsqueeze(1) * pp + torch.bmm(g_neg.unsqueeze(1), pn3).squeeze(1)
            g_p = torch.cat([g_pos.unsqueeze(1) * q,
                             (g_neg.unsqueeze(2) * q.unsqueeze(1)).reshape(n * k, d)])
            reg = torch.ones(len(all_rows), 1)
        lr, decay = self.lr, self.accum_decay
        # user tower: U[user] and the pooled history rows H[h] (weight ω_h each)
        l2_users = torch.full((n,), l2)
        self.users_t.bag_step(u_rows.view(-1, 1), torch.ones(n, 1), g_q, l2_users, lr, decay)
        if hist.shape[1]:
            self.hist_t.bag_step(hist, omega, g_q, l2_users, lr, decay)
        # item tower: E[item] and the pooled attribute tokens C[t] (weight w_t each)
        l2_rows = (reg * l2).view(-1)
        self.items_t.bag_step(all_rows.view(-1, 1), torch.ones(len(all_rows), 1), g_p,
                              l2_rows, lr, decay)
        tok, tokw, num = features
        self.cats_t.bag_step(tok, tokw, g_p, l2_rows, lr, decay)
        if self.numeric_attributes:
            self.num_t.dense_step(num.T @ g_p, self.lr_dense, decay)
        if self.loss == "bce":
            self.b.dense_step((g_pos.sum() + g_neg.sum()).reshape(1, 1), self.lr_dense, decay)
        return loss

    # --- state ----------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**self.users_t.state("users"), **self.items_t.state("items"),
                **self.hist_t.state("hist"), **self.cats_t.state("cats"),
                **self.num_t.state("num"), **self.b.state("b")}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, table in (("users", self.users_t), ("items", self.items_t),
                            ("hist", self.hist_t), ("cats", self.cats_t),
                            ("num", self.num_t), ("b", self.b)):
            table.load_state(name, tensors)

    def state_arrays(self) -> dict[str, np.ndarray]:
        n = len(self.item_ids)
        return {**super().state_arrays(), "tok": self.tok[:n].numpy().copy(),
                "tokw": self.tokw[:n].numpy().copy(),
                "num_raw": self.num_raw[:n].numpy().copy(),
                "num_has": self.num_has[:n].numpy().copy()}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        super().load_state_arrays(arrays)
        n = len(arrays["tok"])
        self.tok[:n] = torch.from_numpy(arrays["tok"])
        self.tokw[:n] = torch.from_numpy(arrays["tokw"])
        self.num_raw[:n] = torch.from_numpy(arrays["num_raw"])
        self.num_has[:n] = torch.from_numpy(arrays["num_has"])
        self._num_stats = None
        self._width = None


class SessionTwoTower(WithCooc, TwoTower):
    """The two-tower model with a session-aware query, trained for the next item.

    The query is ``U[user] + history_weight · Σ_h ω_h H[h]`` with ``ω_h ∝ w_event ·
    recency^age`` over the last ``history_size`` events: the most recent events weigh
    most, so a few clicks move the query at once, before any gradient step (the worker
    reads ``user_vectors`` after ``learn_many``, which has recorded the click). Offline
    epochs train each event against the history that *preceded it in the log*
    (``trains_on_context``), which is what it is asked to do live: predict event ``t``
    from the events before ``t``. Retrieval stays exact (``q`` and the item tower).

    It also keeps the stream's item-to-item co-occurrence (:class:`CoOccurrence`:
    ``cooc_neighbours``, ``cooc_window`` (at most ``history_size``), ``cooc_recency``,
    ``cooc_half_life_days``), counted from the same ring, saved with its checkpoints;
    the worker serves it as similar items (``GET /v1/items/{id}/similar?source=cooc``).
    It does not enter this model's score (:class:`models.hybrid.SessionCooc` adds it).
    Offline epochs (random order, in context) do not count co-occurrences;
    ``reset_history`` recounts them once over the time-ordered log.

    ``stream_lr``: the Adagrad rate of live events (``learn_many`` without an offline
    context: the worker, the prequential stream); offline epochs use ``lr``. Why apart:
    after 20 epochs the Adagrad accumulators of the known rows are large, so at ``lr``
    a streamed event barely moves them; the stream has to follow what users do now
    (prequential validation recall of the hybrid, mean of 3 seeds: 0.1807 at 0.05 = ``lr``,
    0.1865 at 0.15; ``python -m scripts.tune --record hybrid``).
    """

    kind = "session"
    trains_on_context = True

    def __init__(self, recency: float = 0.8, history_weight: float = 3.0,
                 session_half_life_s: float = 1800.0, content_dims: int = 32,
                 content_weight: float = 100.0, content_lift: float = 3.0,
                 session_dropout: float = 0.1, cooc_neighbours: int = 100,
                 cooc_window: int = 10, cooc_recency: float = 0.95,
                 cooc_half_life_days: float = 0.0, stream_lr: float = 0.15,
                 **params: Any) -> None:
        """``params``: any other :class:`TwoTower` hyperparameter."""
        if stream_lr <= 0:
            raise ValueError(f"stream_lr must be > 0, got {stream_lr}")
        super().__init__(recency=recency, history_weight=history_weight,
                         session_half_life_s=session_half_life_s, content_dims=content_dims,
                         content_weight=content_weight, content_lift=content_lift,
                         session_dropout=session_dropout, **params)
        self.cooc_neighbours = cooc_neighbours
        self.cooc_window = cooc_window
        self.cooc_recency = cooc_recency
        self.cooc_half_life_days = cooc_half_life_days
        self.stream_lr = stream_lr
        self.cooc = CoOccurrence(cooc_neighbours, max(1, min(cooc_window, self.history_size)),
                                 cooc_recency, cooc_half_life_days)

    def _resize_tables(self, n_users: int, n_items: int) -> None:
        super()._resize_tables(n_users, n_items)
        self.cooc.resize(n_items)

    def learn_many(self, batch: EventBatch, context: HistoryContext | None = None) -> float:
        """:meth:`Recommender.learn_many`; a live batch (no offline ``context``) steps
        at ``stream_lr`` (see the class)."""
        if context is not None or self.stream_lr == self.lr:
            return super().learn_many(batch, context)
        offline_lr, self.lr = self.lr, self.stream_lr
        try:
            return super().learn_many(batch)
        finally:
            self.lr = offline_lr

    def _observe_sequence(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray,
                          ts_ms: np.ndarray) -> None:
        self.cooc.update(users, items, weights, ts_ms, self.history)

    def reset_history(self, batch: EventBatch) -> None:
        super().reset_history(batch)
        self.cooc.recount(self.user_ids.lookup(batch.users), self.item_ids.lookup(batch.items),
                          self.event_weights_of(batch), batch.ts_ms, self.history_size)


def _grow(t: torch.Tensor, rows: int) -> torch.Tensor:
    out = torch.zeros(rows, *t.shape[1:], dtype=t.dtype)
    out[: len(t)] = t
    return out
