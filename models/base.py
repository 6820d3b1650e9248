"""The contract every recommender implements, and the bookkeeping they share.

Subclasses supply the maths (``_learn``, ``_query``, ``_item_matrix``, ``_link``); this
base class maps external ids to rows, grows tables for unseen ids, keeps each user's
recent history and seen items, and derives ``score``/``recommend``/retrieval vectors from
one definition: ``score(u, i) == link(query(u) · item(i))`` with ``link`` strictly
increasing. That single definition is why an inner-product index over
``item_vectors()`` queried with ``user_vectors()`` ranks exactly like ``score``.

Hyperparameters are ``__init__`` arguments stored under the same attribute names
(``get_params``), which is what lets checkpoints rebuild a model without pickle.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch

from common.errors import BadEvent, UnknownItem, UnknownUser
from models.events import DEFAULT_EVENT_WEIGHTS, EventBatch, type_codes, type_names
from models.history import NO_TS, HistoryContext, RecentHistory, SeenItems
from models.ids import IdMap


class Recommender(ABC):
    """Abstract recommender over string user/item ids learning from positive events."""

    #: Registry name used in checkpoints (``models.checkpoint.MODEL_CLASSES``).
    kind: ClassVar[str] = ""
    #: Whether a user the model has never seen can still be served (popularity can).
    serves_unknown_users: ClassVar[bool] = False
    #: Whether learning depends on the order of events (co-occurrence counts what
    #: followed what): ``models.training.fit`` then makes one pass in time order.
    learns_in_order: ClassVar[bool] = False
    #: Whether ``learn_many`` uses a ``context`` (each event's preceding history):
    #: ``models.training.fit`` then computes it from the time-ordered log.
    trains_on_context: ClassVar[bool] = False

    version: str
    dim: int
    #: Half-life of a session-aware query's session part (0: the model has none).
    session_half_life_s: float = 0.0

    def __init__(self, event_weights: Mapping[str, float] | None = None,
                 history_size: int = 20, seed: int = 0) -> None:
        self.event_weights = dict(DEFAULT_EVENT_WEIGHTS if event_weights is None
                                  else event_weights)
        self.history_size = history_size
        self.seed = seed
        self.user_ids = IdMap()
        self.item_ids = IdMap()
        self.history = RecentHistory(history_size)
        self.seen = SeenItems()
        #: Runtime mode, not a hyperparameter: see :meth:`stop_tracking_seen`.
        self.track_seen = True
        self.version = "unsaved"
        self.events_seen = 0
        self.ts_range: list[int] | None = None  # [min, max] epoch ms of learned events
        self._asked: dict[int, int] = {}  # user row -> query time (see ``asked_at``)

    def stop_tracking_seen(self) -> None:
        """Streaming mode: drop the per-user sets of every item ever seen.

        Those sets grow with every event for ever; a never-ending stream must not keep
        them (the serving path filters by the bounded recent history in MongoDB). After
        this, ``recommend(exclude_seen=True)`` excludes the recent history only. Offline
        evaluation keeps tracking (its protocols exclude all seen items).
        """
        self.track_seen = False
        self.seen = SeenItems()

    # --- hyperparameters -------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments of this model (JSON-friendly), e.g. to clone it.

        A subclass whose ``__init__`` only changes some defaults takes the rest as
        ``**params`` and passes them on; its parents' arguments are collected here too,
        so the full signature is written once.
        """
        names: list[str] = []
        for cls in type(self).__mro__:
            init = cls.__dict__.get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters.values()
            names += [p.name for p in params if p.name != "self" and p.name not in names
                      and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break
        return {name: getattr(self, name) for name in names}

    def clone(self) -> Recommender:
        """A fresh, untrained model with the same hyperparameters."""
        return type(self)(**self.get_params())

    # --- learning --------------------------------------------------------------------
    def learn_many(self, batch: EventBatch, context: HistoryContext | None = None) -> float:
        """Learn from a micro-batch of positive events; return the mean loss.

        Unseen users and items get new rows first (tables grow in amortised steps).
        The events are recorded in the users' histories only after learning, so a model
        never sees an event in the history it is being trained to predict; afterwards
        :meth:`user_vectors` already includes them (session-aware models: a click moves
        the query at once). ``context`` (offline training, see ``models.training.fit``)
        gives each event the history that preceded it in the log, instead of the live
        ring; only models with ``trains_on_context`` use it.
        """
        if len(batch) == 0:
            return 0.0
        weights = self.event_weights_of(batch)
        users, items = self._register(batch)
        if self.trains_on_context:
            # live learning: the ring as it is before this batch, with each event's gap
            # since its user's previous one (the session gate of session-aware models)
            ctx = self.history.context(users, batch.ts_ms) if context is None else context
            loss = self._learn_in_context(users, items, torch.from_numpy(weights), ctx)
        else:
            loss = self._learn(users, items, torch.from_numpy(weights))
        # offline epochs in context revisit the log in random order: nothing to count
        # about what followed what (``reset_history`` recounts it in time order)
        self._record(users, items, weights, batch, sequence=context is None)
        return loss

    def observe(self, batch: EventBatch) -> None:
        """Record events (ids, history, seen items, counts) without a gradient step."""
        if len(batch) == 0:
            return
        weights = self.event_weights_of(batch)
        users, items = self._register(batch)
        self._record(users, items, weights, batch)

    def register(self, users: Sequence[str] = (), items: Sequence[str] = ()) -> None:
        """Give rows to ids ahead of their first event (bulk loads, benchmarks)."""
        self.user_ids.add(users)
        self.item_ids.add(items)
        self._resize()

    def event_weights_of(self, batch: EventBatch) -> np.ndarray:
        """Loss weight of each event, by type (vectorised: a binary search over the
        few known type names instead of a sort of the batch's strings)."""
        names = sorted(self.event_weights)
        table = np.array(names)
        events = np.asarray(batch.events, dtype=str)
        idx = np.searchsorted(table, events).clip(max=len(table) - 1)
        bad = table[idx] != events
        if bad.any():
            raise BadEvent(f"unknown event type {str(events[bad][0])!r}; expected one of "
                           f"{names}")
        values = np.array([self.event_weights[n] for n in names], dtype=np.float32)
        return values[idx]

    def _register(self, batch: EventBatch) -> tuple[np.ndarray, np.ndarray]:
        users = self.user_ids.add(batch.users)
        items = self.item_ids.add(batch.items)
        self._resize()
        return users, items

    def _resize(self) -> None:
        """Grow every per-user/per-item structure to the current id counts."""
        self.history.resize(len(self.user_ids))
        self._resize_tables(len(self.user_ids), len(self.item_ids))

    def _record(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray,
                batch: EventBatch, sequence: bool = True) -> None:
        ts_ms = batch.ts_ms
        if sequence:
            self._observe_sequence(users, items, weights, ts_ms)
        self.history.append(users, items, weights, ts_ms, type_codes(batch.events))
        if self.track_seen:
            self.seen.add(users, items)
        self._count(items, weights)
        self.events_seen += len(users)
        lo, hi = int(ts_ms.min()), int(ts_ms.max())
        self.ts_range = [lo, hi] if self.ts_range is None else [
            min(lo, self.ts_range[0]), max(hi, self.ts_range[1])]

    def _count(self, items: np.ndarray, weights: np.ndarray) -> None:
        """Hook for models that keep item counts (popularity, samplers)."""
        return None

    def _observe_sequence(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray,
                          ts_ms: np.ndarray) -> None:
        """Hook called with every learned or observed batch *before* it enters the
        recent histories, so a model can relate each event to what preceded it
        (co-occurrence counts)."""
        return None

    # --- what subclasses define ------------------------------------------------------
    @abstractmethod
    def _resize_tables(self, n_users: int, n_items: int) -> None:
        """Grow parameter tables to at least these many rows."""

    @abstractmethod
    def _learn(self, users: np.ndarray, items: np.ndarray, weights: torch.Tensor) -> float:
        """One update from positive (user row, item row) pairs; return the mean loss."""

    def _learn_in_context(self, users: np.ndarray, items: np.ndarray, weights: torch.Tensor,
                          context: HistoryContext) -> float:
        """:meth:`_learn` with each event's preceding history given (see ``learn_many``)."""
        return self._learn(users, items, weights)

    @abstractmethod
    def _query(self, users: np.ndarray) -> torch.Tensor:
        """``(n, dim)`` query vectors of user rows (``-1`` only if serving unknowns)."""

    @abstractmethod
    def _item_matrix(self, items: np.ndarray | None = None) -> torch.Tensor:
        """``(n, dim)`` retrieval vectors of item rows (all items if ``None``)."""

    def _link(self, inner: torch.Tensor) -> torch.Tensor:
        """Strictly increasing map from inner product to model score."""
        return inner

    def _inner_pairs(self, users: np.ndarray, items: np.ndarray) -> torch.Tensor:
        """``query(users[j]) · item(items[j])`` (float64). A model whose vectors are
        sparse (co-occurrence: one coordinate per item) computes it without them."""
        return (self._query(users).double() * self._item_matrix(items).double()).sum(1)

    def _inner_all(self, users: np.ndarray) -> torch.Tensor:
        """``(n, n_items)`` inner products with every item (float64), as above."""
        return self._query(users).double() @ self._item_matrix().double().T

    def _set_attributes(self, row: int, attributes: Mapping[str, object]) -> None:
        """Hook: models that use item attributes store them here."""
        return None

    # --- the time a query is asked at -------------------------------------------------
    def clock_ms(self) -> int:
        """"Now" in event time: the latest event time learned or observed (0 if none).
        Session-aware models measure the time since a user's last event against it, so
        offline evaluation and live serving use the same clock (the stream's)."""
        return 0 if self.ts_range is None else int(self.ts_range[1])

    @contextmanager
    def asked_at(self, times: Mapping[str, int]) -> Iterator[None]:
        """Within the block, queries of these users are asked at these event times
        (epoch ms) instead of :meth:`clock_ms`: a request made when the user acts
        (``loo``'s held-out event, a prequential event, an API request). Only
        session-aware models read it; unknown users are ignored."""
        rows = self.user_ids.lookup(list(times))
        saved = self._asked
        self._asked = {**saved, **{int(r): int(t) for r, t in
                                   zip(rows.tolist(), times.values(), strict=True) if r >= 0}}
        try:
            yield
        finally:
            self._asked = saved

    def query_times(self, users: np.ndarray) -> np.ndarray:
        """Per user row, the time its query is asked at (see :meth:`asked_at`)."""
        clock = self.clock_ms()
        if not self._asked:
            return np.full(len(users), clock, dtype=np.int64)
        return np.array([self._asked.get(int(u), clock) for u in users], dtype=np.int64)

    # --- serving ---------------------------------------------------------------------
    def knows_user(self, user: str) -> bool:
        return user in self.user_ids

    def _user_rows(self, users: Sequence[str]) -> np.ndarray:
        rows = self.user_ids.lookup(users)
        if not self.serves_unknown_users and (rows < 0).any():
            missing = [u for u, r in zip(users, rows.tolist(), strict=True) if r < 0]
            raise UnknownUser(f"unknown user(s): {missing[:5]}")
        return rows

    @torch.no_grad()
    def score(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Scores of pairs ``(users[j], items[j])`` (float64); NaN for unknown ids."""
        if len(users) != len(items):
            raise ValueError(f"{len(users)} users but {len(items)} items")
        u = self.user_ids.lookup(users)
        i = self.item_ids.lookup(items)
        out = np.full(len(u), np.nan)
        ok = (i >= 0) & ((u >= 0) | self.serves_unknown_users)
        if ok.any():
            out[ok] = self._link(self._inner_pairs(u[ok], i[ok])).numpy()
        return out

    @torch.no_grad()
    def recommend(self, users: Sequence[str], k: int,
                  exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per user: ``(ids (n, k) str, scores (n, k) float64)``.

        Rows with fewer than ``k`` candidates are padded with id ``""`` and score
        ``-inf``. Raises :class:`UnknownUser` for users the model cannot serve.
        """
        rows = self._user_rows(users)
        n_items = len(self.item_ids)
        ids = np.full((len(rows), k), "", dtype=object)
        scores = np.full((len(rows), k), -np.inf)
        if n_items == 0 or len(rows) == 0:
            return ids.astype(str), scores
        inner = self._inner_all(rows)
        if exclude_seen:
            r_idx: list[int] = []
            c_idx: list[int] = []
            for j, u in enumerate(rows.tolist()):
                if u < 0:
                    s: Any = ()
                elif self.track_seen:
                    s = self.seen.of(u)
                else:
                    s = self.history.of(u).tolist()
                r_idx.extend([j] * len(s))
                c_idx.extend(s)
            if r_idx:
                inner[torch.tensor(r_idx), torch.tensor(c_idx)] = -torch.inf
        kk = min(k, n_items)
        top, idx = torch.topk(inner, kk, dim=1)
        top_scores = self._link(top)
        valid = torch.isfinite(top).numpy()
        all_ids = np.asarray(self.item_ids.ids, dtype=object)
        ids[:, :kk] = np.where(valid, all_ids[idx.numpy()], "")
        scores[:, :kk] = np.where(valid, top_scores.numpy(), -np.inf)
        return ids.astype(str), scores

    @property
    def vector_dim(self) -> int:
        """Width of the exported retrieval vectors (the FAISS index dimension); ``dim``
        unless a model appends fixed coordinates (the two-tower's content part)."""
        return self.dim

    @torch.no_grad()
    def user_vectors(self, users: Sequence[str]) -> np.ndarray:
        """Float32 ``(n, dim)`` query vectors for an inner-product index."""
        return self._query(self._user_rows(users)).float().numpy().copy()

    #: ``user_vector_parts`` asks the long-term part this long after the last event.
    _LONG_AFTER_MS = 10 ** 15

    @torch.no_grad()
    def user_vector_parts(self, users: Sequence[str]
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(long_term, fresh, last_ts)`` of each user: the query with the session part
        gone (long after the last event) and at full weight (right at it), and the time
        of the user's last event (``NO_TS`` if none).

        Why: the query asked at time ``t`` is ``long_term + g · (fresh − long_term)``
        with ``g = session_gate(t − last_ts)`` — session-aware models are linear in
        the gate — so a server computes it per request from the stream's clock, with
        no model at hand. Models without a session part return ``user_vectors`` twice.
        """
        rows = self._user_rows(users)
        last = self.history.last_ts[np.maximum(rows, 0)].copy()
        last[rows < 0] = NO_TS
        known = [u for u, t in zip(users, last.tolist(), strict=True) if t != NO_TS]
        at = dict(zip(known, last[last != NO_TS].tolist(), strict=True))
        with self.asked_at(at):
            fresh = self.user_vectors(users)
        with self.asked_at({u: t + self._LONG_AFTER_MS for u, t in at.items()}):
            long_term = self.user_vectors(users)
        return long_term, fresh, last

    @torch.no_grad()
    def item_vectors(self, items: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """``(ids, float32 (n, dim))`` retrieval vectors; all known items if ``None``."""
        if items is None:
            return list(self.item_ids.ids), self._item_matrix().float().numpy().copy()
        rows = self.item_ids.lookup(items)
        if (rows < 0).any():
            missing = [x for x, r in zip(items, rows.tolist(), strict=True) if r < 0]
            raise UnknownItem(f"unknown item(s): {missing[:5]}")
        return list(items), self._item_matrix(rows).float().numpy().copy()

    @torch.no_grad()
    def upsert_item(self, item_id: str, attributes: Mapping[str, object]) -> np.ndarray:
        """Register an item (growing tables) and its attributes; return its vector."""
        row = int(self.item_ids.add([item_id])[0])
        self._resize()
        self._set_attributes(row, attributes)
        return self._item_matrix(np.array([row])).float().numpy()[0].copy()

    def recent_history(self, user: str) -> list[str]:
        """The user's most recent item ids, oldest first (``[]`` for unknown users)."""
        return [item for item, _ in self.recent_events(user)]

    def recent_events(self, user: str) -> list[tuple[str, str]]:
        """The user's most recent ``(item id, event type)``, oldest first (``[]`` for
        unknown users): what a published user document starts its history with."""
        rows = self.user_ids.lookup([user])
        if rows[0] < 0:
            return []
        row = int(rows[0])
        items = self.item_ids.ids_of(self.history.of(row).tolist())
        return list(zip(items, type_names(self.history.types_of(row).tolist()), strict=True))

    def sync_histories(self, users: Sequence[str], versions: Sequence[int],
                       recents: Sequence[Sequence[tuple[str, str]]],
                       last_event_ms: Sequence[int]) -> int:
        """Make each user's recent-history ring hold what their stored history holds.

        Why: the user document's ``recent`` events are the one history of a user
        (:class:`common.stores.UserDoc`), and the ring is the model's working copy. A
        ring row reflecting the same ``version`` (the document's ``n_events``) holds
        the same events and is left alone, so the live path costs one comparison per
        user; any other row is reloaded from ``recents`` (newest last; an item the
        model does not know gets a row, as at its first event) and tied to its version.
        The worker calls this before every batch it learns from. Returns the number of
        rows reloaded.
        """
        if not len(users):
            return 0
        rows = self.user_ids.add(users)
        self._resize()
        stale = np.flatnonzero(self.history.version[rows] != np.asarray(versions))
        for j in stale.tolist():
            recent = recents[j][-self.history.size:] if self.history.size else []
            # an item the model lost (a checkpoint older than its first event) gets its
            # row back, as at a first event: the ring holds exactly what is stored
            items = (self.item_ids.add([i for i, _ in recent]) if recent
                     else np.zeros(0, np.int64))
            self._resize()
            weights = np.array([self.event_weights.get(e, 1.0) for _, e in recent],
                               dtype=np.float32)
            last = int(last_event_ms[j])
            self.history.load(int(rows[j]), items, weights, type_codes([e for _, e in recent]),
                              last if last > 0 else NO_TS, int(versions[j]))
        return len(stale)

    def reset_history(self, batch: EventBatch) -> None:
        """Rebuild recent histories from a time-ordered log (after epochs in random order).

        Models that count sequences (``_observe_sequence``) recount them here."""
        self.history.clear()
        weights = self.event_weights_of(batch)
        self.history.append(self.user_ids.add(batch.users), self.item_ids.add(batch.items),
                            weights, batch.ts_ms, type_codes(batch.events))

    # --- sparse part of the query (hybrid models) -------------------------------------
    def user_sparse_vectors(self, users: Sequence[str]) -> list[tuple[list[str], np.ndarray]]:
        """The sparse part of each user's query: ``(item ids, float32 values)``.

        A hybrid model's exact inner product is ``user_vectors · item_vectors`` plus this
        value for the items listed (0 for the others); purely dense models list nothing.
        Serving merges the ANN candidates of the dense query with these items and scores
        both the same way, so ranking stays exactly ``score``'s.
        """
        self._user_rows(users)
        return [([], np.zeros(0, np.float32)) for _ in users]

    def sparse_query_params(self) -> dict[str, Any] | None:
        """How serving recomputes :meth:`user_sparse_vectors` without the model, from a
        user's recent events and the stored co-occurrence lists: the fields of
        ``common.session_query.SparseQuery`` (``None``: the query is all dense)."""
        return None

    # --- state for checkpoints (tensors + arrays + JSON; no pickle) ------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Parameter and optimiser tensors, by name."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_tensors` (ids are already restored)."""
        return None

    def state_arrays(self) -> dict[str, np.ndarray]:
        seen_u, seen_i = self.seen.to_arrays()
        n = len(self.user_ids)
        return {"history.buf": self.history.buf[:n].copy(),
                "history.weight": self.history.wbuf[:n].copy(),
                "history.type": self.history.tbuf[:n].copy(),
                "history.count": self.history.count[:n].copy(),
                "history.last_ts": self.history.last_ts[:n].copy(),
                "history.version": self.history.version[:n].copy(),
                "seen.users": seen_u, "seen.items": seen_i}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        n = len(self.user_ids)
        self.history.resize(n)
        buf = arrays["history.buf"]
        if buf.shape != (n, self.history_size):
            raise ValueError(f"history shape {buf.shape} != ({n}, {self.history_size})")
        self.history.buf[:n] = buf
        # checkpoints written before event-type weights were kept: every event weighs 1
        self.history.wbuf[:n] = arrays.get("history.weight", np.ones_like(buf, np.float32))
        self.history.count[:n] = arrays["history.count"]
        # checkpoints written before event types and versions were kept: types unknown,
        # rows tied to no stored history (the worker reloads each one on first use)
        self.history.tbuf[:n] = arrays.get("history.type", np.full_like(buf, -1, np.int8))
        self.history.version[:n] = arrays.get("history.version", np.full(n, -1, np.int64))
        # checkpoints written before event times were kept: no session is under way
        self.history.last_ts[:n] = arrays.get("history.last_ts",
                                              np.full(n, NO_TS, np.int64))
        self.seen = SeenItems.from_arrays(arrays["seen.users"], arrays["seen.items"])

    def state_json(self) -> dict[str, Any]:
        return {"users": self.user_ids.to_json(), "items": self.item_ids.to_json(),
                "events_seen": self.events_seen, "ts_range": self.ts_range}

    def load_state_json(self, state: Mapping[str, Any]) -> None:
        self.user_ids = IdMap.from_json(state["users"])
        self.item_ids = IdMap.from_json(state["items"])
        self.events_seen = int(state["events_seen"])
        self.ts_range = state["ts_range"]
        self._resize()
